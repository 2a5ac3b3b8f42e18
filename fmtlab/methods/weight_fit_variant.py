"""``+gptq`` and ``+awq``: a config measured with its weights fitted on calibration data instead
of rounded to nearest (:mod:`~fmtlab.methods.variants` variants; issue 20).

``w4a8_int_channel+gptq`` is the replay config ``w4a8_int_channel`` measured on a model whose
Linear weights were GPTQ-quantized (:func:`fmtlab.sim.gptq.gptq`) under the config's OWN weight
quantizer (``int4_per_channel``), with Hessians from the calibration texts; the config's activation
quantizer, static scales and accumulator stay as they are, and its weight quantizer is taken over
by the variant (the weights are quantized already: re-rounding GPTQ weights with a fresh absmax
scale would move them). ``+awq`` does the same with AWQ's activation-aware per-input-channel scale
search (:func:`fmtlab.sim.awq.awq`; the scale is folded back into the weight, W_eff = Q(W s) / s,
which equals merging 1/s into the previous op for weight-only error; under activation quantization
the unscaled input is quantized: a documented deviation), ``+awq(gptq=true)`` with GPTQ under it.

Options (variant fields): ``block_size``, ``damp``, ``act_order``, ``static_groups``,
``scale_search`` ("mse" for block formats; Four Over Six is a weight quantizer rule), ``seq_len`` x ``n_sequences`` calibration
windows (default 256 x 32 = 8192 tokens), AWQ's ``n_grid``. ``weights`` is bound from the config
(or must equal it). Configs with a transform are refused (the transform rewrites the weights).

Fitted weights are cached as safetensors under ``<fmtlab cache>/fitted-weights/`` keyed on (model,
calibration data, variant), Hessians under ``<fmtlab cache>/hessians/``: a report with several
configs, or a second run, fits once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.methods.gptq import (apply_weights, collect_hessians, fit_weights, load_weights, model_key,
                                 save_weights, weight_quantizer)
from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler
from fmtlab.models.loading import cache_dir
from fmtlab.sim.gptq import hessian_error

__all__ = ["GPTQVariant", "AWQVariant", "WeightFitHandler", "GPTQHandler", "AWQHandler"]


@dataclasses.dataclass(frozen=True)
class GPTQVariant(ModelVariant):
    """GPTQ settings (:func:`fmtlab.sim.gptq.gptq`'s) and the calibration windows."""

    name = "gptq"
    weights: str = ""
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False
    scale_search: str = ""
    seq_len: int = 256
    n_sequences: int = 32

    @property
    def method(self) -> str:
        return "gptq"


@dataclasses.dataclass(frozen=True)
class AWQVariant(ModelVariant):
    """AWQ settings (:func:`fmtlab.sim.awq.awq`'s) and the calibration windows."""

    name = "awq"
    weights: str = ""
    n_grid: int = 20
    gptq: bool = False
    scale_search: str = ""
    seq_len: int = 256
    n_sequences: int = 32

    @property
    def method(self) -> str:
        return "awq+gptq" if self.gptq else "awq"


def _fit_kw(v) -> dict[str, Any]:
    kw: dict[str, Any] = {"scale_search": v.scale_search or None}
    if isinstance(v, GPTQVariant):
        kw.update(block_size=v.block_size, damp=v.damp, act_order=v.act_order, static_groups=v.static_groups)
    else:
        kw.update(n_grid=v.n_grid)
    return kw


class WeightFitHandler(VariantHandler):
    """Bind: the config's weight quantizer moves into the variant. Fit: Hessians + GPTQ / AWQ of
    every Linear layer (cached). Apply: a copy of the model with the fitted weights."""

    def bind(self, variant, cfg):
        if cfg.transform is not None:
            raise FmtlabError(f"config {cfg.name}{variant}: {variant} fits the weights of a plain config; "
                              f"this one has a transform ({cfg.transform}), which rewrites them")
        if cfg.weight is None:
            raise FmtlabError(f"config {cfg.name}{variant}: the config has no weight quantizer to fit")
        if not isinstance(cfg.weight, str):
            raise FmtlabError(f"config {cfg.name}{variant}: {variant} needs a named weight quantizer")
        if variant.weights and variant.weights != cfg.weight:
            raise FmtlabError(f"config {cfg.name}{variant}: weights={variant.weights} differs from the "
                              f"config's weight quantizer {cfg.weight}")
        weight_quantizer(cfg.weight)  # a spec GPTQ / AWQ can use, or a clear error now
        return dataclasses.replace(cfg, weight=None), dataclasses.replace(variant, weights=cfg.weight)

    def fit(self, variant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        if not variant.weights:
            raise FmtlabError(f"{variant}: no weight quantizer bound (spell it as <config>{variant})")
        mk = model_key(model)
        key = hashlib.sha256(repr((mk, calib.key, variant.name, dataclasses.asdict(variant))).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir(), "fitted-weights", f"{variant.name}-{key}.safetensors")
        meta = {"model": mk, "calib": calib.key, "variant": repr(dataclasses.asdict(variant))}
        hs = collect_hessians(model, tokenizer, list(calib.texts) or None, seq_len=variant.seq_len,
                              n_sequences=variant.n_sequences, cache_dir=os.path.join(cache_dir(), "hessians"),
                              model_id=mk, progress=progress)
        fitted = load_weights(path, meta)
        if fitted is None:
            log(f"{variant}: fitting {variant.method} weights under {variant.weights} on "
                f"{variant.n_sequences} x {variant.seq_len} calibration tokens")
            fitted = fit_weights(model, variant.weights, hs, method=variant.method, log=log, **_fit_kw(variant))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_weights(path, fitted, meta)
        else:
            log(f"{variant}: fitted weights read from {path}")
        rtn = fit_weights(model, variant.weights, method="rtn")
        mods = dict(model.named_modules())
        ratios = []
        for name, Wf in fitted.items():
            W0 = mods[name].weight.detach().float().cpu().numpy()
            er = hessian_error(W0, rtn[name], hs[name])
            ratios.append(hessian_error(W0, Wf, hs[name]) / er if er > 0 else 1.0)
        r = np.asarray(ratios)
        return fitted, (f"{variant.method} weights under {variant.weights}: calibration output error / RTN's "
                        f"median {np.median(r):.3f}, below RTN on {int(np.sum(r < 1))}/{r.size} layers")

    def apply(self, variant, state: Any, model: Any) -> Applied:
        return Applied(apply_weights(model, state).eval(),
                       text_info={"weights": variant.weights, "weight_method": variant.method})

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = "none at inference (the weights are the format's; AWQ scales fold into the weights)"
        return row


@register_variant_handler(GPTQVariant)
class GPTQHandler(WeightFitHandler):
    """``+gptq``."""


@register_variant_handler(AWQVariant)
class AWQHandler(WeightFitHandler):
    """``+awq``."""
