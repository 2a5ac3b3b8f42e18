"""``calibrate``: observe static activation scales over a calibration split, then freeze them.

For a model from ``quantize_model(..., activation_scales="static")`` (see
:mod:`fmtlab.pytorch.activations` for the statistic and how it becomes a scale) and for layers
with an fmtlab.sim transform (``quantize_model(..., transform=...)``), which are fitted on the
calibration inputs of the layer (all calibration sequences, in order). Calibration
data and evaluation data should be disjoint splits (``fmtlab.sim.data.default_texts("calib")``
vs ``("eval")``): a static scale is fitted on the one and scored on the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.activations import StaticActivation
from fmtlab.pytorch.model import QuantLinear
from fmtlab.pytorch.devices import model_device
from fmtlab.pytorch.kv_prefix import kv_prefix_attached
from fmtlab.pytorch.perplexity import token_windows_of

__all__ = ["CalibrationResult", "calibrate", "static_activations"]


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` froze: static activation quantizers (``layers``) and fitted
    transforms (``transforms``), over how many sequences of how many tokens."""

    layers: int
    sequences: int
    seq_len: int
    transforms: int = 0


def static_activations(model: nn.Module) -> dict[str, StaticActivation]:
    """The static activation quantizers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, StaticActivation)}


@torch.no_grad()
def calibrate(model: nn.Module, calib_data: Any, tokenizer: Any = None, *, seq_len: int | None = 128,
              n_sequences: int | None = None, batch_size: int = 4,
              device: "torch.device | str | None" = None, kv_prefix: Any = None) -> CalibrationResult:
    """Observe every static activation quantizer of ``model`` over ``calib_data``, then freeze;
    fit every layer transform on the same data.

    calib_data: texts (with ``tokenizer``, cut into ``seq_len``-token windows, the first
    ``n_sequences`` of them or all) or token ids [sequences, tokens], as ``evaluate_perplexity``
    takes them. Earlier calibration is discarded. The statistic is per sequence and folded in
    sequence order, so ``batch_size`` does not change the frozen scales. While observing,
    activations are not quantized (weights are). The model runs in eval mode, restored after.
    kv_prefix: a :class:`fmtlab.pytorch.kv_prefix.KVPrefix` the calibration windows run behind (its
    tokens' activations are not observed: they are not recomputed).
    Raises FmtlabError when the model has neither static activation quantizers nor transforms.
    """
    acts = static_activations(model)
    tlayers = [m for m in model.modules() if isinstance(m, QuantLinear) and m.transform is not None]
    if not acts and not tlayers:
        raise FmtlabError("the model has no static activation quantizers and no transforms to fit; "
                          "rewire it with quantize_model(..., activation_scales='static') first")
    if batch_size < 1:
        raise FmtlabError(f"batch_size must be >= 1, got {batch_size=}")
    ids = token_windows_of(calib_data, tokenizer, seq_len, n_sequences)
    device = model_device(model) if device is None else device
    was_training = model.training
    model.eval()
    for a in acts.values():
        a.reset()
        a.observing = True
    for m in tlayers:
        m.collect = []
    try:
        with kv_prefix_attached(model, kv_prefix):
            for start in range(0, ids.shape[0], batch_size):
                model(ids[start:start + batch_size].to(device))
        for a in acts.values():
            a.observing = False
            a.freeze()
        for m in tlayers:
            rows, m.collect = m.collect, None
            if not rows:
                raise FmtlabError(f"layer {m.layer_name!r}: calibration saw no input for its transform")
            m.fit_transform(rows, int(ids.shape[1]))
    finally:
        for a in acts.values():
            a.observing = False
        for m in tlayers:
            m.collect = None
        model.train(was_training)
    return CalibrationResult(len(acts), int(ids.shape[0]), int(ids.shape[1]), len(tlayers))
