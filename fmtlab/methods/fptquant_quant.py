"""FPTQuant at quantization time: the dynamic per-token scale (d), static W/A fake-quant of a merged
model, and the optional end-to-end training of the transforms.

**(d) dynamic per-token scale** (our reading of the paper's per-token scalers S_n, "computed by
existing RMSNorms"): in fmtlab only Linear inputs are quantized. After the residual rotation the
inputs of q/k/v and gate/up are RMSNorm outputs with unit gains, i.e. already divided by their
per-token RMS. The two other Linear inputs (o_proj: attention output; down_proj: SwiGLU output) get
the same treatment at run time: each token row x is divided by s = RMS(x) (over its features; a zero
row keeps s = 1), quantized with the layer's *static* calibrated scale, and the layer output row is
multiplied by s again. ``Q(x / s) W^T s = x W^T`` in float, so it is function preserving; it costs
one RMS and one output-row rescale per token, and the integer GEMM still sees statically scaled
inputs. :class:`TokenScaledStatic` is that quantizer; :func:`quantize_fptquant` installs it.

**End-to-end training** (:func:`train_end_to_end`, optional and small): the student is the merged
model fake-quantized with static activation scales (calibrated once, on the first calibration
batch, at the start); its Linear weights are recomputed from the transforms' parameters at every
step (``torch.func.functional_call``), and the loss is the mean KL divergence of the float model's
next-token distribution to the student's. Gradients pass the fake-quantizers straight through.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.activations import ActivationScales, StaticActivation
from fmtlab.pytorch.calibrate import calibrate
from fmtlab.methods.fptquant import (PROJECTIONS, FPTQuantTransforms, base_layer_weights, fit_fptquant,
                                     llama_shape, merge_fptquant, merged_layer_weights)
from fmtlab.pytorch.model import QuantLinear, matches_name, quantize_model

__all__ = ["TokenScaledStatic", "token_rms", "quantize_fptquant", "train_end_to_end", "prepare_static",
           "PER_TOKEN_LAYERS", "METHODS"]

#: the Linear layers whose inputs get the dynamic per-token scale (d) by default
PER_TOKEN_LAYERS = ("o_proj", "down_proj")
#: the variants :func:`prepare_static` builds
METHODS = ("none", "hadamard", "fptquant")


def token_rms(x: torch.Tensor) -> torch.Tensor:
    """Per-row RMS of x [..., features] as [..., 1] (float32 or x's dtype); 0 rows give 1."""
    s = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return torch.where(s > 0, s, torch.ones_like(s))


class TokenScaledStatic(StaticActivation):
    """A static activation quantizer applied to x / RMS(x) per token, output rescaled by RMS(x).

    Calibration observes the normalised rows; see the module docstring for the reading."""

    @property
    def name(self) -> str:
        return f"{self.tq.name} (static, per-token RMS scaled)"

    def forward(self, x: torch.Tensor, grad: str = "ste") -> torch.Tensor:
        s = token_rms(x)
        if self.observing:
            self.observe(x / s)
            return x
        return super().forward(x / s, grad) * s


def quantize_fptquant(model: nn.Module, weights: Any = "int4_per_channel", activations: Any = "int8", *,
                      per_token: Sequence[str] = PER_TOKEN_LAYERS, **kw: Any) -> tuple[nn.Module, Any]:
    """``quantize_model(model, weights, activations, activation_scales="static", **kw)`` with the
    per-token scale (d) on the layers matching ``per_token`` (quantize_model's name patterns).
    Run :func:`fmtlab.pytorch.calibrate` on the result before evaluating it."""
    if kw.pop("activation_scales", "static") not in ("static", ActivationScales.STATIC):
        raise FmtlabError("quantize_fptquant uses static activation scales (with the per-token scale)")
    qmodel, summary = quantize_model(model, weights, activations, activation_scales="static", **kw)
    hits = 0
    for name, mod in qmodel.named_modules():
        if isinstance(mod, QuantLinear) and isinstance(mod.act_q, StaticActivation) \
                and any(matches_name(name, p) for p in per_token):
            mod.act_q = TokenScaledStatic(mod.act_q.tq, mod.in_features, name)
            hits += 1
    if per_token and hits == 0 and activations is not None:
        raise FmtlabError(f"no quantized layer matches the per-token patterns {list(per_token)}")
    return qmodel, summary


def _student_names(student: nn.Module, n_layers: int) -> dict[tuple[int, str], str]:
    out = {}
    mods = dict(student.named_modules())
    for i in range(n_layers):
        for key, (blk, name) in PROJECTIONS.items():
            path = f"model.layers.{i}.{blk}.{name}"
            inner = ".inner" if isinstance(mods.get(path), QuantLinear) else ""
            out[(i, key)] = f"{path}{inner}.weight"
            out[(i, key + ".bias")] = f"{path}{inner}.bias"
    return out


def train_end_to_end(model: nn.Module, transforms: FPTQuantTransforms, calib_batches: Iterable[torch.Tensor], *,
                     steps: int = 10, lr: float = 1e-3, weights: Any = "int4_per_channel",
                     activations: Any = "int8", per_token: Sequence[str] = PER_TOKEN_LAYERS) -> list[float]:
    """Train ``transforms`` in place for ``steps`` AdamW steps (``lr``) on KL(float || fake-quantized
    merged model), cycling over ``calib_batches`` (token ids [batch, tokens]); returns the loss per
    step. ``model`` (the float model) is not changed. The residual rotation stays fixed."""
    batches = [torch.as_tensor(b, dtype=torch.long) for b in calib_batches]
    if not batches or any(b.dim() != 2 for b in batches):
        raise FmtlabError("calib_batches must be a non-empty sequence of [batch, tokens] token-id tensors")
    if not isinstance(steps, int) or steps < 1 or not (lr > 0 and math.isfinite(lr)):
        raise FmtlabError(f"end-to-end training needs steps >= 1 and a finite lr > 0, got {steps=!r}, {lr=!r}")
    shape = llama_shape(model)
    student, _ = quantize_fptquant(merge_fptquant(model, transforms), weights, activations, per_token=per_token)
    calibrate(student, batches[0])
    for p in student.parameters():
        p.requires_grad_(False)
    names = _student_names(student, shape.layers)
    bases = [base_layer_weights(model, i, transforms.rotation, torch.float32) for i in range(shape.layers)]
    params = [p for p in transforms.parameters() if p.requires_grad]
    if not params:
        raise FmtlabError("the transforms have no trainable parameters (all of qk/v/up disabled)")
    opt = torch.optim.AdamW(params, lr=lr)
    losses: list[float] = []
    was = model.training
    model.eval()
    student.eval()
    try:
        with torch.enable_grad():  # also when called under torch.no_grad()
            for _, ids in zip(range(steps), itertools.cycle(batches)):
                with torch.no_grad():
                    target = torch.log_softmax(model(ids).logits.to(torch.float32), dim=-1)
                over = {}
                for i in range(shape.layers):
                    for key, t in merged_layer_weights(bases[i], dict(transforms.layers[i]), shape).items():
                        over[names[(i, key)]] = t
                logits = torch.func.functional_call(student, over, (ids,)).logits.to(torch.float32)
                logq = torch.log_softmax(logits, dim=-1)
                v = logq.shape[-1]
                loss = torch.nn.functional.kl_div(logq.reshape(-1, v), target.reshape(-1, v), log_target=True,
                                                  reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        model.train(was)
    return losses


def prepare_static(model: nn.Module, method: str, calib_ids: torch.Tensor, *, weights: Any = "int4_per_channel",
                   activations: Any = "int8", steps: int = 200, lr: float = 1e-2, p: float = 4.0,
                   seed: int | None = 0, per_token: Sequence[str] = PER_TOKEN_LAYERS, e2e_steps: int = 0,
                   transforms: FPTQuantTransforms | None = None, merged: nn.Module | None = None,
                   batch_size: int = 4) -> nn.Module:
    """A calibrated static W/A fake-quant copy of ``model`` for one ``method`` of :data:`METHODS`:

    - ``"none"``: quantize_model with static activation scales, no transform;
    - ``"hadamard"``: the merged residual rotation alone (RMSNorm gains folded), same quantizers;
    - ``"fptquant"``: residual rotation + transforms (a)-(c) fitted by :func:`fit_fptquant` (or the
      given ``transforms``), merged, with the per-token scale (d) on ``per_token`` layers.

    Static scales are calibrated on ``calib_ids`` [sequences, tokens] (``activations=None``:
    weight-only, nothing to calibrate). ``model`` is not changed.
    ``merged``: the float model already merged for this method (skips fitting and merging; for
    comparing several quantizers on one merge).
    """
    if method not in METHODS:
        raise FmtlabError(f"unknown FPTQuant comparison method {method!r}; known: {', '.join(METHODS)}")
    if method == "none":
        q, _ = quantize_model(model, weights, activations, activation_scales="static")
    elif method == "hadamard":
        if merged is None:
            tr = fit_fptquant(model, steps=0, qk=False, v=False, up=False, residual=True, seed=seed)
            merged = merge_fptquant(model, tr)
        q, _ = quantize_model(merged, weights, activations, activation_scales="static")
    else:
        if merged is None:
            if transforms is None:
                batches = [calib_ids[i:i + batch_size] for i in range(0, calib_ids.shape[0], batch_size)]
                if not isinstance(e2e_steps, int) or e2e_steps < 0:
                    raise FmtlabError(f"e2e_steps must be an integer >= 0, got {e2e_steps=!r}")
                transforms = fit_fptquant(model, steps=steps, lr=lr, p=p, seed=seed)
                if e2e_steps:
                    train_end_to_end(model, transforms, batches, steps=e2e_steps, weights=weights,
                                     activations=activations)
            merged = merge_fptquant(model, transforms)
        q, _ = quantize_fptquant(merged, weights, activations, per_token=per_token)
    if activations is not None:  # weight-only quantization has nothing to calibrate
        calibrate(q, calib_ids, batch_size=batch_size)
    return q
