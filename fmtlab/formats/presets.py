"""Quantizer presets by name, with keyword overrides.

    get_quantizer("mxfp8_e4m3")                       # OCP MX: E4M3 elements, 32-blocks, FLOOR
    get_quantizer("mxfp8_e4m3", scale_rule="ceil")    # same, CEIL shared exponent
    get_quantizer("int8_per_channel", axis=1)         # override the granularity's axis
    get_quantizer("int4_g128", group_size=64)         # override the group size

Named block formats: mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8 (OCP MX v1.0,
block 32 along the last axis, E8M0 scale, FLOOR), nvfp4 (E2M1, blocks of 16, E4M3 block scale,
FP32 tensor scale). Every other name is ``<format>_<granularity>[_<rule>]``:
  <format>       any registry name (int8, int4, dint4, log4, fp8_e4m3, fp6_e2m3, e4m3_fn_b5, ...)
  <granularity>  per_tensor | per_token | per_channel (axis 0: weight rows) | g<N> (groups of N
                 along the last axis)
  <rule>         absmax (default) | asym (min/max with zero point, INT) | mse | p<P> (percentile)
                 | pow2 (absmax rounded up to a power of two)
INT presets use the full two's-complement grid with s = amax / (2**(n-1) - 1).
"""

from __future__ import annotations

import dataclasses
import re

from fmtlab.errors import FmtlabError
from fmtlab.formats.blockfmt import BlockFormat, ScaleFormat, get_block_format
from fmtlab.formats.names import Grammar
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.scaling import (
    MSE, MinMax, Percentile, PerChannel, PerGroup, PerTensor, PerToken, parse_granularity,
)

__all__ = ["get_quantizer", "list_quantizers", "BLOCK_PRESETS", "quantizer_from_spec"]

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
_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e3m2", "mxfp4_e2m1": "mxfp4"}

_STANDARD = (
    "int8_per_tensor", "int8_per_token", "int8_per_channel", "int8_per_token_asym",
    "int4_per_channel", "int4_g128", "int4_g128_asym", "int4_g64",
    "dint4_per_channel", "dint4_g128", "log4_per_channel", "log4_g128",
    "fp8_e4m3_per_tensor", "fp8_e4m3_per_token", "fp8_e4m3_per_channel", "fp8_e5m2_per_tensor",
    "fp6_e2m3_g32", "fp4_e2m1_g32",
)

_GRAN_RE = re.compile(r"(.+?)_(per_tensor|per_token|per_channel|g(\d+))(?:_(asym|mse|pow2|p([0-9.]+)))?")


def list_quantizers() -> list[str]:
    """Names of the standard presets (every ``<format>_<granularity>[_<rule>]`` also parses)."""
    return list(BLOCK_PRESETS) + list(_STANDARD)


def _scaled(m: re.Match, name: str) -> dict:
    fmt, gran, size, rule, pct = m.groups()
    g = {"per_tensor": PerTensor(), "per_token": PerToken(), "per_channel": PerChannel(0)}.get(gran)
    if g is None:
        g = PerGroup(int(size))
    out = dict(format=fmt, granularity=g)
    if rule == "asym":
        out["scale_rule"] = MinMax()
    elif rule == "mse":
        out["scale_rule"] = MSE()
    elif rule == "pow2":
        out["pow2"] = True
    elif rule is not None:
        out["scale_rule"] = Percentile(float(pct))
    return out


def _block(key: str) -> dict | None:
    bf = get_block_format(key)
    return None if bf is None else bf.quantizer_spec()


GRAMMAR: Grammar[dict] = Grammar("quantizer", FmtlabError)
for _k, _bf in BLOCK_PRESETS.items():
    GRAMMAR.exact(_k, _bf.quantizer_spec)
for _a, _t in _ALIASES.items():
    GRAMMAR.alias(_a, _t)
GRAMMAR.kind("block", _block, "block formats mx<element>[_b<N>][_<rule>], nv<element>[_b<N>]")
GRAMMAR.kind("scaled", _GRAN_RE, "<format>_per_tensor|per_token|per_channel|g<N>"
             "[_asym|_mse|_pow2|_p<P>]", _scaled)


def _parse(name: str) -> dict:
    return GRAMMAR.resolve(name, known=list_quantizers())


def get_quantizer(name: str, **overrides) -> Quantizer:
    """The preset ``name`` (see the module docstring) with keyword overrides.

    Overrides: any Quantizer field (format, granularity, scale_rule, rounding, overflow, nan, pow2,
    seed), plus ``axis`` (the granularity's axis), ``group_size`` / ``block_size`` (its size).
    """
    if not isinstance(name, str):
        raise FmtlabError(f"quantizer name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    return quantizer_from_spec(key, _parse(key), overrides)


def quantizer_from_spec(key: str, spec: dict, overrides: dict) -> Quantizer:
    """A Quantizer from preset fields ``spec`` named ``key``, with get_quantizer's overrides."""
    spec, overrides = dict(spec), dict(overrides)
    axis = overrides.pop("axis", None)
    size = overrides.pop("group_size", None)
    bsize = overrides.pop("block_size", None)
    if size is not None and bsize is not None:
        raise FmtlabError("pass group_size or block_size, not both")
    size = size if size is not None else bsize
    fields = {f.name for f in dataclasses.fields(Quantizer)}
    unknown = set(overrides) - fields
    if unknown:
        raise FmtlabError(f"unknown override(s) {sorted(unknown)}; use {sorted(fields - {'name'})}, "
                          "axis, group_size, block_size")
    spec.update(overrides)
    g = parse_granularity(spec["granularity"])
    if axis is not None:
        if not hasattr(g, "axis"):
            raise FmtlabError(f"{key}: granularity {g} has no axis to override")
        g = dataclasses.replace(g, axis=axis)
    if size is not None:
        if not hasattr(g, "size"):
            raise FmtlabError(f"{key}: granularity {g} has no size to override")
        g = dataclasses.replace(g, size=size)
    spec["granularity"] = g
    spec.setdefault("name", key if not overrides and axis is None and size is None else None)
    return Quantizer(**spec)
