"""``+attn``: a config measured with the attention matmuls in a number format (a
:mod:`~fmtlab.methods.variants` variant).

``w8a8_int_token+attn(spec=fp8_fa3)`` is the replay config ``w8a8_int_token`` measured on a model
whose Q·Kᵀ and P·V run with quantized operands (:mod:`fmtlab.pytorch.attention`; ``spec`` is a
preset: ``fp8_fa3`` (the default), ``sage_int8_fp8``, ``mxfp8``). All scales are dynamic or fixed
(P's 1/448), so the fit is empty. Apply: a copy of the model with the attention format attached
(the caller's model is unchanged).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler

__all__ = ["AttentionVariant", "AttentionHandler"]


@dataclasses.dataclass(frozen=True)
class AttentionVariant(ModelVariant):
    """The attention preset (:data:`fmtlab.pytorch.attention.ATTENTION_PRESETS`)."""

    name = "attn"
    spec: str = "fp8_fa3"

    def __post_init__(self) -> None:
        from fmtlab.pytorch.attention import parse_attention_spec  # lazy: imports torch

        parse_attention_spec(self.spec)


@register_variant_handler(AttentionVariant)
class AttentionHandler(VariantHandler):
    """Fit: nothing. Apply: a copy of the model with the attention format attached."""

    def fit(self, variant: AttentionVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        return None, f"attention {variant.spec}: dynamic / fixed scales (nothing to fit)"

    def apply(self, variant: AttentionVariant, state: Any, model: Any) -> Applied:
        from fmtlab.pytorch import quantize_model  # lazy: imports torch

        qm, _ = quantize_model(model, attention=variant.spec, skip=("*",))
        return Applied(qm, text_info={"attention": variant.spec})

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = f"Q, K, P, V of both attention matmuls as {fitted.variant.spec}"
        return row
