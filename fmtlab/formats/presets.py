"""Quantizer names: the one grammar and resolver (``parse_quantizer``, ``get_quantizer``).

    get_quantizer("mxfp8_e4m3")                       # OCP MX: E4M3 elements, 32-blocks, FLOOR
    get_quantizer("mxfp8_e4m3", scale_rule="ceil")    # same, CEIL shared exponent
    get_quantizer("mxfp8_e4m3(scale_rule=ceil)")      # the same, as one string
    get_quantizer("int8_per_channel", axis=1)         # override the granularity's axis
    get_quantizer("int4_g128", group_size=64)         # override the group size
    get_quantizer("int8_peg6")                        # PEG activation groups (fmtlab.formats.peg)
    get_quantizer("fp32")                             # None: no quantization

Every name the CLI accepts for a weight or activation quantizer parses here, once, into a
:class:`fmtlab.formats.quantspec.QuantSpec` (``parse_quantizer``); ``get_quantizer`` builds its
quantizer object. A name is ``<base>[(key=value, ...)]``; the base is one of

  fp32 | none | float32 | identity   no quantization (get_quantizer returns None)
  mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8 (OCP MX v1.0: block 32 along the
      last axis, E8M0 scale, FLOOR), nvfp4 (E2M1, blocks of 16, E4M3 block scale, FP32 tensor
      scale); aliases mxfp8, mxfp6, mxfp4_e2m1
  nvfp4_4over6 (alias nvfp4_four_over_six): NVFP4 with Four Over Six block scales;
  mixfp4: NVFP4 blocks choosing E2M1 or E1M2 elements (flag: bit 7 of the E4M3 scale code)
  mx<element>[_b<N>][_<rule>], nv<element>[_b<N>][_notensor]   any block format (blockfmt.py)
  <format>_peg<K>[_noperm]            PEG: K feature groups, range permutation (peg.py)
  log<N>_fitb_per_tensor|per_channel[_grid]   log weights with a fitted base (logfit.py)
  <format>_<granularity>[_<rule>]
     <format>       any registry name (int8, int4, dint4, log4, fp8_e4m3, e4m3_fn_b5, a registered
                    format, ...)
     <granularity>  per_tensor | per_token | per_channel (axis 0: weight rows) | g<N> (groups of N
                    along the last axis)
     <rule>         absmax (default) | asym (min/max with zero point, INT) | mse | p<P>
                    (percentile) | pow2 (absmax rounded up to a power of two)

Options are QuantSpec.with_options keys (scaled: any Quantizer field plus axis, group_size,
block_size; PEG: scale_rule, permute, groups; fitted log: tol, method). INT presets use the full
two's-complement grid with s = amax / (2**(n-1) - 1). Unknown names raise FmtlabError listing the
known names and the patterns.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.formats.blockfmt import BlockFormat, ScaleFormat, get_block_format
from fmtlab.formats.logfit import FittedLogQuantizer, parse_logfit_name
from fmtlab.formats.names import Grammar, parse_call
from fmtlab.formats.peg import PegQuantizer, parse_peg_name
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.quantspec import (
    FP8_RULE_PRESETS, IDENTITY, IDENTITY_NAMES, SCALED_NAME_RE, TILED_BLOCK_RE, QuantSpec,
)
from fmtlab.formats.scaling import (
    MSE, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, SharedExp,
)

__all__ = ["GRAMMAR", "BLOCK_PRESETS", "RULE_PRESETS", "METHOD_EXAMPLES", "block_quantizer", "get_quantizer",
           "known_quantizers", "list_quantizers", "parse_quantizer"]

#: the named block formats (OCP MX v1.0 and NVFP4), one BlockFormat each
BLOCK_PRESETS: dict[str, BlockFormat] = {
    "mxfp8_e4m3": BlockFormat("fp8_e4m3"),
    "mxfp8_e5m2": BlockFormat("fp8_e5m2"),
    "mxfp6_e3m2": BlockFormat("fp6_e3m2"),
    "mxfp6_e2m3": BlockFormat("fp6_e2m3"),
    "mxfp4": BlockFormat("fp4_e2m1"),
    "mxint8": BlockFormat("int8_sym"),
    "nvfp4": BlockFormat("fp4_e2m1", 16, ScaleFormat.FP8_E4M3, tensor_scale=True),
}
#: FP8-scaled block presets with a block rule of their own: NVFP4 Four Over Six (arXiv
#: 2512.02010, four_over_six.py) and MixFP4 (arXiv 2605.31035, mixfp4.py)
RULE_PRESETS: dict[str, tuple[BlockFormat, str]] = {
    k: (BLOCK_PRESETS[b], r) for k, (b, r) in FP8_RULE_PRESETS.items()}
_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e3m2", "mxfp4_e2m1": "mxfp4",
            "nvfp4_four_over_six": "nvfp4_4over6"}

_STANDARD = (
    "int8_per_tensor", "int8_per_token", "int8_per_channel", "int8_per_token_asym",
    "int4_per_channel", "int4_g128", "int4_g128_asym", "int4_g64",
    "dint4_per_channel", "dint4_g128", "log4_per_channel", "log4_g128",
    "fp8_e4m3_per_tensor", "fp8_e4m3_per_token", "fp8_e4m3_per_channel", "fp8_e5m2_per_tensor",
    "fp6_e2m3_g32", "fp4_e2m1_g32",
)
#: one name of each method kind (PEG, fitted-base log)
METHOD_EXAMPLES = ("int8_peg6", "int8_peg6_noperm", "log4_fitb_per_tensor", "log4_fitb_per_channel",
                   "log4_fitb_per_channel_grid")


def list_quantizers() -> list[str]:
    """Names of the standard presets (every ``<format>_<granularity>[_<rule>]`` also parses)."""
    return list(BLOCK_PRESETS) + list(RULE_PRESETS) + list(_STANDARD)


def known_quantizers() -> list[str]:
    """Every exact name an unknown-name error lists: the standard presets, the identity names
    and one name of each method kind."""
    return list_quantizers() + list(IDENTITY_NAMES) + list(METHOD_EXAMPLES)


def block_quantizer(bf: BlockFormat, **options: Any) -> Quantizer:
    """The Quantizer of a block format (with QuantSpec options: rounding, axis, block_size, ...)."""
    return _block_spec(bf).with_options(**options).build(name=None if options else bf.name)


def _block_spec(bf: BlockFormat, fp8_rule: str | None = None) -> QuantSpec:
    g = PerBlock(bf.block, scale_format=bf.scale_format, tensor_scale=bf.tensor_scale)
    rule = SharedExp(bf.shared_exp) if bf.scale_format is ScaleFormat.E8M0 else fp8_rule
    return QuantSpec.of(Quantizer(bf.element, g, rule))


def _scaled(m: re.Match, name: str) -> QuantSpec:
    fmt, gran, size, tr, tc, rule, pct = m.groups()
    g = {"per_tensor": PerTensor(), "per_token": PerToken(), "per_channel": PerChannel(0)}.get(gran)
    if g is None and tr is not None:
        g = PerGroup(int(tr) * int(tc), tile=(int(tr), int(tc)))
    elif g is None:
        g = PerGroup(int(size))
    kw: dict[str, Any] = {}
    if rule == "asym":
        kw["scale_rule"] = MinMax()
    elif rule == "mse":
        kw["scale_rule"] = MSE()
    elif rule in ("pow2", "ue8m0"):  # UE8M0 scales: absmax rounded up to a power of two
        kw["pow2"] = True
    elif rule is not None:
        kw["scale_rule"] = Percentile(float(pct))
    return QuantSpec.of(Quantizer(fmt, g, **kw))


def _block(key: str) -> QuantSpec | None:
    bf = get_block_format(key)
    return None if bf is None else _block_spec(bf)


def _tiled_block(key: str) -> QuantSpec | None:
    """``<block preset>_<r>x<c>``: the block preset with one scale per r x c tile."""
    m = TILED_BLOCK_RE.fullmatch(key)
    if m is None:
        return None
    try:
        spec = _base(m.group(1))
    except FmtlabError:
        return None
    if not spec.is_block:
        return None
    r, c = int(m.group(2)), int(m.group(3))
    g = dataclasses.replace(spec.granularity, size=r * c, tile=(r, c))
    return spec.with_options(granularity=g)


def _peg(key: str) -> QuantSpec | None:
    return None if parse_peg_name(key) is None else QuantSpec.of(PegQuantizer.from_name(key))


def _logfit(key: str) -> QuantSpec | None:
    return None if parse_logfit_name(key) is None else QuantSpec.of(FittedLogQuantizer.from_name(key))


#: quantizer names -> QuantSpec (the one grammar; see the module docstring)
GRAMMAR: Grammar[QuantSpec] = Grammar("quantizer", FmtlabError)
for _n in IDENTITY_NAMES:
    GRAMMAR.exact(_n, lambda: IDENTITY)
for _k, _bf in BLOCK_PRESETS.items():
    GRAMMAR.exact(_k, lambda _bf=_bf: _block_spec(_bf))
for _k, (_bf, _r) in RULE_PRESETS.items():
    GRAMMAR.exact(_k, lambda _bf=_bf, _r=_r: _block_spec(_bf, _r))
for _a, _t in _ALIASES.items():
    GRAMMAR.alias(_a, _t)
GRAMMAR.kind("peg", _peg, "<format>_peg<K>[_noperm]")
GRAMMAR.kind("logfit", _logfit, "log<N>_fitb_per_tensor|per_channel[_grid]")
GRAMMAR.kind("block", _block, "block formats mx<element>[_b<N>][_<rule>], nv<element>[_b<N>][_notensor]")
GRAMMAR.kind("tiled_block", _tiled_block, "2-D block tiles <block name>_<R>x<C> (nvfp4_16x16)")
GRAMMAR.kind("scaled", SCALED_NAME_RE, "<format>_per_tensor|per_token|per_channel|g<N>|b<R>x<C>"
             "[_asym|_mse|_pow2|_ue8m0|_p<P>]", _scaled)


def _base(key: str) -> QuantSpec:
    return GRAMMAR.resolve(key, known=known_quantizers())


def _split(text: str) -> tuple[str, dict[str, Any]]:
    """(lowercase base name, options) of ``"base"`` or ``"base(key=value, ...)"``."""
    if "(" in text or ")" in text:
        name, options = parse_call(text)
        return name.strip().lower(), options
    return text.strip().lower(), {}


def parse_quantizer(name: "str | QuantSpec", **options: Any) -> QuantSpec:
    """The QuantSpec of a quantizer name (see the module docstring), with keyword options on top
    of any ``(key=value)`` options in the name. A QuantSpec passes through (options applied).
    FmtlabError for a name no pattern knows (listing the known names) or a bad option."""
    if isinstance(name, QuantSpec):
        return name.with_options(**options)
    if not isinstance(name, str):
        raise FmtlabError(f"quantizer name must be a str, got {type(name).__name__}")
    base, opts = _split(name)
    return _base(base).with_options(**{**opts, **options})


def get_quantizer(name: "str | QuantSpec", **overrides: Any) -> Any:
    """The quantizer object named ``name`` (see the module docstring): a Quantizer, a
    PegQuantizer or a FittedLogQuantizer; None for the identity names (fp32, none, ...).

    Overrides: any Quantizer field (format, granularity, scale_rule, rounding, overflow, nan, pow2,
    seed), plus ``axis`` (the granularity's axis), ``group_size`` / ``block_size`` (its size);
    PEG and fitted-log names take their own (see QuantSpec.with_options). The quantizer's ``name``
    is the name as given (lowercase) when there are no options.
    """
    spec = parse_quantizer(name, **overrides)
    if isinstance(name, QuantSpec):
        return spec.build()
    base, opts = _split(name)
    return spec.build(name=None if (opts or overrides) else base)
