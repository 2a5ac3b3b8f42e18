"""Differentiable fake-quant: straight-through estimator (STE) and its clipped variant.

Forward: the exact fmtlab fake-quant (bit-identical to the numpy/numba path). Backward:
- ``grad="ste"``: the incoming gradient passes unchanged (d fq(x)/dx := 1 everywhere);
- ``grad="clipped"``: the incoming gradient where x is not clipped, 0 where it is and at NaN.
  Clipped is decided exactly as ``Quantizer.quantize(x).report.clipped`` counts it: the scaled
  value y = x / s (+ zero point) lies beyond the rounding boundary of the largest (or most
  negative) finite value (``fmt.grid.bounds[-1]`` / ``bounds[0]``; INT8: y > 127.5 or
  y < -128.5), so a row's absmax element (y = 127.000004 in float32) keeps its gradient.
The gradient has x's dtype; no gradient flows into scales (they are statistics, not parameters).
"""

from __future__ import annotations

from typing import Callable

import torch

GRADS = ("ste", "clipped")


class _FakeQuantFn(torch.autograd.Function):
    """y = run(x, clipped)[0]; backward multiplies by the in-range mask run(x, True)[1] when clipped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, run: Callable, clipped: bool):  # type: ignore[override]
        y, mask = run(x, clipped)
        ctx.clipped = clipped
        if clipped:
            ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        if ctx.clipped:
            (mask,) = ctx.saved_tensors
            return gy * mask.to(gy.dtype), None, None
        return gy, None, None


def check_grad(grad: str) -> str:
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got grad={grad!r}")
    return grad


RunFn = Callable[[torch.Tensor, bool], "tuple[torch.Tensor, torch.Tensor | None]"]


def apply_fake_quant(x: torch.Tensor, run: RunFn, grad: str = "ste") -> torch.Tensor:
    """Apply ``run`` ((x, need_mask) -> (fake-quant values, in-range mask or None)) with the
    chosen gradient. Without autograd (no gradient needed) ``run`` is called directly.
    """
    check_grad(grad)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return run(x, False)[0]
    return _FakeQuantFn.apply(x, run, grad == "clipped")
