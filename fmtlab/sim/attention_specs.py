"""KV-cache and attention specs as numpy quantizers: the one definition both sides use.

The PyTorch plug-in (:mod:`fmtlab.pytorch.kv_cache`, :mod:`fmtlab.pytorch.attention`) wraps the
quantizers built here in ``TorchQuantizer`` (which reproduces a numpy ``Quantizer`` bit for bit),
and the torch-free replay of recorded attention tensors (:mod:`fmtlab.sim.attention_replay`) uses
them as they are, so both quantize with the same spec.

KV spec strings (:func:`kv_quantizers`): ``"<quantizer>"`` for K and V (any
:func:`fmtlab.formats.parse_quantizer` name; a bare format name is per token), ``"k=<q>,v=<q>"``,
a preset of :data:`KV_PRESETS`, an optional ``"@static"`` / ``"@dynamic"`` suffix, ``"none"``.
A ``*_per_channel`` quantizer means per head_dim channel (``PerChannel(1)`` of the [tokens,
heads x head_dim] matrix). Attention presets (:func:`attention_preset`): see
:mod:`fmtlab.pytorch.attention` for the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.formats import (Format, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer, Rounding,
                            Static, get_format, get_quantizer, parse_quantizer)
from fmtlab.formats.quantspec import IDENTITY_NAMES

__all__ = ["KV_PRESETS", "ATTENTION_PRESETS", "ATTENTION_GRANS", "AttentionQuantizers", "kv_quantizer",
           "kv_quantizers", "kv_granularity", "attention_preset"]

#: named K/V pairs: KIVI (Liu et al. 2024): keys per channel, values per token, asymmetric min/max
KV_PRESETS: dict[str, tuple[str, str]] = {
    "kivi4": ("int4_per_channel_asym", "int4_per_token_asym"),
    "kivi2": ("int2_per_channel_asym", "int2_per_token_asym"),
}

#: attention preset names (the table in :mod:`fmtlab.pytorch.attention`)
ATTENTION_PRESETS = ("fp8_fa3", "sage_int8_fp8", "mxfp8", "none")
#: where an attention operand's scales live
ATTENTION_GRANS = ("head", "token", "channel", "block", "static")


def _numpy_quantizer(spec: Any) -> Quantizer | None:
    """A numpy Quantizer of a spec as ``fmtlab.pytorch.specs.resolve(spec, "activations")`` reads
    it (a bare format name: absmax per token); None for the identity."""
    if spec is None:
        return None
    if isinstance(spec, Quantizer):
        return spec
    inner = getattr(spec, "quantizer", None)  # a TorchQuantizer (duck-typed: no torch import here)
    if isinstance(inner, Quantizer):
        return inner
    if isinstance(spec, Format):
        return Quantizer(spec, PerToken(), name=f"{spec.name}_per_token")
    if not isinstance(spec, str):
        raise FmtlabError(f"a KV-cache / attention quantizer must be a quantizer spec, got {spec!r}")
    try:
        qs = parse_quantizer(spec)
    except FmtlabError:
        if "(" in spec:
            raise
        fmt = get_format(spec)
        return Quantizer(fmt, PerToken(), name=f"{fmt.name}_per_token")
    if qs.identity:
        return None
    if qs.method != "scaled":
        raise FmtlabError(f"{spec!r} is a {qs.method} quantizer: the KV cache and attention take scaled quantizers")
    return qs.build(name=None if "(" in spec else spec.strip().lower())


def kv_granularity(q: Quantizer) -> str:
    """"token", "tensor" or "channel" (see :mod:`fmtlab.pytorch.kv_cache`); FmtlabError for a
    quantizer with no KV meaning."""
    g = q.granularity
    if isinstance(g, PerToken) or (isinstance(g, (PerGroup, PerBlock)) and g.axis in (1, -1)):
        return "token"
    if isinstance(g, PerTensor):
        return "tensor"
    if isinstance(g, PerChannel):
        return "channel"
    raise FmtlabError(f"{q.name}: granularity {g} has no KV-cache meaning (use per_token, per_tensor, "
                      "per_channel, groups or blocks along head_dim)")


def kv_quantizer(spec: Any) -> Quantizer | None:
    """The numpy quantizer of one KV-cache tensor (K or V), None for none."""
    q = _numpy_quantizer(spec)
    if q is None:
        return None
    if isinstance(q.granularity, PerChannel) and q.granularity.axis not in (1, -1):
        q = dataclasses.replace(q, granularity=PerChannel(1))  # channels = head_dim features
    if q.rounding is Rounding.STOCHASTIC:
        raise FmtlabError(f"{q.name}: stochastic rounding is not supported for the KV cache")
    kv_granularity(q)
    return q


def kv_quantizers(spec: str) -> tuple[Quantizer | None, Quantizer | None, str, str]:
    """(keys, values, scales "dynamic" | "static", name) of a KV spec string (module docstring)."""
    if not isinstance(spec, str):
        raise FmtlabError(f"a KV-cache spec must be a string here, got {spec!r}")
    text = spec.strip()
    scales = "dynamic"
    if "@" in text:
        text, _, mode = text.rpartition("@")
        scales = mode.strip().lower()
        if scales not in ("dynamic", "static"):
            raise FmtlabError(f"KV spec {spec!r}: the suffix must be @dynamic or @static")
    low = text.lower()
    tag = "@static" if scales == "static" else ""
    if low in KV_PRESETS:
        k, v = KV_PRESETS[low]
        return kv_quantizer(k), kv_quantizer(v), scales, low + tag
    if low.startswith("k=") and ",v=" in low:
        k, _, v = text[2:].partition(",v=")
        kq, vq = kv_quantizer(k.strip()), kv_quantizer(v.strip())
    elif low in IDENTITY_NAMES:
        return None, None, scales, "none"
    else:
        kq = vq = kv_quantizer(text)
    kn = "none" if kq is None else kq.name
    vn = "none" if vq is None else vq.name
    return kq, vq, scales, (kn if kn == vn else f"k={kn},v={vn}") + tag


@dataclasses.dataclass(frozen=True)
class AttentionQuantizers:
    """Numpy quantizers of Q, K, P, V (None: float), their granularities (from
    :data:`ATTENTION_GRANS`) and whether K is smoothed first (SageAttention)."""

    q: Quantizer | None = None
    k: Quantizer | None = None
    p: Quantizer | None = None
    v: Quantizer | None = None
    grans: tuple[str, str, str, str] = ("head", "head", "static", "head")
    smooth_k: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for g in self.grans:
            if g not in ATTENTION_GRANS:
                raise FmtlabError(f"attention granularity must be one of {ATTENTION_GRANS}, got {g!r}")

    @property
    def identity(self) -> bool:
        return all(x is None for x in (self.q, self.k, self.p, self.v))


def _rows(fmt: str) -> Quantizer:
    """A per-row quantizer of a format (rows chosen by the caller's reshape)."""
    return parse_quantizer(f"{fmt}_per_token").build(name=f"{fmt}_per_token")


def _p_static(fmt: str = "fp8_e4m3") -> Quantizer:
    """P <= 1 onto E4M3's range: the static scale 1/448 (this module's choice)."""
    return Quantizer(fmt, PerTensor(), scale_rule=Static(1.0 / 448.0), name=f"{fmt}_static_1/448")


def attention_preset(name: str) -> AttentionQuantizers:
    """The numpy quantizers of an attention preset (:data:`ATTENTION_PRESETS`)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in IDENTITY_NAMES:
        key = "none"
    if key == "fp8_fa3":
        e4m3 = _rows("fp8_e4m3")
        return AttentionQuantizers(e4m3, e4m3, _p_static(), e4m3, ("head", "head", "static", "head"), False, key)
    if key == "sage_int8_fp8":
        return AttentionQuantizers(_rows("int8"), _rows("int8"), _p_static(), _rows("fp8_e4m3"),
                                   ("token", "token", "static", "channel"), True, key)
    if key == "mxfp8":
        mx = get_quantizer("mxfp8_e4m3")
        return AttentionQuantizers(mx, mx, mx, mx, ("block",) * 4, False, key)
    if key == "none":
        return AttentionQuantizers(name="none")
    raise FmtlabError(f"attention spec must be one of {ATTENTION_PRESETS}, got {name!r}")
