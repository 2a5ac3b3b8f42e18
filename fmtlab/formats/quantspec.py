"""QuantSpec: the typed value behind every quantizer name.

A quantizer name ("int8_per_token", "mxfp4", "nvfp4", "int4_g128_asym", "int8_peg6",
"log4_fitb_per_channel", "fp32", "int8_per_token(pow2=yes)", ...) is parsed ONCE, by
:func:`fmtlab.formats.presets.parse_quantizer`, into a frozen :class:`QuantSpec`; everything
downstream (replay, the torch plug-in, explore, the hardware model) takes the spec, and
``spec.build()`` makes the quantizer object. ``str(spec)`` is a canonical name that parses back
to an equal spec (block formats print under their BlockFormat name, ``mxfp8_e4m3`` as ``mxfp8``;
fields no name spells become ``name(key=value)`` options).

Methods (``spec.method``):

* ``"identity"``: no quantization (``build()`` returns None); spelled fp32 / none / float32 /
  identity, printed ``fp32``;
* ``"scaled"``: an :class:`fmtlab.formats.Quantizer`: element format x granularity (per tensor,
  token, channel, group, or MX / NVFP4 block) x scale rule x rounding / overflow / NaN policy,
  pow2 scales, seed. The fields are the Quantizer's normalized fields, so two spellings of the
  same quantizer give equal specs;
* ``"peg"``: PEG activation groups (:class:`fmtlab.formats.peg.PegQuantizer`), ``params`` =
  (format, groups, permute, scale_rule);
* ``"logfit"``: log weights with a fitted base (:class:`fmtlab.formats.logfit.FittedLogQuantizer`),
  ``params`` = (bits, axis, method, grid, tol).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.formats.base import Format
from fmtlab.formats.blockfmt import BlockFormat, ScaleFormat, get_block_format
from fmtlab.formats.logfit import FittedLogQuantizer
from fmtlab.formats.peg import PegQuantizer
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding
from fmtlab.formats.scaling import (
    MSE, AbsMax, FourOverSix, Granularity, MinMax, MixFP4, Percentile, PerBlock, PerChannel, PerGroup,
    PerTensor, PerToken,
    ScaleRule, SharedExp, Static, parse_granularity, parse_scale_rule,
)

__all__ = ["QuantSpec", "IDENTITY", "IDENTITY_NAMES", "SCALED_NAME_RE", "TILED_BLOCK_RE", "METHODS"]

#: names that mean "no quantization" (all resolve to :data:`IDENTITY`)
IDENTITY_NAMES = ("none", "fp32", "float32", "identity")
METHODS = ("identity", "scaled", "peg", "logfit")

#: ``<format>_per_tensor|per_token|per_channel|g<N>[_asym|_mse|_pow2|_p<P>]``
SCALED_NAME_RE = re.compile(r"(.+?)_(per_tensor|per_token|per_channel|g(\d+)|b(\d+)x(\d+))"
                            r"(?:_(asym|mse|pow2|ue8m0|p([0-9.]+)))?")
#: a block preset on 2-D tiles: ``<block name>_<r>x<c>`` (nvfp4_16x16, mxfp8_32x32, mixfp4_16x16)
TILED_BLOCK_RE = re.compile(r"(.+)_(\d+)x(\d+)")

_PEG_OVERRIDES = ("scale_rule", "permute", "groups")
_LOGFIT_OVERRIDES = ("tol", "method")
_QFIELDS = ("format", "granularity", "scale_rule", "rounding", "overflow", "nan", "pow2", "seed")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A quantizer, named once (see the module docstring).

    method: "identity" | "scaled" | "peg" | "logfit"; format: the element Format (None for the
    identity and fitted-base log); granularity, scale_rule: scaling objects
    (:mod:`fmtlab.formats.scaling`; PEG: scale_rule only; fitted log: granularity only);
    rounding, overflow, nan, pow2, seed: the Quantizer's conventions (scaled specs only);
    params: the method's own parameters as (key, value) pairs in field order (PEG, fitted log).
    Build specs with :meth:`of` (from a quantizer object) or ``parse_quantizer`` (from a name).
    """

    method: str = "identity"
    format: Format | None = None
    granularity: Granularity | None = None
    scale_rule: ScaleRule | None = None
    rounding: Rounding | None = None
    overflow: Overflow | None = None
    nan: NanInput | None = None
    pow2: bool = False
    seed: int | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FmtlabError(f"QuantSpec method must be one of {METHODS}, got {self.method!r}")

    # ---- from / to quantizer objects ---------------------------------------------------------
    @classmethod
    def of(cls, q: Any) -> "QuantSpec":
        """The spec of a quantizer object (None: the identity; a Quantizer, PegQuantizer or
        FittedLogQuantizer). FmtlabError for anything else."""
        if q is None:
            return IDENTITY
        if isinstance(q, QuantSpec):
            return q
        if isinstance(q, Quantizer):
            return cls("scaled", q.format, q.granularity, q.scale_rule, q.rounding, q.overflow, q.nan,
                       q.pow2, q.seed)
        if isinstance(q, PegQuantizer):
            params = tuple((f.name, getattr(q, f.name)) for f in dataclasses.fields(q) if f.name != "name")
            return cls("peg", get_format(q.format), scale_rule=parse_scale_rule(q.scale_rule),
                       params=params)
        if isinstance(q, FittedLogQuantizer):
            params = tuple((f.name, getattr(q, f.name)) for f in dataclasses.fields(q))
            g = PerTensor() if q.axis is None else PerChannel(q.axis)
            return cls("logfit", granularity=g, params=params)
        raise FmtlabError(f"no QuantSpec for {type(q).__name__} objects (a Quantizer, PegQuantizer, "
                          "FittedLogQuantizer or None)")

    def build(self, name: str | None = None) -> Any:
        """The quantizer object (None for the identity); ``name`` is its display name (the
        Quantizer's ``name`` field; None: the quantizer's own default)."""
        if self.method == "identity":
            return None
        if self.method == "scaled":
            return Quantizer(**{k: getattr(self, k) for k in _QFIELDS}, name=name)
        if self.method == "peg":
            return PegQuantizer(**dict(self.params), name=name)
        return FittedLogQuantizer(**dict(self.params))

    def with_options(self, **options: Any) -> "QuantSpec":
        """This spec with keyword options (what ``name(key=value, ...)`` spells).

        scaled: any Quantizer field (format, granularity, scale_rule, rounding, overflow, nan,
        pow2, seed) plus ``axis`` (the granularity's axis) and ``group_size`` / ``block_size``
        (its size); a scale rule or NaN policy equal to the granularity's default follows a new
        granularity. peg: scale_rule, permute, groups. logfit: tol, method. The identity takes
        none. Unknown keys raise FmtlabError naming the allowed ones.
        """
        if not options:
            return self
        if self.method == "identity":
            raise FmtlabError(f"the identity quantizer takes no options, got {sorted(options)}")
        if self.method == "peg":
            _check_keys(options, _PEG_OVERRIDES, "PEG")
            return QuantSpec.of(PegQuantizer(**{**dict(self.params), **options}))
        if self.method == "logfit":
            _check_keys(options, _LOGFIT_OVERRIDES, "fitted-base log")
            return QuantSpec.of(FittedLogQuantizer(**{**dict(self.params), **options}))
        return QuantSpec.of(_scaled_with(self, dict(options)))

    # ---- what it is ------------------------------------------------------------------------------
    @property
    def identity(self) -> bool:
        return self.method == "identity"

    @property
    def is_block(self) -> bool:
        """An MX / NVFP4 block format (one scale per block of ``granularity.size`` elements)."""
        return isinstance(self.granularity, PerBlock)

    @property
    def scale_format(self) -> str | None:
        """How scales are stored: "e8m0" (MX blocks, or power-of-two scales), "fp8_e4m3" (NVFP4
        blocks), "fp32" (float scales); None for the identity."""
        if self.method == "identity":
            return None
        if self.is_block:
            return str(self.granularity.scale_format)
        return "e8m0" if self.pow2 else "fp32"

    @property
    def static(self) -> bool:
        """Scales fixed before the data is seen (a Static rule); False: computed per call."""
        return isinstance(self.scale_rule, Static)

    @property
    def block_format(self) -> BlockFormat | None:
        """The BlockFormat of a block spec (element, block, scale format, rule), else None."""
        if not self.is_block:
            return None
        g = self.granularity
        rule = self.scale_rule.mode if isinstance(self.scale_rule, SharedExp) else "floor"
        return BlockFormat(self.format, g.size, g.scale_format, rule, g.tensor_scale)

    # ---- naming ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        if self.method == "identity":
            return "fp32"
        if self.method == "peg":
            p = dict(self.params)
            base = f"{p['format']}_peg{p['groups']}" + ("" if p["permute"] else "_noperm")
            return _call(base, [("scale_rule", p["scale_rule"])] if p["scale_rule"] != "absmax" else [])
        if self.method == "logfit":
            p = dict(self.params)
            gran = "per_tensor" if p["axis"] is None else "per_channel"
            base = f"log{p['bits']}_fitb_{gran}" + ("_grid" if p["method"] == "grid" else "")
            if p["grid"] is not None:
                return f"<unnamed {base} with an explicit base grid>"
            default_tol = FittedLogQuantizer.__dataclass_fields__["tol"].default
            return _call(base, [("tol", p["tol"])] if p["tol"] != default_tol else [])
        return _scaled_name(self)

    @property
    def name(self) -> str:
        """The canonical name (``str(spec)``)."""
        return str(self)


IDENTITY = QuantSpec("identity")


def _check_keys(options: dict, allowed: tuple, what: str) -> None:
    unknown = set(options) - set(allowed)
    if unknown:
        raise FmtlabError(f"unknown {what} option(s) {sorted(unknown)}; use {', '.join(allowed)}")


def _default_rule(g: Granularity) -> ScaleRule:
    return SharedExp("floor") if isinstance(g, PerBlock) and g.scale_format == "e8m0" else AbsMax()


def _scaled_with(spec: QuantSpec, options: dict) -> Quantizer:
    """The Quantizer of a scaled spec with options (see QuantSpec.with_options)."""
    axis = options.pop("axis", None)
    size = options.pop("group_size", None)
    bsize = options.pop("block_size", None)
    if size is not None and bsize is not None:
        raise FmtlabError("pass group_size or block_size, not both")
    size = size if size is not None else bsize
    fields = {f.name for f in dataclasses.fields(Quantizer)} - {"name"}
    unknown = set(options) - fields
    if unknown:
        raise FmtlabError(f"unknown override(s) {sorted(unknown)}; use {sorted(fields)}, "
                          "axis, group_size, block_size")
    kw = {k: getattr(spec, k) for k in _QFIELDS}
    if kw["scale_rule"] == _default_rule(spec.granularity):
        kw["scale_rule"] = None  # the default follows the granularity
    if kw["nan"] is (None if spec.is_block else NanInput.RAISE):
        kw["nan"] = None
    kw.update(options)
    g = parse_granularity(kw["granularity"])
    if axis is not None:
        if not hasattr(g, "axis"):
            raise FmtlabError(f"{spec}: granularity {g} has no axis to override")
        g = dataclasses.replace(g, axis=axis)
    if size is not None:
        if not hasattr(g, "size"):
            raise FmtlabError(f"{spec}: granularity {g} has no size to override")
        g = dataclasses.replace(g, size=size)
    kw["granularity"] = g
    return Quantizer(**kw)


def _value(v: Any) -> str:
    """An option value as ``parse_value`` reads it back."""
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, (Rounding, Overflow, NanInput)):
        return v.value
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _call(base: str, options: list[tuple[str, Any]]) -> str:
    if not options:
        return base
    return base + "(" + ", ".join(f"{k}={_value(v)}" for k, v in options) + ")"


#: block presets whose FP8-scale rule is part of the name: name -> (block format name, rule name)
#: (NVFP4 Four Over Six, arXiv 2512.02010; MixFP4, arXiv 2605.31035); presets.py registers them
FP8_RULE_PRESETS: dict[str, tuple[str, str]] = {
    "nvfp4_4over6": ("nvfp4", "four_over_six"),
    "mixfp4": ("nvfp4", "mixfp4"),
}


def _rule_option(rule: ScaleRule) -> str | float | None:
    """A scale rule as a scale_rule= option value, or None when no name spells it."""
    if isinstance(rule, AbsMax):
        return "absmax"
    if isinstance(rule, (FourOverSix, MixFP4)):
        return str(rule)
    if isinstance(rule, MinMax):
        return "minmax"
    if isinstance(rule, SharedExp):
        return str(rule.mode)
    if isinstance(rule, MSE):
        return "mse" if rule == MSE() else None
    if isinstance(rule, Percentile):
        return f"percentile({float(rule.p)!r})"
    if isinstance(rule, Static) and rule.zero_point is None and isinstance(rule.scale, float):
        return float(rule.scale)
    return None


def _suffix(rule: ScaleRule, pow2: bool) -> str | None:
    """The ``_<rule>`` suffix of a scaled name spelling (rule, pow2), or None."""
    if isinstance(rule, AbsMax):
        return "_pow2" if pow2 else ""
    if pow2:
        return None
    if isinstance(rule, MinMax):
        return "_asym"
    if isinstance(rule, MSE) and rule == MSE():
        return "_mse"
    if isinstance(rule, Percentile):
        t = repr(float(rule.p))
        return f"_p{t}" if re.fullmatch(r"[0-9.]+", t) else None
    return None


def _gran_token(g: Granularity) -> tuple[str, int | None]:
    """(granularity token of a scaled name, axis option or None)."""
    if isinstance(g, PerTensor):
        return "per_tensor", None
    if isinstance(g, PerToken):
        return "per_token", None
    if isinstance(g, PerChannel):
        return "per_channel", (None if g.axis == 0 else g.axis)
    if g.tile is not None:
        return f"b{g.tile[0]}x{g.tile[1]}", None
    return f"g{g.size}", (None if g.axis == -1 else g.axis)


def _scaled_name(spec: QuantSpec) -> str:
    """Canonical name of a scaled spec: the shortest base name, then options for what it does
    not spell (see the module docstring)."""
    fmt, g = spec.format, spec.granularity
    opts: list[tuple[str, Any]] = []
    if isinstance(g, PerBlock):
        bf = spec.block_format
        if g.tile is not None:  # named as the default-size block preset plus _<r>x<c>
            bf = dataclasses.replace(bf, block=16 if g.scale_format == ScaleFormat.FP8_E4M3 else 32)
        base = bf.name
        if get_block_format(base) != bf:  # an element name the block grammar would misread
            std = BlockFormat("fp4_e2m1", bf.block, g.scale_format, bf.shared_exp, g.tensor_scale)
            base, opts = std.name, [("format", fmt.name)]
        if g.axis != -1:
            opts.append(("axis", g.axis))
        e8m0 = g.scale_format == ScaleFormat.E8M0
        fp8_rule = None
        for preset, (block_name, rule_name) in FP8_RULE_PRESETS.items():
            if base == block_name and spec.scale_rule == parse_scale_rule(rule_name):
                base, fp8_rule = preset, spec.scale_rule
        base_kw = dict(format=fmt, granularity=dataclasses.replace(g, axis=-1),
                       scale_rule=SharedExp(bf.shared_exp) if e8m0 else fp8_rule)
        rule_spelled = e8m0 or fp8_rule is not None
        if g.tile is not None:
            base = f"{base}_{g.tile[0]}x{g.tile[1]}"
    else:
        tok, axis = _gran_token(g)
        suffix = _suffix(spec.scale_rule, spec.pow2)
        rule_spelled = suffix is not None
        base = f"{fmt.name}_{tok}{suffix or ''}"
        m = SCALED_NAME_RE.fullmatch(base)
        if m is None or m.group(1) != fmt.name or get_format(fmt.name) != fmt:
            base, opts = f"int8_{tok}{suffix or ''}", [("format", fmt.name)]
        if axis is not None:
            opts.append(("axis", axis))
        base_kw = dict(format=fmt, granularity=g,
                       scale_rule=spec.scale_rule if rule_spelled else None,
                       pow2=spec.pow2 if rule_spelled else False)
    ref = QuantSpec.of(Quantizer(**base_kw))
    if not rule_spelled and spec.scale_rule != ref.scale_rule:
        v = _rule_option(spec.scale_rule)
        if v is None:
            return f"<unnamed quantizer: {spec.build().describe()}>"
        opts.append(("scale_rule", v))
    for k in ("pow2", "rounding", "overflow", "nan", "seed"):
        if getattr(spec, k) != getattr(ref, k):
            opts.append((k, getattr(spec, k)))
    return _call(base, opts)
