"""The KV cache in a number format: every key (after RoPE) and value is stored fake-quantized.

``quantize_model(model, ..., kv_cache=SPEC)`` (or :func:`attach_kv_cache`) makes every attention
read see only quantized keys and values, in one prefill and in token-by-token decoding alike:
the transformers ``Cache.update(key_states, value_states, layer_idx, ...)`` of the cache a forward
runs with is wrapped (on that cache instance), so the new keys / values are quantized *before*
they are stored and returned to the attention. A forward without a cache gets a fresh
``DynamicCache`` (``use_cache=True``), so a plain prefill (perplexity) goes through the same path.
Keys arrive after RoPE (the model applies the rotary embedding before ``cache.update``; Gemma 3
also after its k-norm). Works for Llama, Qwen2, Gemma 3 (sliding-window layers included) and any
model that writes its cache through ``Cache.update``. Tested (tiny random models, the KV-cache
tests): Llama and Qwen2 with transformers 4.45.0, 4.48.0, 4.51.3, 4.53.0 and 5.24.0; Gemma 3 (added
in 4.50) with 4.53.0 and 5.24.0: with 4.51.3 its token-by-token decoding does not reproduce the
prefill (sliding-window layers in a ``DynamicCache``), so Gemma 3 needs transformers >= 4.53.

Tensors are [batch, kv_heads, tokens, head_dim]; every batch index is one sequence (request).
Granularity comes from the quantizer (:class:`KVCacheSpec`):

- **per token** (``PerToken``; groups ``g<N>`` and MX / NVFP4 blocks along head_dim; a
  quantizer whose scales span one row of head_dim): one scale per (sequence, layer, head, token)
  (per group / block of it). Scales depend on the row only, so a prefill and step-by-step
  decoding store the same bits. NVFP4's FP32 tensor scale is computed per sequence and write.
- **per tensor** (``PerTensor``): one scale per (sequence, layer, K or V).
- **per channel** (``PerChannel``, keys per channel as KIVI): one scale per (sequence, layer,
  head, head_dim channel), over the tokens.

Per-tensor and per-channel scales are either *dynamic*: computed over the sequence's first write
(its prefill, [heads x tokens, head_dim] / [tokens, heads x head_dim]) and frozen for its later
tokens, which saturate at that range (an engine cannot rescale stored entries); or *static*
(``scales="static"``): one scale per (layer, K or V) (per channel: per head and channel),
calibrated by :func:`fmtlab.pytorch.calibrate` on the calibration split exactly as static
activation scales are (:mod:`fmtlab.pytorch.activations`: absmax max over sequences, percentile /
MSE mean). KIVI's token groups and float residual window are not modelled: its keys here get one
per-channel scale over the whole prefill.

Entries written before the quantized cache sees the cache (a CushionCache KV prefix,
:mod:`fmtlab.pytorch.kv_prefix`, written through ``fmtlab_float_update``) stay as the float model
computed them. Padding is not masked out of per-tensor / per-channel statistics.

Spec strings (:func:`parse_kv_spec`): ``"<quantizer>"`` for K and V (any
``fmtlab.formats.get_quantizer`` name: ``int8_sym_per_token``, ``int4_sym_per_token``,
``int4_per_token_asym``, ``fp8_e4m3_per_tensor``, ``int8_sym_per_tensor``, ``int4_g32``,
``mxfp8``, ``nvfp4``; ``*_per_channel`` means per head_dim channel here), ``"k=<q>,v=<q>"``, a named
preset (:data:`KV_PRESETS`: ``kivi4``, ``kivi2``), an optional ``"@static"`` suffix; ``"none"`` is the
identity spec (the cache path runs, nothing is quantized).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping

import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.formats import PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Rounding
from fmtlab.pytorch.activations import ActivationScales, StaticActivation
from fmtlab.pytorch.autograd import apply_fake_quant
from fmtlab.pytorch.kv_prefix import cache_kwarg
from fmtlab.pytorch.quantizers import TorchQuantizer
from fmtlab.formats.quantspec import IDENTITY_NAMES
from fmtlab.pytorch.specs import resolve, spec_name
from fmtlab.sim.attention_specs import KV_PRESETS  # the KIVI pairs (shared with the numpy replay)

__all__ = ["KVCacheSpec", "KVGranularity", "KVCacheQuantizer", "KV_PRESETS", "parse_kv_spec",
           "attach_kv_cache", "kv_cache_of", "install_on_cache"]

_ATTR = "fmtlab_kv_cache"



class KVGranularity(enum.Enum):
    """Where a K/V quantizer's scales live (see the module docstring)."""

    TOKEN = "token"
    TENSOR = "tensor"
    CHANNEL = "channel"


def kv_granularity(q: TorchQuantizer) -> KVGranularity:
    """The KV granularity of a quantizer (FmtlabError for one with no KV meaning)."""
    g = q.granularity
    if isinstance(g, PerToken) or (isinstance(g, (PerGroup, PerBlock)) and g.axis in (1, -1)):
        return KVGranularity.TOKEN
    if isinstance(g, PerTensor):
        return KVGranularity.TENSOR
    if isinstance(g, PerChannel):
        return KVGranularity.CHANNEL
    raise FmtlabError(f"{q.name}: granularity {g} has no KV-cache meaning (use per_token, per_tensor, "
                      "per_channel, groups or blocks along head_dim)")


def _kv_quantizer(spec: Any) -> TorchQuantizer | None:
    q = resolve(spec, "activations")
    if q is None:
        return None
    if not isinstance(q, TorchQuantizer):
        raise FmtlabError(f"a KV-cache quantizer must be an fmtlab quantizer spec, got {spec!r}")
    if isinstance(q.granularity, PerChannel) and q.granularity.axis not in (1, -1):
        q = q.replace(granularity=PerChannel(1))  # channels = head_dim features ([tokens, H*D] matrices)
    if q.rounding is Rounding.STOCHASTIC:
        raise FmtlabError(f"{q.name}: stochastic rounding is not supported for the KV cache")
    kv_granularity(q)
    return q


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """Key and value quantizers (TorchQuantizer or None) and how per-tensor / per-channel scales
    are obtained (``ActivationScales.DYNAMIC`` or ``STATIC``)."""

    keys: TorchQuantizer | None
    values: TorchQuantizer | None
    scales: ActivationScales = ActivationScales.DYNAMIC
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", ActivationScales.parse(self.scales))
        if self.scales is ActivationScales.STATIC:
            for role, q in (("keys", self.keys), ("values", self.values)):
                if q is not None and kv_granularity(q) is KVGranularity.TOKEN:
                    raise FmtlabError(f"static KV scales are per tensor or per channel; {role} use "
                                      f"{q.name}, whose scales are per token (dynamic by construction)")
        if not self.name:
            k, v = spec_name(self.keys), spec_name(self.values)
            n = k if k == v else f"k={k},v={v}"
            object.__setattr__(self, "name", n + ("@static" if self.scales is ActivationScales.STATIC else ""))

    @property
    def identity(self) -> bool:
        return self.keys is None and self.values is None


def parse_kv_spec(spec: Any) -> KVCacheSpec | None:
    """A :class:`KVCacheSpec` from a spec (see the module docstring), None for None."""
    if spec is None:
        return None
    if isinstance(spec, KVCacheSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"keys", "values", "scales"}
        if unknown:
            raise FmtlabError(f"kv_cache dict keys are keys/values/scales, got {sorted(unknown)}")
        return KVCacheSpec(_kv_quantizer(spec.get("keys")), _kv_quantizer(spec.get("values")),
                           spec.get("scales", ActivationScales.DYNAMIC))
    if not isinstance(spec, str):
        q = _kv_quantizer(spec)
        return KVCacheSpec(q, q)
    text = spec.strip()
    scales = ActivationScales.DYNAMIC
    if "@" in text:
        text, _, mode = text.rpartition("@")
        scales = ActivationScales.parse(mode)
    low = text.lower()
    if low in KV_PRESETS:
        k, v = KV_PRESETS[low]
        return KVCacheSpec(_kv_quantizer(k), _kv_quantizer(v), scales,
                           low + ("@static" if scales is ActivationScales.STATIC else ""))
    if low.startswith("k=") and ",v=" in low:
        k, _, v = text[2:].partition(",v=")
        return KVCacheSpec(_kv_quantizer(k.strip()), _kv_quantizer(v.strip()), scales)
    if low in IDENTITY_NAMES:
        return KVCacheSpec(None, None, scales, "none")
    q = _kv_quantizer(text)
    return KVCacheSpec(q, q, scales)


def _model_dims(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    try:
        layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
        kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    except AttributeError:
        raise FmtlabError(f"{type(model).__name__} has no transformers config (num_hidden_layers, "
                          "num_attention_heads): a KV-cache format needs a transformers causal LM") from None
    return layers, kv, int(dim)


class KVCacheQuantizer(nn.Module):
    """The KV-cache quantization of one model: the spec, and for static scales one
    :class:`StaticActivation` per layer and K / V (``static[2 * layer + (0 keys | 1 values)]``,
    calibrated by :func:`fmtlab.pytorch.calibrate`)."""

    def __init__(self, spec: KVCacheSpec, n_layers: int, kv_heads: int, head_dim: int, grad: str = "ste"):
        super().__init__()
        self.spec = spec
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.grad = grad
        self.static = nn.ModuleList()
        if spec.scales is ActivationScales.STATIC:
            for i in range(n_layers):
                for role, q in (("keys", spec.keys), ("values", spec.values)):
                    if q is None:  # a float K or V: a slot that calibration does not observe
                        self.static.append(nn.Identity())
                        continue
                    feats = head_dim if kv_granularity(q) is KVGranularity.TENSOR else kv_heads * head_dim
                    self.static.append(StaticActivation(q, feats, f"kv_cache.layer{i}.{role}"))

    def extra_repr(self) -> str:
        return f"{self.spec.name}, {self.n_layers} layers x {self.kv_heads} kv heads x {self.head_dim}"

    def quantize(self, x: torch.Tensor, layer: int, role: str, frozen: dict) -> torch.Tensor:
        """Fake-quantize one write ``x`` [batch, kv_heads, tokens, head_dim] of ``layer``'s keys
        (role "keys") or values; ``frozen`` holds the cache's dynamic per-sequence scales."""
        q = self.spec.keys if role == "keys" else self.spec.values
        if q is None:
            return x
        if x.dim() != 4:
            raise FmtlabError(f"KV cache layer {layer}: {role} must be [batch, heads, tokens, head_dim], "
                              f"got {tuple(x.shape)}")
        B, H, T, D = x.shape
        gran = kv_granularity(q)
        if gran is KVGranularity.TOKEN:
            if _rows_only(q):
                return q(x.reshape(-1, D), grad=self.grad).reshape(x.shape)
            return torch.stack([q(s.reshape(-1, D), grad=self.grad).reshape(H, T, D) for s in x.unbind(0)])
        # per tensor: [B, H*T, D] (slots: 1); per channel: [B, T, H*D] (slots: H*D)
        seqs = x.reshape(B, H * T, D) if gran is KVGranularity.TENSOR else x.transpose(1, 2).reshape(B, T, H * D)
        if self.spec.scales is ActivationScales.STATIC:
            if len(self.static) <= 2 * layer + 1:
                raise FmtlabError(f"KV cache layer {layer}: the model has {self.n_layers} layers of static scales")
            out = self.static[2 * layer + (role != "keys")](seqs, grad=self.grad)
        else:
            key = (layer, role)
            if key not in frozen:  # the sequence's first write sets its scales
                frozen[key] = [q.compute_scales(s) for s in seqs.unbind(0)]
            sz = frozen[key]
            if len(sz) != B:
                raise FmtlabError(f"KV cache layer {layer}: the batch changed from {len(sz)} to {B} sequences "
                                  "within one cache")
            out = torch.stack([
                apply_fake_quant(s, lambda t, m, s_=s_, z_=z_: q.fake_quantize_with_mask(
                    t, need_mask=m, scales=s_, zero_points=z_), self.grad)
                for s, (s_, z_) in zip(seqs.unbind(0), sz)])
        if gran is KVGranularity.TENSOR:
            return out.reshape(B, H, T, D)
        return out.reshape(B, T, H, D).transpose(1, 2)


def _rows_only(q: TorchQuantizer) -> bool:
    g = q.granularity
    return not (isinstance(g, PerBlock) and g.tensor_scale)


def install_on_cache(cache: Any, kvq: KVCacheQuantizer) -> Any:
    """Wrap ``cache.update`` (on this instance) so new keys / values are quantized by ``kvq``
    before they are stored; entries already in the cache stay as they are. The unwrapped update
    stays reachable as ``cache.fmtlab_float_update`` (for entries that stay float, e.g. a KV
    prefix). Idempotent for the same ``kvq``; returns the cache."""
    if getattr(cache, "fmtlab_kv", None) is kvq:
        return cache
    base = getattr(cache, "fmtlab_float_update", None) or cache.update
    frozen: dict = {}

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        k = kvq.quantize(key_states, int(layer_idx), "keys", frozen)
        v = kvq.quantize(value_states, int(layer_idx), "values", frozen)
        return base(k, v, layer_idx, *args, **kwargs)

    cache.fmtlab_float_update = base
    cache.update = update
    cache.fmtlab_kv = kvq
    cache.fmtlab_kv_scales = frozen
    return cache


def _new_cache(model: nn.Module):
    from transformers import DynamicCache  # lazy: transformers is only needed for a model with a cache

    try:
        return DynamicCache(config=getattr(model, "config", None))
    except TypeError:  # older transformers
        return DynamicCache()


def _check_transformers(model: nn.Module) -> None:
    """FmtlabError for Gemma 3 with transformers < 4.53 (its sliding-window layers decode wrongly
    through the wrapped ``DynamicCache``: tested with 4.51.3)."""
    import transformers  # lazy: transformers is only needed for a model with a cache

    mtype = str(getattr(getattr(model, "config", None), "model_type", ""))
    try:
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    except ValueError:  # a development version string: assume recent
        return
    if mtype.startswith("gemma3") and (major, minor) < (4, 53):
        raise FmtlabError(f"a KV cache in a format for Gemma 3 needs transformers >= 4.53 (installed "
                          f"{transformers.__version__}: its sliding-window layers do not decode through the cache)")


def kv_cache_of(model: nn.Module) -> KVCacheQuantizer | None:
    """The KV-cache quantizer attached to ``model`` (None when there is none)."""
    return model.__dict__.get(_ATTR)


def attach_kv_cache(model: nn.Module, spec: Any, grad: str = "ste") -> KVCacheQuantizer | None:
    """Store ``model``'s KV cache in the format of ``spec`` (see the module docstring), replacing
    an earlier one; None detaches. Returns the :class:`KVCacheQuantizer` (registered as the
    submodule ``fmtlab_kv_cache_quant``, so static scales are calibrated and saved with it).

    One forward pre-hook (run before any other, e.g. a KV prefix's) gives every forward a cache
    whose ``update`` quantizes; it reads the quantizer from the model at call time, so a deep copy
    of the model carries its own."""
    hook_id = model.__dict__.pop(_ATTR + "_hook", None)
    if hook_id is not None:
        model._forward_pre_hooks.pop(hook_id, None)
        getattr(model, "_forward_pre_hooks_with_kwargs", {}).pop(hook_id, None)
    model.__dict__.pop(_ATTR, None)
    model._modules.pop("fmtlab_kv_cache_quant", None)
    kv = parse_kv_spec(spec)
    if kv is None:
        return None
    _check_transformers(model)
    key = cache_kwarg(model)
    kvq = KVCacheQuantizer(kv, *_model_dims(model), grad=grad)
    model.add_module("fmtlab_kv_cache_quant", kvq)

    def pre(module, args, kwargs):
        kvq_now = module.__dict__.get(_ATTR)
        if kvq_now is None:
            return None
        kwargs = dict(kwargs)
        cache = kwargs.get(key, kwargs.get("past_key_values"))
        if cache is None:
            cache = _new_cache(module)
        kwargs.pop("past_key_values", None)
        kwargs[key] = install_on_cache(cache, kvq_now)
        kwargs["use_cache"] = True
        return args, kwargs

    handle = model.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    model.__dict__[_ATTR] = kvq
    model.__dict__[_ATTR + "_hook"] = handle.id
    return kvq
