"""A key/value-cache prefix: tokens whose keys and values sit in front of every sequence.

:class:`KVPrefix` holds, per attention layer, the keys and values [1, kv_heads, P, head_dim]
that the *float* model computed for P prefix tokens (or tuned ones, see
:func:`fmtlab.methods.cushion.tune_prefix`). Attached to a model (:func:`attach_kv_prefix`, or the
``kv_prefix=`` argument of ``record``, ``quantize_model``, ``calibrate`` and
``evaluate_perplexity``), every forward pass of token ids [B, T] runs as if the P prefix tokens
came first: the cache is pre-filled with the prefix (expanded to the batch), an ``attention_mask``
of T columns gets P leading ones, explicit ``position_ids`` / ``cache_position`` are shifted by P
(rotary models then place the sequence at positions P..P+T-1, exactly as when the prefix tokens
are fed as text). The outputs cover the T sequence tokens only: the prefix is never scored, and
its activations never pass through the model's (possibly quantized) Linear layers again.

Needs a transformers causal LM with a ``DynamicCache`` (Llama, Mistral, Qwen, GPT-2, ...). A
forward that already carries a non-empty cache is left alone. ``generate`` is not supported (its
attention mask, grown step by step, does not count the prefix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Any, Iterator, Sequence

import torch

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.devices import model_device

__all__ = ["KVPrefix", "attach_kv_prefix", "kv_prefix_attached", "kv_prefix_of", "cache_kwarg", "layer_kv"]

_ATTR = "fmtlab_kv_prefix"


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward keyword of the model's KV cache: ``"cache"`` (transformers >= 5.x) or
    ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise FmtlabError(f"{type(model).__name__}.forward takes no KV cache (cache / past_key_values): "
                      "a KV prefix needs a transformers causal LM")


def _cache_of(out: Any):
    for key in ("cache", "past_key_values"):
        c = getattr(out, key, None)
        if c is not None:
            return c
    raise FmtlabError("the model returned no KV cache (use_cache=True gave none)")


def layer_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of a transformers cache: 5.x (``layers``), 4.x (``key_cache``) or a
    legacy tuple of (key, value) pairs."""
    if hasattr(cache, "layers"):
        return [(lay.keys, lay.values) for lay in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    if isinstance(cache, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) >= 2 for p in cache):
        return [(p[0], p[1]) for p in cache]  # legacy tuple of (key, value) per layer
    raise FmtlabError(f"not a transformers KV cache (no .layers / .key_cache, not a tuple of (key, value) "
                      f"pairs): {type(cache).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class KVPrefix:
    """P prefix tokens and their per-layer keys / values, each [1, kv_heads, P, head_dim].

    ``tuned``: the keys/values were changed after the float forward (they are then no longer
    the float model's cache of ``tokens``).
    """

    tokens: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    tuned: bool = False

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.values):
            raise FmtlabError(f"a KV prefix needs one key and one value tensor per layer, got "
                              f"{len(self.keys)} keys and {len(self.values)} values")
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k.dim() != 4 or v.dim() != 4 or k.shape[0] != 1 or k.shape[2] != len(self.tokens) \
                    or v.shape[:3] != k.shape[:3]:
                raise FmtlabError(f"layer {i}: prefix keys/values must be [1, heads, {len(self.tokens)}, dim], "
                                  f"got {tuple(k.shape)} / {tuple(v.shape)}")

    @property
    def length(self) -> int:
        return len(self.tokens)

    @classmethod
    @torch.no_grad()
    def from_tokens(cls, model: torch.nn.Module, tokens: Sequence[int]) -> "KVPrefix":
        """The float model's keys/values of ``tokens`` (run once, eval mode, no prefix attached)."""
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            raise FmtlabError("a KV prefix needs at least one token")
        if kv_prefix_of(model) is not None:
            raise FmtlabError("the model already has a KV prefix attached; compute a prefix on the bare model")
        was = model.training
        model.eval()
        try:
            ids = torch.tensor([tokens], dtype=torch.long, device=model_device(model))
            out = model(input_ids=ids, use_cache=True)
        finally:
            model.train(was)
        kv = layer_kv(_cache_of(out))
        return cls(tokens, tuple(k.detach().clone() for k, _ in kv), tuple(v.detach().clone() for _, v in kv))

    def with_kv(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> "KVPrefix":
        """The same tokens with other (e.g. tuned) keys/values; ``tuned=True``."""
        return KVPrefix(self.tokens, tuple(k.detach().clone() for k in keys),
                        tuple(v.detach().clone() for v in values), tuned=True)

    def cache(self, model: torch.nn.Module, batch: int, keys: Sequence[torch.Tensor] | None = None,
              values: Sequence[torch.Tensor] | None = None):
        """A fresh ``DynamicCache`` holding the prefix for ``batch`` sequences (on the model's
        device and dtype). ``keys``/``values`` replace the stored tensors (the tuning loop passes
        its parameters, so gradients flow into them)."""
        from transformers import DynamicCache

        keys = self.keys if keys is None else keys
        values = self.values if values is None else values
        n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if isinstance(n_layers, int) and n_layers != len(keys):
            raise FmtlabError(f"the KV prefix has {len(keys)} layers, the model {n_layers}")
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        dev = model_device(model)
        try:
            cache = DynamicCache(config=getattr(model, "config", None))
        except TypeError:  # older transformers
            cache = DynamicCache()
        fill(cache, keys, values, batch, dev, dtype)
        return cache


def fill(cache, keys, values, batch: int, device, dtype) -> None:
    """Append the prefix keys/values (expanded to ``batch``) to an empty cache, layer by layer.
    A cache in a number format (:mod:`fmtlab.pytorch.kv_cache`) stores them unquantized: the
    prefix entries stay as the float model computed them."""
    update = getattr(cache, "fmtlab_float_update", None) or cache.update
    for i, (k, v) in enumerate(zip(keys, values)):
        update(k.to(device, dtype).expand(batch, -1, -1, -1).contiguous(),
                     v.to(device, dtype).expand(batch, -1, -1, -1).contiguous(), i)


def kv_prefix_of(model: torch.nn.Module) -> KVPrefix | None:
    """The KV prefix attached to ``model`` (None when there is none)."""
    return getattr(model, _ATTR, None)


class _Handle:
    def __init__(self, model: torch.nn.Module, hook):
        self.model, self.hook = model, hook

    def remove(self) -> None:
        self.hook.remove()
        if _ATTR in self.model.__dict__:
            del self.model.__dict__[_ATTR]


def attach_kv_prefix(model: torch.nn.Module, prefix: KVPrefix) -> _Handle:
    """Run every later forward of ``model`` behind ``prefix`` (see the module doc); returns a
    handle whose ``remove()`` detaches it. FmtlabError if a prefix is already attached."""
    if not isinstance(prefix, KVPrefix):
        raise FmtlabError(f"kv_prefix must be a KVPrefix (fmtlab.methods.cushion.search_prefix), got "
                          f"{type(prefix).__name__}")
    if kv_prefix_of(model) is not None:
        raise FmtlabError("the model already has a KV prefix attached (quantize_model(kv_prefix=...) or "
                          "an enclosing kv_prefix=); pass it once")
    key = cache_kwarg(model)
    P = prefix.length

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise FmtlabError("a KV prefix needs the forward's token ids as a [batch, tokens] tensor")
        cache = kwargs.get(key, kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return None  # a later step of the same request: the cache already starts with the prefix
        kwargs = dict(kwargs)
        kwargs.pop("past_key_values", None)
        p = next(iter(module.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        if cache is None:
            cache = prefix.cache(module, ids.shape[0])
        else:
            fill(cache, prefix.keys, prefix.values, ids.shape[0], ids.device, dtype)
        kwargs[key] = cache
        kwargs["use_cache"] = True
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == ids.shape[1]:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], P), mask], dim=1)
        for pos in ("position_ids", "cache_position"):
            if isinstance(kwargs.get(pos), torch.Tensor):
                kwargs[pos] = kwargs[pos] + P
        return args, kwargs

    handle = _Handle(model, model.register_forward_pre_hook(pre, with_kwargs=True))
    model.__dict__[_ATTR] = prefix
    return handle


@contextlib.contextmanager
def kv_prefix_attached(model: torch.nn.Module, prefix: KVPrefix | None) -> Iterator[torch.nn.Module]:
    """``with kv_prefix_attached(model, prefix):`` every forward inside runs behind ``prefix``
    (no-op for None)."""
    if prefix is None:
        yield model
        return
    h = attach_kv_prefix(model, prefix)
    try:
        yield model
    finally:
        h.remove()
