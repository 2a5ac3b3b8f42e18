"""``+fptquant``: a config measured on the FPTQuant-merged model (a :mod:`~fmtlab.methods.variants`
variant).

``w8a8_int_tensor_static+fptquant`` is the replay config ``w8a8_int_tensor_static`` renamed; what
changes is the model. Fit: :func:`fmtlab.methods.fptquant.fit_fptquant` with the paper's / public
implementation's defaults (residual rotation + transforms (a)-(c), L_4 loss of the merged weights,
200 AdamW steps at lr 1e-2, seed 0: the fields of :class:`FPTQuantVariant`, e.g.
``+fptquant(steps=5)``). Apply: :func:`~fmtlab.methods.fptquant.merge_fptquant` (a copy; the
caller's model is unchanged). The merged float model computes the original's function (to float32
rounding), so its recorded activations are the ones a quantizer sees under FPTQuant.

Our reading: the config's own quantizers replace FPTQuant's quantizer set, so FPTQuant's fourth
transform, the dynamic per-token scale on the o_proj / down_proj inputs
(:mod:`fmtlab.methods.fptquant_quant`), is not applied; the claim ``fptquant`` measures it.
Llama-architecture models only (others raise FmtlabError naming the model type).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fmtlab.errors import FmtlabError
from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler

__all__ = ["FPTQuantVariant", "FPTQuantHandler"]


@dataclasses.dataclass(frozen=True)
class FPTQuantVariant(ModelVariant):
    """FPTQuant local-fit settings (:func:`fmtlab.methods.fptquant.fit_fptquant`'s)."""

    name = "fptquant"
    steps: int = 200
    lr: float = 1e-2
    p: float = 4.0
    seed: int = 0


@register_variant_handler(FPTQuantVariant)
class FPTQuantHandler(VariantHandler):
    """Fit: the data-free local fit. Apply: the merged float copy."""

    def check(self, variant: FPTQuantVariant, model: Any) -> None:
        from fmtlab.methods.fptquant import llama_shape  # lazy: imports torch

        try:
            llama_shape(model)
        except FmtlabError as exc:
            mtype = getattr(getattr(model, "config", None), "model_type", None)
            raise FmtlabError(f"{variant} configs need a Llama-architecture model; {type(model).__name__} "
                              f"(model_type {mtype!r}) is not one: {exc}") from None

    def fit(self, variant: FPTQuantVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        from fmtlab.methods.fptquant import fit_fptquant  # lazy: imports torch

        log(f"FPTQuant: local fit ({variant.steps} AdamW steps per layer, lr {variant.lr:g}, "
            f"L_{variant.p:g}, seed {variant.seed}; data-free)")
        tr = fit_fptquant(model, steps=variant.steps, lr=variant.lr, p=variant.p, seed=variant.seed,
                          progress=progress)
        loss0 = sum(h[0] for h in tr.history if h)
        loss1 = sum(h[-1] for h in tr.history if h)
        return tr, f"local L_{variant.p:g} loss of the merged weights {loss0:.3f} -> {loss1:.3f}"

    def apply(self, variant: FPTQuantVariant, state: Any, model: Any) -> Applied:
        from fmtlab.methods.fptquant import merge_fptquant  # lazy: imports torch

        return Applied(merge_fptquant(model, state).eval(), text_info={"fptquant": dataclasses.asdict(variant)})

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = "merged into the weights: none at inference (the per-token scale (d) is not applied)"
        return row
