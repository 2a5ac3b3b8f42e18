"""Fitted-base log weights in ``quantize_model`` (:mod:`fmtlab.formats.logfit` for the method).

``quantize_model(model, weights=torch_log_fit("log4_fitb_per_channel"), ...)``: the weight is
handed to the numpy :class:`~fmtlab.formats.logfit.FittedLogQuantizer` (float32, CPU), which fits
the base(s) on it and fake-quantizes it, so the result is the replay weight bit for bit. The
gradient is the straight-through estimator (nothing clips: the absmax scale maps every weight
into the grid). Weights are static, and ``QuantLinear`` caches the quantized weight in eval mode,
so the fit runs once per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats.logfit import FittedLogQuantizer
from fmtlab.pytorch.autograd import apply_fake_quant

__all__ = ["TorchFittedLog", "torch_log_fit"]


class TorchFittedLog:
    """A torch weight quantizer ``q(w, grad="ste")`` around a :class:`FittedLogQuantizer`."""

    def __init__(self, q: FittedLogQuantizer) -> None:
        if not isinstance(q, FittedLogQuantizer):
            raise FmtlabError(f"TorchFittedLog wraps a FittedLogQuantizer, got {type(q).__name__}")
        self.q = q
        self.name = q.name

    def __call__(self, w: torch.Tensor, grad: str = "ste") -> torch.Tensor:
        if w.dim() != 2 and self.q.axis == 0:
            raise FmtlabError(f"{self.name}: per-channel bases need a 2-D weight, got shape {tuple(w.shape)}")

        def run(t: torch.Tensor, need_mask: bool):
            a = t.detach().to("cpu", torch.float32).numpy()
            out = torch.from_numpy(np.ascontiguousarray(self.q.fake_quantize(a))).to(device=t.device, dtype=t.dtype)
            return out, (torch.ones_like(t, dtype=torch.bool) if need_mask else None)

        return apply_fake_quant(w, run, grad)

    def __repr__(self) -> str:
        return f"TorchFittedLog({self.name})"


def torch_log_fit(spec: Any = "log4_fitb_per_channel", **overrides: Any) -> TorchFittedLog:
    """A torch weight quantizer from a fitted-base log name or a FittedLogQuantizer."""
    q = spec if isinstance(spec, FittedLogQuantizer) else FittedLogQuantizer.from_name(str(spec), **overrides)
    return TorchFittedLog(q)
