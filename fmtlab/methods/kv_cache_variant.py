"""``+kv``: a config measured with the KV cache stored in a number format (a
:mod:`~fmtlab.methods.variants` variant).

``w8a8_int_token+kv(spec=int4_sym_per_token)`` is the replay config ``w8a8_int_token`` measured on
a model whose every key (after RoPE) and value is fake-quantized when written to the cache
(:mod:`fmtlab.pytorch.kv_cache`; ``spec`` is a KV spec name: ``int8_sym_per_token`` (the default),
``int4_sym_per_token``, ``int4_per_token_asym``, ``fp8_e4m3_per_tensor``, ``kivi4``, ``nvfp4``, or a
per-tensor / per-channel spec with ``@static``). Fit: for ``@static`` specs, the K / V scales are
calibrated on the calibration texts (``seq_len`` x ``n_sequences`` tokens,
:func:`fmtlab.pytorch.calibrate`); dynamic specs fit nothing. Apply: a copy of the model with the
KV format attached (the caller's model is unchanged); traces recorded behind it hold the Linear
inputs the quantized cache produces, and perplexity is scored through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler

__all__ = ["KVCacheVariant", "KVCacheHandler"]


@dataclasses.dataclass(frozen=True)
class KVCacheVariant(ModelVariant):
    """The KV-cache format (a :func:`fmtlab.pytorch.kv_cache.parse_kv_spec` name) and, for static
    scales, the calibration windows."""

    name = "kv"
    spec: str = "int8_sym_per_token"
    seq_len: int = 256
    n_sequences: int = 8

    def __post_init__(self) -> None:
        from fmtlab.pytorch.kv_cache import parse_kv_spec  # lazy: imports torch

        parse_kv_spec(self.spec)  # a bad spec fails when the config is parsed


@register_variant_handler(KVCacheVariant)
class KVCacheHandler(VariantHandler):
    """Fit: static K / V scales on the calibration texts (dynamic specs: nothing). Apply: a copy
    of the model with the KV format attached."""

    def check(self, variant: KVCacheVariant, model: Any) -> None:
        from fmtlab.pytorch.kv_cache import _model_dims  # lazy: imports torch

        _model_dims(model)

    def fit(self, variant: KVCacheVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        from fmtlab.pytorch import calibrate, quantize_model  # lazy: imports torch
        from fmtlab.pytorch.activations import ActivationScales
        from fmtlab.pytorch.kv_cache import kv_cache_of

        qm, _ = quantize_model(model, kv_cache=variant.spec, skip=("*",))
        kvq = kv_cache_of(qm)
        if kvq.spec.scales is not ActivationScales.STATIC:
            return qm, f"KV cache {kvq.spec.name}: dynamic scales (nothing to fit)"
        log(f"KV cache {kvq.spec.name}: calibrating static K / V scales on {variant.n_sequences} x "
            f"{variant.seq_len} calibration tokens")
        res = calibrate(qm, list(calib.texts), tokenizer, seq_len=variant.seq_len, n_sequences=variant.n_sequences)
        return qm, f"KV cache {kvq.spec.name}: {res.layers} static K / V scales over {res.sequences} x {res.seq_len} tokens"

    def apply(self, variant: KVCacheVariant, state: Any, model: Any) -> Applied:
        return Applied(state, text_info={"kv_cache": variant.spec})

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = f"every key and value stored as {fitted.variant.spec}"
        return row
