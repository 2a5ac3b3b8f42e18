"""Design spaces of quantization configs: a TOML file or the equivalent Python API.

A space has a weight side and an activation side (:class:`SideSpace`), each a list of format
families with parameter ranges, granularities, scale formats and scale rules; plus accumulators,
transforms, static-activation calibration rules, constraints and the objectives to trade off.
Every point is a :class:`Candidate`: a replay config (strings that :func:`fmtlab.sim.replay.make_config`
and :func:`fmtlab.sim.quant.resolve` understand) plus the hardware operands and accumulator for
:func:`fmtlab.hw.mac_cost`.

TOML layout (every key is checked; an unknown key, an empty range or an impossible format is a
:class:`SpaceError` naming it)::

    name = "example"
    node = 45                                  # nm, for area / energy
    objectives = ["pooled_out_sqnr_db", "area_um2"]   # accuracy (maximised), cost (minimised)
    constraints = ["area <= 1.0 x int8", "bits <= 8.5"]
    accumulators = ["auto", "int24_sat"]       # auto = the MAC model's default (int32 / fp32)
    transforms = ["none", "hadamard"]          # fmtlab.sim.transforms names, "none" = no transform
    act_calib = ["dynamic", "absmax"]          # "dynamic" = per-sequence scales; others: static, calib split

    [weights]
    granularity = ["channel", "group:128", "block:32"]   # tensor | channel | token | group:N | block:N | tile:RxC
    scale = ["fp32", "e8m0", "fp8_e4m3"]                 # fp32 (float scales), e8m0 (power of two), fp8_e4m3
    rule = ["absmax"]                                    # absmax | mse | asym | pNN.N (percentile) | 4over6 | mixfp4
    [[weights.family]]
    kind = "int"          # int: bits | dint: bits, denormals | log: bits, base
    bits = [4, 8]         # minifloat: exp, man, special, bits_max | table: names (registry names)
    [[weights.family]]
    kind = "minifloat"
    exp = {min = 2, max = 4}                             # a range {min, max[, step]} or a list
    man = {min = 1, max = 3}
    special = ["fn", "fin"]

Rules between dimensions (points that break them are skipped, not errors): ``block:N`` takes an
e8m0 (OCP MX) or fp8_e4m3 (NVFP4-style, with the FP32 tensor scale) block scale; ``tile:RxC``
(weights only: one scale per R x C tile, NVFP4's 16 x 16, DeepSeek-V3's 128 x 128) takes those or
fp32 (``fp8_e4m3_b128x128``); rules ``4over6`` (Four Over Six) and ``mixfp4`` (E2M1/E1M2 per
block, fp4_e2m1 only) apply to fp8_e4m3-scaled blocks and tiles; the others take
fp32, or e8m0 as a power-of-two absmax scale. Static activation calibration only applies to
per-tensor activation scales. A point whose MAC unit :mod:`fmtlab.hw` cannot price (e.g. INT
weights with FP activations) is not a point of the space. Accumulators (``auto``, ``fp32``,
``kulisch``, ``int<W>[_sat]``, ``bf16``, ``fp16``, ``tf32``, ``e<E>m<M>[_rtz]``, ``hopper_fp8_mma``, a
float one with a chunk ``_k<N>``; :mod:`fmtlab.sim.accumulate`) change the cost, and the accuracy
where they can: an integer accumulator that may overflow on the trace's dot-product length
(product bits + log2 K > width, see :func:`int_acc_exact`) and every float accumulator other than
fp32 are replayed with the accumulator (``Candidate.acc_measured``: replay config ``acc=``), so a
narrower accumulator is scored, not filtered out and not rewarded for free; an exact integer
accumulator, fp32 and Kulisch share the float32-GEMM replay of their quantizers. A measured
accumulator does not combine with a transform (those points are left out, with the reason).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from fmtlab.errors import FmtlabError, FormatError, SpaceError
from fmtlab.explore.objectives import acc_measured, energy_columns, feasible, parse_constraint, price
from fmtlab.formats import get_format
from fmtlab.formats.registry import builtin_name
from fmtlab.sim.accumulate import parse as parse_accumulator
from fmtlab.sim.replay import ReplayConfig
from fmtlab.sim.transforms import get_transform

__all__ = ["SpaceError", "Family", "SideSpace", "DesignSpace", "Candidate", "load_space", "parse_space",
           "example_space_path", "quantizer_spec"]

GRANULARITY_KINDS = ("tensor", "channel", "token", "group", "block", "tile")
RULES = ("absmax", "mse", "asym", "4over6", "mixfp4")  # and pNN.N (percentile)
SCALES = ("fp32", "e8m0", "fp8_e4m3")
OBJECTIVE_ACCURACY = ("pooled_out_sqnr_db", "min_out_sqnr_db", "mean_out_sqnr_db")
OBJECTIVE_COST = ("area_um2", "energy_pj", "area_ge", "bits", "energy_per_token_uj", "energy_per_token_b64_uj")
_SCALE_BITS = {"fp32": 32, "e8m0": 8, "fp8_e4m3": 8}
_MX_NAMES = {("fp8_e4m3", 32): "mxfp8_e4m3", ("fp8_e5m2", 32): "mxfp8_e5m2", ("fp6_e3m2", 32): "mxfp6_e3m2",
             ("fp6_e2m3", 32): "mxfp6_e2m3", ("fp4_e2m1", 32): "mxfp4", ("int8_sym", 32): "mxint8"}
_FAMILY_KEYS = {"int": {"bits", "sym"}, "dint": {"bits", "denormals"}, "log": {"bits", "base"},
                "minifloat": {"exp", "man", "special", "bits_max"}, "table": {"names"}}
_SIDE_KEYS = {"family", "granularity", "scale", "rule"}
_TOP_KEYS = {"name", "node", "objectives", "constraints", "accumulators", "transforms", "act_calib",
             "weights", "activations", "description"}


# ------------------------------------------------------------------------------ value ranges

#: most values one dimension (a range or list) may hold: bounds the space's size before any work
MAX_VALUES = 256
#: most points a space may span (enumerated and priced before the search starts)
MAX_POINTS = 200_000

def _values(v: Any, key: str, kind: type | tuple = (int, float, str)) -> list:
    """A list from a scalar, a list, or a range table {min, max[, step]}; SpaceError if empty."""
    if isinstance(v, Mapping):
        bad = set(v) - {"min", "max", "step"}
        if bad or "min" not in v or "max" not in v:
            raise SpaceError(f"{key}: a range is {{min = A, max = B[, step = S]}}, got {dict(v)}")
        lo, hi, st = v["min"], v["max"], v.get("step", 1)
        if not all(isinstance(t, int) for t in (lo, hi, st)) or st < 1:
            raise SpaceError(f"{key}: range bounds and step must be integers (step >= 1), got {dict(v)}")
        r = range(lo, hi + 1, st)
        if not r:
            raise SpaceError(f"{key}: empty range (min {lo} > max {hi})")
        if len(r) > MAX_VALUES:
            raise SpaceError(f"{key}: the range holds {len(r)} values; at most {MAX_VALUES} per dimension")
        return list(r)
    out = list(v) if isinstance(v, (list, tuple)) else [v]
    if not out:
        raise SpaceError(f"{key}: empty list")
    if len(out) > MAX_VALUES:
        raise SpaceError(f"{key}: the list holds {len(out)} values; at most {MAX_VALUES} per dimension")
    for x in out:
        if isinstance(x, bool) or not isinstance(x, kind):
            raise SpaceError(f"{key}: value {x!r} has the wrong type")
    return out


def _check_keys(d: Mapping, allowed: Iterable[str], where: str) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise SpaceError(f"unknown key {where}.{bad[0]} (allowed: {', '.join(sorted(allowed))})")


# ------------------------------------------------------------------------------------ families

@dataclass(frozen=True)
class Family:
    """One element-format family with its parameter ranges (``params`` as in the TOML table)."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def formats(self, where: str = "family") -> list[str]:
        """Registry names of every format of this family (FormatError-free; SpaceError if none)."""
        if self.kind not in _FAMILY_KEYS:
            raise SpaceError(f"{where}.kind: unknown family {self.kind!r} (use {', '.join(_FAMILY_KEYS)})")
        _check_keys(self.params, _FAMILY_KEYS[self.kind], where)
        p = self.params
        names: list[str] = []
        if self.kind in ("int", "dint", "log") and "bits" not in p:
            raise SpaceError(f"{where}.bits is required for kind {self.kind!r}")
        if self.kind == "int":
            sym = _values(p.get("sym", False), f"{where}.sym", bool) if "sym" in p else [False]
            names = [f"int{b}{'_sym' if s else ''}" for b in _values(p["bits"], f"{where}.bits", int) for s in sym]
        elif self.kind == "dint":
            levels = p.get("denormals", [[0.5]])
            if not isinstance(levels, list) or not levels:
                raise SpaceError(f"{where}.denormals: a non-empty list of level lists, e.g. [[0.5], [0.25, 0.5]]")
            for b in _values(p["bits"], f"{where}.bits", int):
                for lv in levels:
                    lv = _values(lv, f"{where}.denormals", (int, float)) if lv != [] else []
                    names.append(f"dint{b}" if lv == [0.5] else f"dint{b}_d" + "_".join(_num(v) for v in lv))
        elif self.kind == "log":
            bases = _values(p.get("base", 2.0), f"{where}.base", (int, float))
            names = [f"log{b}" if float(base) == 2.0 else f"log{b}_b{_num(base)}"
                     for b in _values(p["bits"], f"{where}.bits", int) for base in bases]
        elif self.kind == "minifloat":
            for k in ("exp", "man"):
                if k not in p:
                    raise SpaceError(f"{where}.{k} is required for kind 'minifloat'")
            specials = _values(p.get("special", ["fn"]), f"{where}.special", str)
            for s in specials:
                if s not in ("ieee", "fn", "fnuz", "fin"):
                    raise SpaceError(f"{where}.special: {s!r} is not ieee, fn, fnuz or fin")
            bmax = p.get("bits_max", 16)
            for e in _values(p["exp"], f"{where}.exp", int):
                for m in _values(p["man"], f"{where}.man", int):
                    for s in specials:
                        if 1 + e + m <= bmax:
                            names.append(f"e{e}m{m}_{s}")
        else:
            names = _values(p.get("names", []), f"{where}.names", str)
        good = []
        for n in names:
            try:
                get_format(n)
            except (FormatError, FmtlabError, ValueError) as exc:
                if self.kind == "table":
                    raise SpaceError(f"{where}.names: {exc}") from None
                continue  # e.g. e1m0 or a 1-bit INT: not a format, skipped
            # minifloats go by their registry name where one exists (e4m3_fn -> fp8_e4m3)
            good.append(builtin_name(n) if self.kind == "minifloat" else n)
        if not good:
            raise SpaceError(f"{where}: no possible format in this family ({self.kind}, {dict(p)})")
        return list(dict.fromkeys(good))


def _num(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


@dataclass(frozen=True)
class SideSpace:
    """The formats, granularities, scale formats and scale rules of one GEMM operand."""

    families: tuple[Family, ...]
    granularity: tuple[str, ...] = ("tensor",)
    scale: tuple[str, ...] = ("fp32",)
    rule: tuple[str, ...] = ("absmax",)

    def check(self, side: str) -> None:
        if not self.families:
            raise SpaceError(f"{side}.family: at least one [[{side}.family]] table is needed")
        for g in self.granularity:
            kind, _, size = g.partition(":")
            if kind not in GRANULARITY_KINDS:
                raise SpaceError(f"{side}.granularity: unknown {g!r} (use tensor, channel, token, group:N, "
                                 "block:N, tile:RxC)")
            if kind in ("group", "block") and (not size.isdigit() or int(size) < 2):
                raise SpaceError(f"{side}.granularity: {g!r} needs a size >= 2, e.g. '{kind}:32'")
            if kind == "tile" and _tile(size) is None:
                raise SpaceError(f"{side}.granularity: {g!r} needs rows x cols >= 2, e.g. 'tile:16x16'")
            if kind == "tile" and side != "weights":
                raise SpaceError(f"{side}.granularity: 'tile' (2-D r x c blocks) is a weight granularity")
            if kind in ("tensor", "channel", "token") and size:
                raise SpaceError(f"{side}.granularity: {g!r} takes no size")
            if side == "weights" and kind == "token":
                raise SpaceError("weights.granularity: 'token' is an activation granularity (use channel)")
            if side == "activations" and kind == "channel":
                raise SpaceError("activations.granularity: 'channel' scales cannot be factored out of "
                                 "the reduction (use token, group:N or block:N)")
        for s in self.scale:
            if s not in SCALES:
                raise SpaceError(f"{side}.scale: unknown scale format {s!r} (supported: {', '.join(SCALES)})")
        for r in self.rule:
            if r not in RULES and not (r.startswith("p") and _is_float(r[1:])):
                raise SpaceError(f"{side}.rule: unknown scale rule {r!r} (absmax, mse, asym, pNN.N, "
                                 "4over6, mixfp4)")
        for i, f in enumerate(self.families):
            f.formats(f"{side}.family[{i}]")

    def quantizers(self, side: str) -> list[tuple[str, str, float]]:
        """[(quantizer spec, element format, bits per element incl. scales)] of this side."""
        out = []
        for i, fam in enumerate(self.families):
            for fmt in fam.formats(f"{side}.family[{i}]"):
                for g in self.granularity:
                    for s in self.scale:
                        for r in self.rule:
                            spec = quantizer_spec(fmt, g, s, r)
                            if spec is not None:
                                out.append((spec, fmt, _bits(fmt, g, s)))
        return list(dict.fromkeys(out))


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _tile(size: str) -> tuple[int, int] | None:
    """(r, c) of a ``tile:RxC`` size, or None when it is not two ints with r * c >= 2."""
    r, _, c = size.partition("x")
    if not (r.isdigit() and c.isdigit()) or int(r) < 1 or int(c) < 1 or int(r) * int(c) < 2:
        return None
    return int(r), int(c)


def _bits(fmt: str, gran: str, scale: str) -> float:
    """Storage bits per element: element bits plus the scale's bits shared over a group/block."""
    b = float(get_format(fmt).bits)
    kind, _, size = gran.partition(":")
    if kind in ("group", "block"):
        b += _SCALE_BITS[scale] / int(size)
    if kind == "tile":
        r, c = _tile(size)
        b += _SCALE_BITS[scale] / (r * c)
    return b


def quantizer_spec(fmt: str, gran: str, scale: str, rule: str = "absmax") -> str | None:
    """The :func:`fmtlab.formats.get_quantizer` spec of one point, or None where the rules between
    dimensions exclude it (see the module doc). Named presets are used where one matches, so the
    report's configs come out under their own spellings (``mxfp4``, ``nvfp4``, ``int8_per_token``)."""
    kind, _, size = gran.partition(":")
    if rule in ("4over6", "mixfp4"):  # NVFP4 block rules: FP8-scaled blocks/tiles only
        if scale != "fp8_e4m3" or kind not in ("block", "tile") or (rule == "mixfp4" and fmt != "fp4_e2m1"):
            return None
        base = "nvfp4_4over6" if rule == "4over6" else "mixfp4"
        if kind == "tile":
            base = f"{base}_{size}"
        elif int(size) != 16:
            return f"{base}(block_size={size})" if fmt == "fp4_e2m1" else f"{base}(format={fmt}, block_size={size})"
        return base if fmt == "fp4_e2m1" else f"{base}(format={fmt})"
    if kind == "tile":  # 2-D r x c weight tiles (NVFP4 16x16, DeepSeek-V3 128x128)
        if rule != "absmax" and scale != "fp32":
            return None
        if scale == "fp8_e4m3":
            return f"nvfp4_{size}" if fmt == "fp4_e2m1" else f"nvfp4_{size}(format={fmt})"
        if scale == "e8m0":
            return f"mxfp4_{size}" if fmt == "fp4_e2m1" else f"mxfp4_{size}(format={fmt})"
        suffix = {"absmax": "", "mse": "_mse", "asym": "_asym"}.get(rule, f"_{rule}")
        return f"{fmt}_b{size}{suffix}"
    if kind == "block":
        if rule != "absmax" or scale == "fp32":
            return None  # block scales come from the shared-exponent / NVFP4 rule
        n = int(size)
        if scale == "e8m0":
            named = _MX_NAMES.get((fmt, n))
            if named:
                return named
            return f"mxfp4(format={fmt}, block_size={n})"
        if fmt == "fp4_e2m1" and n == 16:
            return "nvfp4"
        return f"nvfp4(format={fmt}, block_size={n})"
    if scale == "fp8_e4m3":
        return None  # an fp8 scale per tensor/row/group is not a fmtlab granularity
    if scale == "e8m0" and rule != "absmax":
        return None
    if rule == "asym" and not fmt.startswith(("int", "uint")):
        return None
    g = {"tensor": "per_tensor", "channel": "per_channel", "token": "per_token"}.get(kind, f"g{size}")
    suffix = {"absmax": "", "mse": "_mse", "asym": "_asym"}.get(rule, f"_{rule}")
    if scale == "e8m0":
        suffix = "_pow2"
    return f"{fmt}_{g}{suffix}"


# ----------------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    """One point of a space: a replay config plus what the MAC model prices.

    ``replay_key`` identifies the accuracy (the accumulator is part of it only when
    ``acc_measured``: it may change the result, see the module doc), ``key`` the point.
    """

    weight: str
    act: str
    transform: str | None
    act_calib: str | None
    accumulator: str
    w_bits: float
    a_bits: float
    acc_measured: bool = False

    @property
    def replay_key(self) -> str:
        t = f";t={self.transform}" if self.transform else ""
        c = f";c={self.act_calib}" if self.act_calib else ""
        acc = f";acc={self.accumulator}" if self.acc_measured else ""
        return f"w={self.weight};a={self.act}{t}{c}{acc}"

    @property
    def key(self) -> str:
        return f"{self.replay_key};acc={self.accumulator}"

    @property
    def config_string(self) -> str:
        """``"name:w=..;a=..;t=..;c=.."`` for ``fmtlab replay -c`` (name = the replay key's hash)."""
        return f"{self.replay_name}:{self.replay_key}"

    @property
    def replay_name(self) -> str:
        return "x" + hashlib.sha1(self.replay_key.encode()).hexdigest()[:10]

    def replay_config(self):
        return ReplayConfig(self.replay_name, self.weight, self.act, self.transform, act_calib=self.act_calib,
                            accumulator=self.accumulator if self.acc_measured else None)


@dataclass(frozen=True)
class DesignSpace:
    """A full design space (see the module doc); build with :func:`parse_space` or directly."""

    weights: SideSpace
    activations: SideSpace
    accumulators: tuple[str, ...] = ("auto",)
    transforms: tuple[str, ...] = ("none",)
    act_calib: tuple[str, ...] = ("dynamic",)
    constraints: tuple[str, ...] = ()
    objectives: tuple[str, str] = ("pooled_out_sqnr_db", "area_um2")
    node: int = 45
    name: str = "space"

    def __post_init__(self) -> None:
        self.weights.check("weights")
        self.activations.check("activations")
        if len(self.objectives) != 2 or self.objectives[0] not in OBJECTIVE_ACCURACY \
                or self.objectives[1] not in OBJECTIVE_COST:
            raise SpaceError(f"objectives: [ACCURACY, COST] with ACCURACY in {OBJECTIVE_ACCURACY} and COST in "
                             f"{OBJECTIVE_COST}, got {list(self.objectives)}")
        for i, a in enumerate(self.accumulators):
            _check_acc(a, f"accumulators[{i}]")
        for i, t in enumerate(self.transforms):
            _check_transform(t, f"transforms[{i}]")
        for c in self.act_calib:
            if c != "dynamic" and c.split("(")[0] not in ("absmax", "percentile", "mse"):
                raise SpaceError(f"act_calib: {c!r} is not dynamic, absmax, mse or percentile(P)")
        for c in self.constraints:
            parse_constraint(c)
        if not isinstance(self.node, int) or self.node <= 0:
            raise SpaceError(f"node: a technology node in nm (int > 0), got {self.node!r}")

    def raw_points(self) -> Iterator[Candidate]:
        """Every combination the rules between dimensions allow (not yet priced or constrained)."""
        ws = self.weights.quantizers("weights")
        as_ = self.activations.quantizers("activations")
        for w, _, wb in ws:
            for a, _, ab in as_:
                for acc in self.accumulators:
                    yield from self._expand(w, a, acc, wb, ab)

    def _expand(self, w: str, a: str, acc: str, wb: float, ab: float) -> Iterator[Candidate]:
        for t in self.transforms:
            for c in self.act_calib:
                if c != "dynamic" and "_per_tensor" not in a:
                    continue
                yield Candidate(w, a, None if t == "none" else t, None if c == "dynamic" else c, acc, wb, ab)

    def check_size(self, n_w: int | None = None, n_a: int | None = None) -> int:
        """The number of points the space spans (before pricing); SpaceError above :data:`MAX_POINTS`."""
        n_w = len(self.weights.quantizers("weights")) if n_w is None else n_w
        n_a = len(self.activations.quantizers("activations")) if n_a is None else n_a
        n = n_w * n_a * len(self.accumulators) * len(self.transforms) * len(self.act_calib)
        if n > MAX_POINTS:
            raise SpaceError(f"space {self.name!r} spans about {n:,} points ({n_w} weight x {n_a} "
                             f"activation quantizers x accumulators, transforms, calibrations); at most "
                             f"{MAX_POINTS:,}: narrow its ranges")
        return n

    def candidates(self, k_max: int = 4096, k_all: Sequence[int] = (),
                   model=None) -> tuple[list[tuple[Candidate, dict]], dict[str, int]]:
        """([(candidate, cost columns)] of every priced point meeting the constraints, {reason: count}
        of the points left out). ``k_max``: the longest dot product (integer accumulator check);
        ``k_all``: every reduction length of the trace (group and block sizes must divide them);
        ``model``: the :class:`fmtlab.hw.ModelShape` an energy-per-token objective prices (each
        point on its own: transforms and static scales change it)."""
        cons = [parse_constraint(c, self.node) for c in self.constraints]
        ws = self.weights.quantizers("weights")
        as_ = self.activations.quantizers("activations")
        self.check_size(len(ws), len(as_))
        kept: list[tuple[Candidate, dict]] = []
        dropped: dict[str, int] = {}
        for w, _, wb in ws:
            for a, _, ab in as_:
                for acc in self.accumulators:
                    pts = list(self._expand(w, a, acc, wb, ab))
                    if pts and acc_measured(acc, w, a, k_max):
                        n_t = sum(p.transform is not None for p in pts)
                        if n_t:  # replay computes an accumulator without transforms only
                            why_t = f"{acc} is measured by replay without transforms only"
                            dropped[why_t] = dropped.get(why_t, 0) + n_t
                        pts = [dataclasses.replace(p, acc_measured=True) for p in pts if p.transform is None]
                    cost = price(pts[0], self.node, k_max, tuple(sorted(set(k_all)))) if pts else {}
                    why = cost.get("error") or "; ".join(feasible(cost, cons))
                    if why:
                        key = why if len(why) < 70 else why[:67] + "..."
                        dropped[key] = dropped.get(key, 0) + len(pts)
                        continue
                    if self.objectives[1].startswith("energy_per_token"):
                        for p in pts:
                            e = energy_columns(p, self.node, model)
                            if "error" in e:
                                dropped[e["error"][:67]] = dropped.get(e["error"][:67], 0) + 1
                            else:
                                kept.append((p, dict(cost, **e)))
                        continue
                    kept.extend((p, cost) for p in pts)
        if not kept:
            raise SpaceError(f"space {self.name!r} has no point that can be priced and meets the constraints "
                             f"(left out: {dict(sorted(dropped.items(), key=lambda kv: -kv[1])[:3])})")
        return kept, dropped

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_acc(a: str, where: str) -> None:
    if a == "auto":
        return
    try:
        parse_accumulator(a)
    except (FmtlabError, TypeError) as exc:
        raise SpaceError(f"{where}: unknown accumulator {a!r} (auto, fp32, kulisch, intN[_sat], bf16, fp16, "
                         f"tf32, e<E>m<M>[_rtz], hopper_fp8_mma, a float one with _k<N>): {exc}") from None


def _check_transform(t: str, where: str) -> None:
    if t == "none":
        return
    try:
        get_transform(t)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad space entry
        raise SpaceError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------- TOML

def _side(d: Any, where: str) -> SideSpace:
    if not isinstance(d, Mapping):
        raise SpaceError(f"[{where}] is required (a table with family, granularity, scale, rule)")
    _check_keys(d, _SIDE_KEYS, where)
    fams = d.get("family", [])
    if not isinstance(fams, list) or not fams:
        raise SpaceError(f"{where}.family: at least one [[{where}.family]] table is needed")
    families = []
    for i, f in enumerate(fams):
        if not isinstance(f, Mapping) or "kind" not in f:
            raise SpaceError(f"{where}.family[{i}].kind is required")
        families.append(Family(f["kind"], {k: v for k, v in f.items() if k != "kind"}))
    kw = {k: tuple(_values(d[k], f"{where}.{k}", str)) for k in ("granularity", "scale", "rule") if k in d}
    return SideSpace(tuple(families), **kw)


def parse_space(doc: Mapping[str, Any]) -> DesignSpace:
    """A DesignSpace from a parsed TOML document (SpaceError naming the bad key)."""
    _check_keys(doc, _TOP_KEYS, "space")
    kw: dict[str, Any] = {}
    for k in ("accumulators", "transforms", "act_calib", "constraints"):
        if k in doc:
            kw[k] = tuple(_values(doc[k], k, str)) if doc[k] != [] or k == "constraints" else ()
            if not kw[k] and k != "constraints":
                raise SpaceError(f"{k}: empty list")
    if "objectives" in doc:
        kw["objectives"] = tuple(_values(doc["objectives"], "objectives", str))
    if "node" in doc:
        kw["node"] = doc["node"]
    return DesignSpace(_side(doc.get("weights"), "weights"), _side(doc.get("activations"), "activations"),
                       name=str(doc.get("name", "space")), **kw)


def load_space(path: str) -> DesignSpace:
    """Read and check a space TOML file (``"example"`` names the shipped example)."""
    if path == "example":
        path = example_space_path()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: not valid TOML: {exc}") from None
    except FileNotFoundError:
        raise SpaceError(f"space file {path} does not exist") from None
    try:
        space = parse_space(doc)
        space.check_size()  # bounded before any trace is recorded or opened
        return space
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None


def example_space_path() -> str:
    """Path of the shipped example space (fmtlab/explore/spaces/example.toml)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "spaces", "example.toml")
