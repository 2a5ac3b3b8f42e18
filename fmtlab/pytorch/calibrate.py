"""``calibrate``: observe static activation scales over a calibration split, then freeze them.

For a model from ``quantize_model(..., activation_scales="static")`` (see
:mod:`fmtlab.pytorch.activations` for the statistic and how it becomes a scale). Calibration
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
from fmtlab.pytorch.perplexity import token_windows_of

__all__ = ["CalibrationResult", "calibrate", "static_activations"]


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` froze: how many layers, over how many sequences of how many tokens."""

    layers: int
    sequences: int
    seq_len: int


def static_activations(model: nn.Module) -> dict[str, StaticActivation]:
    """The static activation quantizers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, StaticActivation)}


@torch.no_grad()
def calibrate(model: nn.Module, calib_data: Any, tokenizer: Any = None, *, seq_len: int | None = 128,
              n_sequences: int | None = None, batch_size: int = 4,
              device: "torch.device | str | None" = None) -> CalibrationResult:
    """Observe every static activation quantizer of ``model`` over ``calib_data``, then freeze.

    calib_data: texts (with ``tokenizer``, cut into ``seq_len``-token windows, the first
    ``n_sequences`` of them or all) or token ids [sequences, tokens], as ``evaluate_perplexity``
    takes them. Earlier calibration is discarded. The statistic is per sequence and folded in
    sequence order, so ``batch_size`` does not change the frozen scales. While observing,
    activations are not quantized. The model runs in eval mode and its mode is restored.
    Raises FmtlabError when the model has no static activation quantizer.
    """
    acts = static_activations(model)
    if not acts:
        raise FmtlabError("the model has no static activation quantizers; rewire it with "
                          "quantize_model(..., activation_scales='static') first")
    if batch_size < 1:
        raise FmtlabError(f"batch_size must be >= 1, got {batch_size=}")
    ids = token_windows_of(calib_data, tokenizer, seq_len, n_sequences)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    for a in acts.values():
        a.reset()
        a.observing = True
    try:
        for start in range(0, ids.shape[0], batch_size):
            model(ids[start:start + batch_size].to(device))
    finally:
        for a in acts.values():
            a.observing = False
        model.train(was_training)
    for a in acts.values():
        a.freeze()
    return CalibrationResult(len(acts), int(ids.shape[0]), int(ids.shape[1]))
