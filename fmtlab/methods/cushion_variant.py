"""``+cushion``: a config measured behind a CushionCache KV prefix (a :mod:`~fmtlab.methods.variants`
variant).

``w8a8_int_tensor_static+cushion`` is the replay config ``w8a8_int_tensor_static`` renamed; what
changes is the data. Fit: one greedy prefix search (:func:`fmtlab.methods.cushion.search_prefix`
on the calibration texts; the paper's threshold 0.5, 4 x 32 tokens, 64 candidates: the fields of
:class:`CushionVariant`, e.g. ``+cushion(n_candidates=8)``). Apply: the model is unchanged; traces
are recorded and perplexity scored behind the prefix (``kv_prefix=``). The prefix tokens are never
scored, recorded or quantized (their keys/values come from the float model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler

__all__ = ["CushionVariant", "CushionHandler"]


@dataclasses.dataclass(frozen=True)
class CushionVariant(ModelVariant):
    """CushionCache prefix search settings (:func:`fmtlab.methods.cushion.search_prefix`'s)."""

    name = "cushion"
    threshold: float = 0.5
    seq_len: int = 32
    n_sequences: int = 4
    n_candidates: int = 64


@register_variant_handler(CushionVariant)
class CushionHandler(VariantHandler):
    """Fit: the greedy prefix search on the calibration texts. Apply: record / score behind it."""

    def fit(self, variant: CushionVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        from fmtlab.methods.cushion import search_prefix  # lazy: imports torch

        log("CushionCache: greedy prefix search on the calibration texts")
        found = search_prefix(model, tokenizer, list(calib.texts), threshold=variant.threshold,
                              seq_len=variant.seq_len, n_sequences=variant.n_sequences,
                              n_candidates=variant.n_candidates)
        return found, (f"prefix {list(found.tokens)}: max |x| {found.baseline:.1f} -> {found.curve[-1]:.1f}")

    def apply(self, variant: CushionVariant, state: Any, model: Any) -> Applied:
        kv = state.kv_prefix
        return Applied(model, record_kw={"kv_prefix": kv}, perplexity_kw={"kv_prefix": kv},
                       text_info={"cushion": True})

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = f"{len(fitted.state.tokens)} prefix token(s) held in the KV cache of every sequence"
        return row
