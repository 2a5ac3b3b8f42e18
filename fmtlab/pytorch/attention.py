"""The attention matmuls in a number format: Q, K of Q·Kᵀ and P (after softmax), V of P·V.

``quantize_model(model, ..., attention=SPEC)`` (or :func:`attach_attention`) runs every attention
layer of a transformers model through :func:`quantized_attention`, registered as the attention
implementation ``"fmtlab_quant"`` (``transformers.AttentionInterface``, with the eager 4-D float
mask). It computes, per layer, exactly the eager attention of transformers

    S = Q_q(Q) Q_k(K)ᵀ · scaling  [softcap]  + mask;   P = softmax(S) (float32);   O = Q_p(P) Q_v(V)

(K and V after ``repeat_kv`` for grouped-query attention; K after RoPE, from the cache if there is
one). The identity spec gives the logits of the eager implementation bit for bit.

Scales (every tensor per sequence; "per head" = one scale per (sequence, head) over all its
tokens x head_dim, computed over every key a step reads, i.e. the whole cache in decoding):

============== ============================ ============================== ==============================
preset         Q and K (Q·Kᵀ)               P (P·V)                        V (P·V)
============== ============================ ============================== ==============================
fp8_fa3        E4M3, per head, absmax/448   E4M3, static scale 1/448       E4M3, per head, absmax/448
sage_int8_fp8  INT8 per token (row over     E4M3, static scale 1/448       E4M3 per channel (per head and
               head_dim); K smoothed: its                                  head_dim channel, over tokens)
               per-head mean over tokens
               subtracted first
mxfp8          MXFP8 E4M3, 32-blocks along  MXFP8 E4M3, 32-blocks along    MXFP8 E4M3, 32-blocks along
               head_dim (E8M0 scales)       the keys (zero-padded)         the keys (zero-padded)
none           -                            -                              -
============== ============================ ============================== ==============================

Sources (what they state; the rest is our choice, stated): FlashAttention-3 (Shah et al., 2024)
runs Q·Kᵀ and P·V in FP8 E4M3 with per-tensor (here per-head) descaling factors; SageAttention
(Zhang et al., ICLR 2025) quantizes Q and K to INT8 after smoothing K by subtracting its mean over
tokens (softmax is invariant to it: each query's scores shift by one constant) and SageAttention2
runs P·V in FP8 with V per channel. The static P scale 1/448 (P <= 1 maps onto E4M3's range) is
this module's choice. A custom spec is an :class:`AttentionSpec` of four quantizer specs and the
granularity of each ("head", "token", "channel", or "block" for a block format's own layout).
Needs transformers with ``AttentionInterface`` (>= 4.51: 4.48 - 4.50 have none). Tested (tiny random
models): Llama and Qwen2 with 4.51.3, 4.53.0 and 5.24.0; Gemma 3 with 4.53.0 and 5.24.0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.formats.quantspec import IDENTITY_NAMES
from fmtlab.pytorch.quantizers import TorchQuantizer
from fmtlab.sim.attention_specs import ATTENTION_GRANS as _GRANS
from fmtlab.sim.attention_specs import ATTENTION_PRESETS as _PRESET_NAMES
from fmtlab.sim.attention_specs import attention_preset

__all__ = ["AttentionSpec", "ATTENTION_PRESETS", "parse_attention_spec", "attach_attention",
           "quantized_attention", "quantize_qk", "quantize_pv", "smooth_keys", "IMPLEMENTATION", "TAP"]

IMPLEMENTATION = "fmtlab_quant"
_ATTR = "fmtlab_attention"
#: module attribute: a callable ``tap(module, query, key, value, probs)`` that sees every
#: attention call's Q (after RoPE), K and V (after RoPE, before repeat_kv) and P (float), e.g.
#: :func:`fmtlab.models.record.record` with ``qkv=True``
TAP = "fmtlab_attention_tap"


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Quantizers of Q, K, P, V (TorchQuantizer or None) and where their scales live:
    ``(q, k, p, v)`` granularities from "head", "token", "channel", "block", "static"
    (see the module docstring); ``smooth_k``: subtract K's per-head mean over tokens first."""

    q: TorchQuantizer | None = None
    k: TorchQuantizer | None = None
    p: TorchQuantizer | None = None
    v: TorchQuantizer | None = None
    grans: tuple[str, str, str, str] = ("head", "head", "static", "head")
    smooth_k: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for g in self.grans:
            if g not in _GRANS:
                raise FmtlabError(f"attention granularity must be one of {_GRANS}, got {g!r}")

    @property
    def identity(self) -> bool:
        return all(x is None for x in (self.q, self.k, self.p, self.v))


def _presets() -> dict[str, AttentionSpec]:
    """The presets, built from the numpy quantizers of :func:`fmtlab.sim.attention_specs.attention_preset`
    (one definition for this plug-in and the torch-free replay of recorded attention)."""
    out = {}
    for name in _PRESET_NAMES:
        a = attention_preset(name)
        t = [None if x is None else TorchQuantizer(x) for x in (a.q, a.k, a.p, a.v)]
        out[name] = AttentionSpec(*t, a.grans, a.smooth_k, a.name)
    return out


#: preset names (see the module docstring's table)
ATTENTION_PRESETS = _PRESET_NAMES


def parse_attention_spec(spec: Any) -> AttentionSpec | None:
    """An :class:`AttentionSpec` from a preset name or itself; None for None."""
    if spec is None or isinstance(spec, AttentionSpec):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in IDENTITY_NAMES:
            key = "none"
        presets = _presets()
        if key in presets:
            return presets[key]
    raise FmtlabError(f"attention spec must be one of {ATTENTION_PRESETS} or an AttentionSpec, got {spec!r}")


def _pad_last(x: torch.Tensor, mult: int) -> tuple[torch.Tensor, int]:
    n = x.shape[-1]
    pad = (-n) % mult
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x, n


def _quant(q: TorchQuantizer | None, x: torch.Tensor, gran: str, axis_last: bool = True) -> torch.Tensor:
    """Fake-quantize x [B, H, T, D]: "head" one scale per [T, D]; "token" per row of D; "channel"
    per column (over T); "block" blocks along D (the reduction axis); "static" as given."""
    if q is None:
        return x
    B, H, T, D = x.shape
    if gran == "head":
        return q(x.reshape(B * H, T * D)).reshape(x.shape)
    if gran in ("token", "static"):
        return q(x.reshape(-1, D)).reshape(x.shape)
    if gran == "channel":
        return q(x.transpose(2, 3).reshape(-1, T)).reshape(B, H, D, T).transpose(2, 3)
    size = getattr(q.granularity, "size", 1)
    xp, n = _pad_last(x.reshape(-1, D), size)
    return q(xp)[:, :n].reshape(x.shape)


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n, t, d).reshape(b, h * n, t, d)


def smooth_keys(k: torch.Tensor) -> torch.Tensor:
    """SageAttention's smoothing: K minus its per-head mean over tokens (axis 2), the mean summed
    in float64 and rounded to K's dtype (so the numpy replay, which does the same, agrees bit for bit
    except where the two float64 sums round to different neighbours)."""
    return k - k.to(torch.float64).mean(dim=2, keepdim=True).to(k.dtype)


def quantize_qk(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of Q·Kᵀ as ``spec`` quantizes them (q [B, H, T, D]; k after repeat_kv)."""
    if spec.smooth_k:
        k = smooth_keys(k)
    return _quant(spec.q, q, spec.grans[0]), _quant(spec.k, k, spec.grans[1])


def quantize_pv(spec: AttentionSpec, p: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of P·V as ``spec`` quantizes them (p [B, H, T, S]; v after repeat_kv)."""
    if spec.p is not None:
        if spec.grans[2] == "block":  # blocks along the keys: P's reduction axis in P·V
            size = spec.p.granularity.size
            pp, n = _pad_last(p.reshape(-1, p.shape[-1]), size)
            p = spec.p(pp)[:, :n].reshape(p.shape)
        else:
            p = _quant(spec.p, p, spec.grans[2])
    if spec.v is not None:
        if spec.grans[3] == "block":  # blocks along the keys: V's reduction axis in P·V
            vt = v.transpose(2, 3)
            vt = _quant(spec.v, vt.contiguous(), "block")
            v = vt.transpose(2, 3)
        else:
            v = _quant(spec.v, v, spec.grans[3])
    return p, v


def quantized_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformers attention function of ``"fmtlab_quant"`` (see the module docstring)."""
    spec: AttentionSpec | None = getattr(module, _ATTR, None)
    if scaling is None:
        scaling = module.head_dim ** -0.5
    groups = getattr(module, "num_key_value_groups", 1)
    k = _repeat_kv(key, groups)
    v = _repeat_kv(value, groups)
    q = query
    quant = spec is not None and not spec.identity
    if quant:
        q, k = quantize_qk(spec, q, k)
    w = torch.matmul(q, k.transpose(2, 3)) * scaling
    if softcap is not None:
        w = w / softcap
        w = torch.tanh(w)
        w = w * softcap
    if attention_mask is not None:  # transformers < 4.53 may pass a mask wider than the keys
        w = w + attention_mask[:, :, :, : k.shape[-2]]
    p = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    p = nn.functional.dropout(p, p=dropout, training=module.training)
    tap = module.__dict__.get(TAP)
    if tap is not None:
        tap(module, query, key, value, p, scaling=scaling, softcap=softcap, **kwargs)
    if quant:
        p, v = quantize_pv(spec, p, v)
    out = torch.matmul(p, v)
    return out.transpose(1, 2).contiguous(), p


def _register() -> None:
    try:
        from transformers import AttentionInterface  # lazy: transformers is optional for fmtlab.pytorch
    except ImportError as exc:
        raise FmtlabError("attention= needs transformers >= 4.51 (AttentionInterface)") from exc
    AttentionInterface.register(IMPLEMENTATION, quantized_attention)
    try:  # transformers >= 4.53 builds masks per implementation; older ones give any non-SDPA /
        # flash / flex implementation the eager 4-D float mask
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    except ImportError:
        return
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups") and hasattr(m, "config")]


def attach_attention(model: nn.Module, spec: Any) -> AttentionSpec | None:
    """Run ``model``'s attention layers through :func:`quantized_attention` with ``spec``
    (replacing an earlier one; None restores the previous implementation). Returns the spec."""
    aspec = parse_attention_spec(spec)
    mods = _attention_modules(model)
    prev = model.__dict__.get(_ATTR + "_prev")
    if aspec is None:
        for m in mods:
            m.__dict__.pop(_ATTR, None)
        if prev is not None:
            for cfg, impl in prev:
                cfg._attn_implementation = impl
            model.__dict__.pop(_ATTR + "_prev", None)
        return None
    if not mods:
        raise FmtlabError(f"{type(model).__name__} has no transformers attention layers (layer_idx, "
                          "num_key_value_groups) to run in a format")
    _register()
    if prev is None:
        cfgs = {id(m.config): m.config for m in mods}
        top = getattr(model, "config", None)
        if top is not None:
            cfgs[id(top)] = top
        prev = [(c, c._attn_implementation) for c in cfgs.values()]
        model.__dict__[_ATTR + "_prev"] = prev
    for cfg, _ in prev:
        cfg._attn_implementation = IMPLEMENTATION
    for m in mods:
        m.__dict__[_ATTR] = aspec
    return aspec
