"""Golden conformance vectors for RTL and software teams (``fmtlab vectors NAME --out DIR``).

For an element format (anything ``get_format`` parses) the vectors hold

- **decode**: every code 0 .. 2**bits - 1 with its value (float64 bits; NaN / Inf / -0 kept);
- **encode**: float32 inputs with the code they become under one rounding mode and the format's
  default overflow policy: every finite value, every rounding boundary between adjacent values
  (the virtual values beyond max / min included, so the overflow thresholds are there; the
  boundaries next to zero are the underflow thresholds) with both float32 neighbours of each,
  +/-0, +/-Inf, NaN of both signs (formats with a NaN code only), float32 subnormals and
  extremes, and ``n`` seeded random inputs (3/4 log-uniform over the format's range with random
  signs, 1/4 random float32 bit patterns, NaN patterns left out for formats without NaN).
  Under STOCHASTIC rounding each input carries its uniform draw ``u`` in [0, 1) (float64): the
  input goes up iff u < (x - L) / (U - L).

For a block quantizer (``mxfp4``, ``nvfp4``, ``mxfp8_e5m2_b16``, ...) the vectors also hold
**blocks**: whole blocks of K float32 inputs with their scale code and element codes, quantized
as ONE tensor (so NVFP4's per-tensor FP32 scale is one number, stated in the header):
an anchor block (NVFP4: max |x| = 448 * 6, so the tensor scale is exactly 1), blocks whose
max |x| sits on each side of every scale-code boundary reachable in float32 (found by bisection
on the float32 bit pattern: the largest float32 max with scale code c and the smallest with a
larger code), random blocks, an all-zero block, a block with float32 subnormals, and (MX and
NVFP4 rule) a NaN block and an Inf block, which get the NaN scale code.

Encoding uses the format's production encoder; the tests hold every file to the pure-Python
oracle (``fmtlab.formats.oracle``) and to ml_dtypes / torch / gfloat where they have the type.

Files (written together into DIR through :func:`fmtlab.safe_io.staged_dir`; NAME lowercased):
``NAME.json`` (everything), ``NAME.decode.csv``, ``NAME.encode.csv``, ``NAME.decode.hex``,
``NAME.encode.hex`` and, for block quantizers, ``NAME.blocks.csv`` and ``NAME.blocks.hex``.
Hex files are ``$readmemh`` input: ``//`` comment lines (the conventions and the word layout)
then one word per line, most significant field first, each field padded to whole hex digits:

- decode.hex: ``{code[CW-1:0], value_f64[63:0]}``
- encode.hex: ``{x_f32[31:0], code[CW-1:0]}`` (STOCHASTIC: ``{x_f32, u_f64[63:0], code}``)
- blocks.hex: ``{x[0]_f32, ..., x[K-1]_f32, scale_code[SW-1:0], code[0], ..., code[K-1]}``

where CW / SW are the element / scale code widths rounded up to a multiple of 4.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.cli import binary, code_kind
from fmtlab.formats.oracle import oracle_table
from fmtlab.formats.presets import get_quantizer
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import Overflow, Rounding
from fmtlab.safe_io import dumps_json, staged_dir

__all__ = ["ElementVectors", "BlockVectors", "VectorSet", "element_vectors", "block_vectors",
           "vector_set", "render", "write_vectors", "read_hex", "f32_bits", "f64_bits", "hex_width",
           "f32_from_bits", "f64_from_bits"]

F32_MAX = float(np.finfo(np.float32).max)


def hex_width(bits: int) -> int:
    """Hex digits of a ``bits``-wide field (rounded up to whole digits)."""
    return (bits + 3) // 4


def f32_bits(x) -> np.ndarray:
    """uint32 bit patterns of float32 values."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)


def f64_bits(x) -> np.ndarray:
    """uint64 bit patterns of float64 values."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64)).view(np.uint64)


def _b64(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(v)))[0]


@dataclasses.dataclass(frozen=True)
class ElementVectors:
    """Decode and encode vectors of one element format under one rounding mode."""

    fmt: Format
    rounding: Rounding
    overflow: Overflow
    inputs: np.ndarray  # float32
    kinds: tuple[str, ...]  # why each input is there
    codes: np.ndarray  # int64 expected codes
    draws: np.ndarray | None  # float64 uniform draws (STOCHASTIC only)


@dataclasses.dataclass(frozen=True)
class BlockVectors:
    """Whole blocks of a block quantizer, quantized as one tensor [nblocks, K]."""

    quantizer: Any
    inputs: np.ndarray  # float32 [nb, K]
    kinds: tuple[str, ...]  # per block
    scale_codes: np.ndarray  # int64 [nb]
    codes: np.ndarray  # int64 [nb, K]
    outputs: np.ndarray  # float32 [nb, K] (dequantized)
    scales: np.ndarray  # float32 [nb] effective element scales
    tensor_scale: float | None
    scale_format: Format


@dataclasses.dataclass(frozen=True)
class VectorSet:
    name: str
    elements: ElementVectors
    blocks: BlockVectors | None
    seed: int
    n: int
    tile: tuple | None = None  # (r, c) of a 2-D tile quantizer: each block row is one tile


# ---- element vectors --------------------------------------------------------------------------

def _boundaries(fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """(float64 rounding boundaries between adjacent table values incl. the virtual ends, kinds)."""
    t = oracle_table(fmt)
    vals = np.array(t.vals, dtype=np.float64)
    lo, hi = vals[:-1], vals[1:]
    mids = lo / 2 + hi / 2
    kinds = ["midpoint"] * len(mids)
    kinds[0] = kinds[-1] = "overflow_threshold"
    for i in range(len(mids)):
        if lo[i] == 0.0 or hi[i] == 0.0:
            kinds[i] = "underflow_threshold"
    out, ok = [mids], [kinds]
    rule = t.rule
    if rule.log_domain:
        same = (lo * hi) > 0
        g = np.sign(hi) * np.sqrt(np.abs(lo * hi))
        out.append(g[same])
        ok.append(["log_midpoint"] * int(same.sum()))
    if rule.zero_threshold is not None:
        out.append(np.array([rule.zero_threshold, -rule.zero_threshold]))
        ok.append(["underflow_threshold"] * 2)
    return np.concatenate(out), tuple(k for ks in ok for k in ks)


def element_inputs(fmt: Format, seed: int, n: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """The float32 inputs of the encode vectors and why each is there (module docstring)."""
    xs: list[np.ndarray] = []
    ks: list[str] = []

    def add(vals, kind):
        v = np.atleast_1d(np.asarray(vals, dtype=np.float64))
        with np.errstate(over="ignore"):
            v32 = v.astype(np.float32)
        keep = np.isfinite(v32) | ~np.isfinite(v)
        v32 = v32[keep]
        xs.append(v32)
        exact = v32.astype(np.float64) == v[keep]
        ks.extend(kind if e or not np.isfinite(x) else kind + "~" for x, e in zip(v32, exact))

    vals = fmt.values()
    fin = vals[np.isfinite(vals)]
    add([0.0, -0.0], "signed_zero")
    add([np.inf, -np.inf], "inf")
    if fmt.has_nan:
        xs.append(np.array([np.nan, -np.nan], dtype=np.float32))
        ks.extend(["nan", "nan"])
    sub = np.array([2.0 ** -149, 2.0 ** -148, 3 * 2.0 ** -149, 2.0 ** -140, 2.0 ** -127,
                    2.0 ** -126 - 2.0 ** -149], dtype=np.float64)
    add(np.concatenate([sub, -sub]), "f32_subnormal")
    add([F32_MAX, -F32_MAX, 2.0 ** -126, -(2.0 ** -126)], "f32_extreme")
    add(fin, "value")
    mids, mkinds = _boundaries(fmt)
    for kind in sorted(set(mkinds)):
        m = mids[np.array([k == kind for k in mkinds])]
        with np.errstate(over="ignore"):
            m32 = m.astype(np.float32)
        m = m[np.isfinite(m32)]
        m32 = m32[np.isfinite(m32)]
        add(m, kind)
        add(np.nextafter(m32, np.float32(np.inf)), kind + "+ulp")
        add(np.nextafter(m32, np.float32(-np.inf)), kind + "-ulp")
    if n > 0:
        rng = np.random.default_rng(seed)
        n_log = n - n // 4
        pos = fin[fin > 0]
        lo = max(float(pos.min()) / 4 if pos.size else 2.0 ** -20, 2.0 ** -149)
        hi = min(float(np.abs(fin).max()) * 2 if fin.size else 1.0, F32_MAX)
        mag = np.exp2(rng.uniform(math.log2(lo), math.log2(hi), n_log))
        sign = np.where(rng.random(n_log) < 0.5, -1.0, 1.0) if fmt.signed else 1.0
        add(mag * sign, "random")
        pats = rng.integers(0, 1 << 32, n // 4, dtype=np.uint64).astype(np.uint32)
        r = pats.view(np.float32)
        if not fmt.has_nan:
            r = r[~np.isnan(r)]
        xs.append(r)
        ks.extend(["random_bits"] * r.size)
    x = np.concatenate(xs).astype(np.float32)
    # drop exact duplicates (same bit pattern), keeping the first reason
    _, first = np.unique(f32_bits(x), return_index=True)
    first = np.sort(first)
    return x[first], tuple(ks[i] for i in first)


def element_vectors(fmt: "Format | str", rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
                    seed: int = 0, n: int = 1000) -> ElementVectors:
    """Decode + encode vectors of ``fmt`` (module docstring); overflow is the format's default."""
    fmt = get_format(fmt)
    rounding = Rounding.parse(rounding)
    overflow = fmt.default_overflow
    x, kinds = element_inputs(fmt, seed, n)
    draws = None
    if rounding is Rounding.STOCHASTIC:
        draw_seed = seed + 1
        draws = np.random.default_rng(draw_seed).random(x.size)
        codes = fmt.encode(x, rounding, overflow, seed=draw_seed)
    else:
        codes = fmt.encode(x, rounding, overflow)
    return ElementVectors(fmt, rounding, overflow, x, kinds, codes.astype(np.int64), draws)


# ---- block vectors ----------------------------------------------------------------------------

def _block_facts(q) -> tuple[int, Format, bool]:
    g = q.granularity
    size = getattr(g, "size", None)
    if size is None or not getattr(q, "is_block", False):
        raise FmtlabError(f"{q}: not a block quantizer")
    return int(size), get_format(str(g.scale_format)), bool(getattr(g, "tensor_scale", False))


def _quantize_rows(q, x: np.ndarray):
    qt = q.quantize(np.ascontiguousarray(x, dtype=np.float32))
    sc = np.asarray(qt.scale_codes).reshape(x.shape[0], -1)
    if sc.shape[1] != 1:
        raise FmtlabError(f"{q}: expected one scale per block row, got scale shape {sc.shape}")
    return qt, sc[:, 0].astype(np.int64)


def _row(amax: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Blocks with max |x| = amax: amax first, then amax * fill (|fill| < 1)."""
    a = np.asarray(amax, dtype=np.float32)[:, None]
    rest = (a * fill[None, :]).astype(np.float32)
    return np.concatenate([a, rest], axis=1)


def _untiled(q):
    """A 2-D tile quantizer's 1-D twin: blocks of r * c consecutive elements, one block row per
    tile in row-major order (every block rule depends only on its block's elements and, for
    NVFP4's tensor scale, the tensor's max, so the codes are those of the tiled quantizer)."""
    g = q.granularity
    if getattr(g, "tile", None) is None:
        return q
    return dataclasses.replace(q, granularity=dataclasses.replace(g, tile=None), name=None)


def block_vectors(q, seed: int = 0, n: int = 1000) -> BlockVectors:
    """Whole-block vectors of the block quantizer ``q`` (module docstring)."""
    K, sfmt, tensor = _block_facts(q)
    rng = np.random.default_rng([seed, 2])
    fill = rng.uniform(-0.99, 0.99, K - 1)
    elem_max = np.float32(q.format.max)
    anchor = np.float32(np.float32(sfmt.max) * elem_max) if tensor else None
    blocks: list[np.ndarray] = []
    kinds: list[str] = []
    if anchor is not None:
        blocks.append(_row(np.array([anchor]), fill))
        kinds.append("anchor")
    head = np.concatenate(blocks) if blocks else np.zeros((0, K), np.float32)

    def codes_of(amax_bits: np.ndarray) -> np.ndarray:
        rows = _row(amax_bits.astype(np.uint32).view(np.float32), fill)
        _, sc = _quantize_rows(q, np.concatenate([head, rows]))
        return sc[len(head):]

    # bisection over positive float32 patterns: code(u) is non-decreasing in u
    lo_u = 1
    hi_u = int(np.float32(anchor if anchor is not None else F32_MAX).view(np.uint32))
    ends = codes_of(np.array([lo_u, hi_u], dtype=np.int64))
    probe = np.unique(np.linspace(lo_u, hi_u, 4096).astype(np.int64))
    pc = codes_of(probe)
    targets = np.unique(pc)
    targets = targets[(targets > ends[0]) & (targets <= ends[1])]
    # smallest u with code(u) >= c, for each target c
    lo = np.full(targets.size, lo_u, dtype=np.int64)  # code(lo) < c
    hi = np.full(targets.size, hi_u, dtype=np.int64)  # code(hi) >= c
    for i, c in enumerate(targets):
        above = probe[pc >= c]
        if above.size:
            hi[i] = above.min()
        below = probe[(pc < c) & (probe < hi[i])]  # a rule whose code is not monotone in the
        if below.size:                             # block max (four_over_six) still brackets
            lo[i] = below.max()
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        cm = codes_of(mid)
        up = cm >= targets
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    edge = np.stack([lo, hi], axis=1).reshape(-1)
    blocks.append(_row(edge.astype(np.uint32).view(np.float32), fill))
    kinds.extend(["scale_boundary_below", "scale_boundary_above"] * targets.size)
    # random blocks: log-uniform max |x| (below the anchor where there is one)
    nrand = max(1, n // K)
    top = math.log2(float(anchor)) if anchor is not None else 40.0
    amax = np.exp2(rng.uniform(-40.0, top, nrand)).astype(np.float32)
    rb = (amax[:, None] * rng.uniform(-1.0, 1.0, (nrand, K))).astype(np.float32)
    blocks.append(rb)
    kinds.extend(["random"] * nrand)
    blocks.append(np.zeros((1, K), np.float32))
    kinds.append("zero")
    sub = (np.float32(2.0 ** -149) * rng.integers(-(1 << 20), 1 << 20, K)).astype(np.float32)
    blocks.append(sub[None, :])
    kinds.append("f32_subnormal")
    if getattr(q, "nan", "raise") is None:  # OCP MX rule: a NaN / Inf element makes its block NaN
        for bad, kind in ((np.nan, "nan"), (np.inf, "inf")):
            b = (rng.uniform(-1, 1, K)).astype(np.float32)
            b[K // 2] = bad
            blocks.append(b[None, :])
            kinds.append(kind)
    x = np.concatenate(blocks).astype(np.float32)
    qt, sc = _quantize_rows(q, x)
    out = q.dequantize(qt).astype(np.float32)
    scales = np.asarray(qt.scales, dtype=np.float32).reshape(-1)
    return BlockVectors(q, x, tuple(kinds), sc, np.asarray(qt.codes).astype(np.int64), out, scales,
                        None if qt.tensor_scale is None else float(qt.tensor_scale), sfmt)


# ---- resolution -------------------------------------------------------------------------------

def resolve(name: str, rounding: "Rounding | str" = Rounding.NEAREST_EVEN, seed: int = 0,
            scale_rule: str | None = None):
    """(element Format, block quantizer or None) for a format or quantizer name; ``scale_rule``
    overrides a quantizer's scale rule (e.g. "four_over_six", "neuron")."""
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"vectors need a format or quantizer name, got {name!r}")
    try:
        fmt = get_format(name)
    except FormatError as fexc:
        ferr = fexc
    else:
        if scale_rule is not None:
            raise FormatError(f"{name!r} is an element format: a scale rule needs a quantizer name")
        return fmt, None
    rounding = Rounding.parse(rounding)
    kw: dict[str, Any] = {"rounding": rounding}
    if rounding is Rounding.STOCHASTIC:
        kw["seed"] = seed + 1
    if scale_rule is not None:
        kw["scale_rule"] = scale_rule
    try:
        q = get_quantizer(name, **kw)
    except FmtlabError as qexc:
        raise FormatError(f"{name!r} is neither a format ({ferr}) nor a quantizer ({qexc})") from None
    if not isinstance(q, Quantizer):  # the identity (None), PEG, fitted-base log
        raise FormatError(f"{name!r} is neither a format ({ferr}) nor a scaled quantizer")
    return q.format, (q if q.is_block else None)


def vector_set(name: str, rounding: "Rounding | str" = Rounding.NEAREST_EVEN, seed: int = 0,
               n: int = 1000, scale_rule: str | None = None) -> VectorSet:
    """Every vector of ``name`` (a format or a quantizer; block quantizers add blocks)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FmtlabError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 10_000_000:
        raise FmtlabError(f"n must be an int in 0 .. 10000000, got {n!r}")
    fmt, q = resolve(name, rounding, seed, scale_rule)
    ev = element_vectors(fmt, rounding, seed, n)
    bv = block_vectors(_untiled(q), seed, n) if q is not None else None
    label = name.strip().lower()
    if scale_rule is not None:  # files of another rule get their own names
        label += "_" + re.sub(r"[^a-z0-9]+", "_", str(q.scale_rule).lower()).strip("_")
    tile = None if q is None else getattr(q.granularity, "tile", None)
    return VectorSet(label, ev, bv, int(seed), int(n), tile)


# ---- conventions ------------------------------------------------------------------------------

def _code_hex(fmt_bits: int, c: int) -> str:
    return f"0x{int(c):0{hex_width(fmt_bits)}X}"


def conventions(vs: VectorSet) -> dict[str, Any]:
    """What the vectors assume, as plain data (the header of every file)."""
    ev = vs.elements
    f = ev.fmt
    b = f.bits

    def enc(x: float) -> str:
        return _code_hex(b, int(f.encode(np.array([x], np.float32), ev.rounding, ev.overflow,
                                          seed=0)[0]))

    if f.has_nan:
        nan = (f"NaN input -> canonical NaN with the input's sign where the format has signed NaNs: "
               f"+NaN -> {_code_hex(b, f.canonical_nan_code(False))}, "
               f"-NaN -> {_code_hex(b, f.canonical_nan_code(True))}")
    else:
        nan = "the format has no NaN code: a NaN input is an error (no NaN inputs in the vectors)"
    if f.has_negative_zero:
        zero = f"-0.0 -> {_code_hex(b, f.negative_zero_code)} (negative zero kept)"
    else:
        zero = f"the format has no -0: -0.0 and negative results that round to zero -> {enc(0.0)}"
    d: dict[str, Any] = {
        "name": vs.name, "format": f.name, "family": f.family, "bits": b, "describe": f.describe(),
        "rounding": ev.rounding.value,
        "rounding_rule": {
            "nearest_even": "round to nearest; a tie goes to the even code (mantissa LSB 0)",
            "nearest_away": "round to nearest; a tie goes to the larger magnitude",
            "toward_zero": "truncate toward zero; never overflows a finite input (saturates)",
            "stochastic": "up iff u < (x - L) / (U - L) for the listed uniform draw u",
        }[ev.rounding.value],
        "overflow": ev.overflow.value,
        "overflow_rule": (f"beyond the overflow threshold (the midpoint between max and the next "
                          f"value the format would have): {ev.overflow.value}; +Inf -> {enc(np.inf)}"
                          + (f", -Inf -> {enc(-np.inf)}" if f.signed else "")),
        "nan": nan, "signed_zero": zero,
        "input_type": "float32 (IEEE 754 binary32); decoded values are float64 (binary64)",
        "seed": vs.seed, "n_random": vs.n,
    }
    if vs.blocks is not None:
        bv = vs.blocks
        q = bv.quantizer
        d["quantizer"] = q.describe()
        d["block_size"] = int(bv.inputs.shape[1])
        if vs.tile is not None:
            r, c = vs.tile
            d["tile"] = (f"{r}x{c}: each block row is one {r} x {c} tile of a matrix, its elements in "
                         f"row-major order (x[i0 + i][j0 + j] at position i * {c} + j); the codes "
                         "equal those of the same rows quantized as 1-D blocks")
        d["scale_format"] = bv.scale_format.name
        d["scale_rule"] = str(q.scale_rule)
        d["tensor_scale"] = None if bv.tensor_scale is None else float(bv.tensor_scale).hex()
        d["block_rule"] = _block_rule_text(q, bv)
    return d


def _block_rule_text(q, bv: BlockVectors) -> str:
    K = bv.inputs.shape[1]
    sr = ""
    if q.rounding is Rounding.STOCHASTIC:
        sr = (f"; STOCHASTIC element draws: numpy default_rng({q.seed}).random(nblocks * {K}) in "
              "C order over the [nblocks, K] tensor")
    return _block_rule_base(q, bv, K) + sr


def _block_rule_base(q, bv: BlockVectors, K: int) -> str:
    if bv.scale_format.name == "e8m0":
        return (f"OCP MX v1.0: {K} elements share X = 2**(scale_code - 127) (E8M0), shared-exponent "
                f"rule {q.scale_rule}; element code = {q.format.name} {q.rounding.value} rounding of "
                f"fl32(x / X), saturating; a block with NaN/Inf gets scale code 0xFF and element codes 0")
    base = (f"FP8-scaled blocks (NVFP4): {K} elements, block scale = {bv.scale_format.name} code of "
            f"fl32(fl32(amax / {q.format.max:g}) / g), g = the per-tensor FP32 scale (header "
            f"tensor_scale; 1 without); element code = {q.format.name} rounding of fl32(x / "
            f"fl32(g * scale))")
    rule = str(q.scale_rule)
    if rule.startswith("four_over_six"):
        return (base + f"; Four Over Six: a second candidate maps amax to {q.format.max * 2 / 3:g} "
                f"(amax / {q.format.max * 2 / 3:g} in place of amax / {q.format.max:g}); per block "
                f"the candidate with the strictly lower error ({rule}) is kept, ties keep the first")
    if rule.startswith("mixfp4"):
        return (base + "; MixFP4: a second candidate stores fp4_e1m2 elements (block scale from "
                "amax / 1.75, same g); per block the candidate with the strictly lower error "
                f"({rule}) is kept, ties keep fp4_e2m1; scale_code bit 7 = 1 marks an fp4_e1m2 "
                "block (its element codes decode as fp4_e1m2: S.E.MM, +/-{0, 0.25, ..., 1.75}), "
                "bits 6..0 are the E4M3 scale magnitude")
    return base


# ---- writing ----------------------------------------------------------------------------------

def _header(conv: dict[str, Any], layout: str) -> str:
    lines = [f"fmtlab golden vectors: {conv['name']}"]
    for k, v in conv.items():
        if k == "name":
            continue
        lines.append(f"{k}: {v}")
    lines.append(f"word layout (MSB first): {layout}")
    return "".join(f"// {ln}\n" for ln in lines)


def _decode_rows(fmt: Format):
    vals = fmt.values()
    for c, v in enumerate(vals.tolist()):
        yield c, binary(fmt, c), v, code_kind(fmt, c, v)


def _csv(rows, header) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _frepr(v: float) -> str:
    return repr(float(v))


def _fhex(v: float) -> str:
    v = float(v)
    return v.hex() if math.isfinite(v) else repr(v)


def render(vs: VectorSet) -> dict[str, str]:
    """File name -> text of every vector file of ``vs`` (module docstring)."""
    ev, f = vs.elements, vs.elements.fmt
    conv = conventions(vs)
    cw = hex_width(f.bits)
    files: dict[str, str] = {}
    base = vs.name
    # decode
    drows, dhex = [], []
    for c, binv, v, kind in _decode_rows(f):
        vb = _b64(v)
        drows.append([c, _code_hex(f.bits, c), binv, _frepr(v), _fhex(v), f"0x{vb:016X}", kind])
        dhex.append(f"{c:0{cw}X}{vb:016X}")
    files[f"{base}.decode.csv"] = _csv(drows, ["code", "code_hex", "binary", "value", "value_hex",
                                               "value_f64_bits", "kind"])
    files[f"{base}.decode.hex"] = _header(conv, f"{{code[{4 * cw - 1}:0], value_f64[63:0]}}") + \
        "\n".join(dhex) + "\n"
    # encode
    xb = f32_bits(ev.inputs)
    dec = f.values()[ev.codes]
    erows, ehex = [], []
    for i in range(ev.inputs.size):
        x = float(ev.inputs[i])
        row = [i, ev.kinds[i], f"0x{int(xb[i]):08X}", _frepr(x)]
        word = f"{int(xb[i]):08X}"
        if ev.draws is not None:
            ub = _b64(ev.draws[i])
            row.append(_fhex(ev.draws[i]))
            word += f"{ub:016X}"
        row += [_code_hex(f.bits, ev.codes[i]), _frepr(dec[i])]
        erows.append(row)
        ehex.append(word + f"{int(ev.codes[i]):0{cw}X}")
    eh = ["index", "kind", "input_f32_bits", "input"] + (["draw"] if ev.draws is not None else []) \
        + ["code", "value"]
    files[f"{base}.encode.csv"] = _csv(erows, eh)
    lay = "{x_f32[31:0], " + ("u_f64[63:0], " if ev.draws is not None else "") + \
        f"code[{4 * cw - 1}:0]}}"
    files[f"{base}.encode.hex"] = _header(conv, lay) + "\n".join(ehex) + "\n"
    doc: dict[str, Any] = {
        "conventions": conv,
        "decode": [{"code": r[0], "code_hex": r[1], "binary": r[2], "value": r[3], "value_hex": r[4],
                    "kind": r[6]} for r in drows],
        "encode": [dict(zip(eh, r)) for r in erows],
    }
    if vs.blocks is not None:
        bv = vs.blocks
        K = bv.inputs.shape[1]
        sw = hex_width(bv.scale_format.bits)
        brows, bhex = [], []
        bits = f32_bits(bv.inputs)
        for i in range(bv.inputs.shape[0]):
            xs = [f"0x{int(b):08X}" for b in bits[i]]
            cs = [_code_hex(f.bits, c) for c in bv.codes[i]]
            brows.append([i, bv.kinds[i], _code_hex(bv.scale_format.bits, bv.scale_codes[i]),
                          _fhex(bv.scales[i]), " ".join(xs), " ".join(cs),
                          " ".join(_frepr(v) for v in bv.outputs[i])])
            bhex.append("".join(f"{int(b):08X}" for b in bits[i]) + f"{int(bv.scale_codes[i]):0{sw}X}"
                        + "".join(f"{int(c):0{cw}X}" for c in bv.codes[i]))
        bh = ["block", "kind", "scale_code", "scale", "inputs_f32_bits", "codes", "outputs"]
        files[f"{base}.blocks.csv"] = _csv(brows, bh)
        lay = (f"{{x[0]_f32, ..., x[{K - 1}]_f32, scale_code[{4 * sw - 1}:0], code[0], ..., "
               f"code[{K - 1}]}} (each code {4 * cw} bits)")
        files[f"{base}.blocks.hex"] = _header(conv, lay) + "\n".join(bhex) + "\n"
        doc["blocks"] = [{"block": r[0], "kind": r[1], "scale_code": r[2], "scale": r[3],
                          "inputs_f32_bits": r[4].split(), "codes": r[5].split(),
                          "outputs": r[6].split()} for r in brows]
    files[f"{base}.json"] = dumps_json(doc) + "\n"
    return files


def write_vectors(name: str, out: "str | Path", rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
                  seed: int = 0, n: int = 1000, scale_rule: str | None = None) -> list[Path]:
    """Write every vector file of ``name`` into folder ``out`` (created if missing), all together
    or none (a staging folder inside ``out``); returns the paths written. ``scale_rule``
    overrides a block quantizer's rule; the files are then named NAME_<rule>.*"""
    vs = vector_set(name, rounding, seed, n, scale_rule)
    files = render(vs)
    if any("/" in k or k.startswith(".") for k in files):
        raise FmtlabError(f"{name!r} does not make a safe file name")
    Path(out).mkdir(parents=True, exist_ok=True)
    with staged_dir(out, quiet=True) as stage:
        for fname, text in files.items():
            (stage / fname).write_text(text, encoding="utf-8")
    return [Path(out) / k for k in files]


def read_hex(path: "str | Path") -> list[int]:
    """The words of a ``$readmemh`` file (comments and blank lines skipped), as Python ints."""
    words = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.split("//", 1)[0].strip()
        if s:
            words.append(int(s, 16))
    return words


def f32_from_bits(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u))[0]


def f64_from_bits(u: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", u))[0]
