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
(or must equal it).

A config with a transform that is a fixed linear map of the input (SmoothQuant, AQAS: X' = X
diag(1/s), W' = W diag(s); Hadamard: X R, W R) works under ``+gptq`` (e.g. ``w4a8_dint_aqas+gptq``,
the dINT paper's "AQAS + dINT4 + OPTQ"): the transform is fitted per layer on the calibration trace
exactly as for the RTN config (so both use the same scales), then W' is GPTQ-quantized under the
config's weight quantizer with the Hessian of the transformed input, A^T H A (diag(1/s) H diag(1/s)
for smoothing), from the same cached Hessian; the layer computes Q_a(X A) Q'^T. This runs inside
the perplexity check (``perplexity(..., weight_fit=...)``), so such configs give perplexity rows;
replaying them on recorded traces is refused. Transforms that are not such a map (LLM.int8(), MUXQ,
per-token scale, sink exclusion) are refused, and so is ``+awq`` behind any transform.

In replay (the report's layer-output SQNR rows) a ``+gptq`` / ``+awq`` config without a transform
runs on the plain model's traces with :class:`~fmtlab.methods.gptq.FittedWeights` as its weight
quantizer (:meth:`WeightFitHandler.replay_config`): the same recorded inputs as the RTN config's
rows, no traces recorded behind the variant.

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
from fmtlab.methods.gptq import (FittedWeights, apply_weights, collect_hessians, fit_weights, load_weights,
                                 model_key, save_weights, weight_quantizer)
from fmtlab.methods.variants import Applied, CalibData, Fitted, ModelVariant, VariantHandler, register_variant_handler
from fmtlab.models.loading import cache_dir
from fmtlab.models.record import find_linear_layers
from fmtlab.sim.gptq import gptq, hessian_error
from fmtlab.sim.hessian import transformed_hessian
from fmtlab.sim.transforms import get_transform

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
    transformed: bool = False  # bound: the config has a transform; GPTQ runs in its space

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
        if cfg.transform is not None and not isinstance(variant, GPTQVariant):
            raise FmtlabError(f"config {cfg.name}{variant}: {variant} fits the weights of a config without a "
                              f"transform; this one has {cfg.transform} (AWQ's own input scaling on top of it "
                              "is not defined here; +gptq composes with linear transforms)")
        if cfg.weight is None:
            raise FmtlabError(f"config {cfg.name}{variant}: the config has no weight quantizer to fit")
        if not isinstance(cfg.weight, str):
            raise FmtlabError(f"config {cfg.name}{variant}: {variant} needs a named weight quantizer")
        if variant.weights and variant.weights != cfg.weight:
            raise FmtlabError(f"config {cfg.name}{variant}: weights={variant.weights} differs from the "
                              f"config's weight quantizer {cfg.weight}")
        weight_quantizer(cfg.weight)  # a spec GPTQ / AWQ can use, or a clear error now
        if cfg.transform is not None:
            t = get_transform(cfg.transform)
            if t.weight_depends_on_x or t.needs_positions:
                raise FmtlabError(f"config {cfg.name}{variant}: its transform {t.name} is not a fixed linear map "
                                  "of the input (it depends on the tokens), so GPTQ has no Hessian in its space")
            # the config keeps its weight quantizer: the transform is fitted with it, as for the
            # RTN config; the fitted layer's weight is then GPTQ's (perplexity weight_fit)
            return cfg, dataclasses.replace(variant, weights=cfg.weight, transformed=True)
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
        if getattr(variant, "transformed", False):
            return _InTransform(hs), (f"Hessians of {len(hs)} layers on {variant.n_sequences} x {variant.seq_len} "
                                      f"calibration tokens; GPTQ under {variant.weights} runs in the config's "
                                      "transform space when the transform is fitted")
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
        if isinstance(state, _InTransform):
            return Applied(model, perplexity_kw={"weight_fit": state.fitter(variant)},
                           text_info={"weights": variant.weights, "weight_method": "gptq in the transform's space"},
                           replay_refusal=(f"{variant} behind a transform fits the weights when the transform is "
                                           "fitted inside the perplexity check; replaying recorded traces of it is "
                                           "not supported (measure its perplexity)"))
        return Applied(apply_weights(model, state).eval(),
                       text_info={"weights": variant.weights, "weight_method": variant.method})

    def replay_config(self, variant, state: Any, model: Any, cfg):
        """Fitted weights replay on the plain model's traces: the config with a
        :class:`~fmtlab.methods.gptq.FittedWeights` weight quantizer (same layer inputs as the
        RTN config's rows, so the two are side by side); None behind a transform."""
        if isinstance(state, _InTransform) or cfg.weight is not None:
            return None
        orig = {}
        for n, mod, op in find_linear_layers(model, None, include_head=True):
            if n in state:
                w = mod.weight.detach().float().cpu().numpy()
                orig[n] = np.ascontiguousarray(w.T if op == "conv1d" else w)
        return dataclasses.replace(cfg, weight=FittedWeights(state, orig, f"{variant.weights}[{variant.method}]"))

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        row = super().describe(fitted)
        row["cost"] = "none at inference (the weights are the format's; AWQ scales fold into the weights)"
        return row


@dataclasses.dataclass(frozen=True, eq=False)
class _InTransform:
    """The fitted state of ``+gptq`` behind a transform: the calibration Hessians (of the float
    model's layer inputs); the weights are fitted per layer once the transform is."""

    hessians: dict

    def fitter(self, variant: GPTQVariant) -> Callable[[str, np.ndarray, np.ndarray], np.ndarray]:
        q = weight_quantizer(variant.weights)
        kw = _fit_kw(variant)

        def fit(name: str, wt: np.ndarray, A: np.ndarray) -> np.ndarray:
            if name not in self.hessians:
                raise FmtlabError(f"{variant}: no calibration Hessian of layer {name}")
            return gptq(wt, transformed_hessian(self.hessians[name], A), q, **kw).weight
        return fit


@register_variant_handler(GPTQVariant)
class GPTQHandler(WeightFitHandler):
    """``+gptq``."""


@register_variant_handler(AWQVariant)
class AWQHandler(WeightFitHandler):
    """``+awq``."""
