"""Quantizers (format + granularity + scale rule) in torch ops, and spec resolution.

Provisional: until ``fmtlab.formats`` ships its numpy quantizers this module offers a dynamic
absmax quantizer (per-tensor or one scale per row) used by :func:`resolve` for format names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats import Format, Overflow, Rounding
from fmtlab.pytorch import elementwise
from fmtlab.pytorch.autograd import apply_fake_quant
from fmtlab.pytorch.elementwise import warm

__all__ = ["TorchQuantizer", "resolve", "spec_name", "as_torch_quantizer"]

_IDENTITY = ("none", "fp32", "float32", "identity")


@dataclasses.dataclass(frozen=True)
class TorchQuantizer:
    """Dynamic absmax quantizer: scale = amax / fmt.max per tensor (``per_row=False``) or per row
    of the 2-D view [rows, last dim]; 1.0 where amax is 0; y = q(x / scale) * scale."""

    fmt: Format
    per_row: bool = False
    rounding: Rounding = Rounding.NEAREST_EVEN
    overflow: Overflow | None = Overflow.SATURATE

    def __post_init__(self) -> None:
        warm(self.fmt)

    @property
    def name(self) -> str:
        return f"{self.fmt.name}_{'per_row' if self.per_row else 'per_tensor'}"

    def replace(self, **kw) -> "TorchQuantizer":
        kw = {k: v for k, v in kw.items() if v is not None}
        return dataclasses.replace(self, **kw)

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().abs().to(torch.float32)
        amax = a.reshape(-1, x.shape[-1]).amax(dim=1, keepdim=True) if self.per_row and x.dim() else a.amax()
        s = amax / self.fmt.max
        return torch.where(s > 0, s, torch.ones_like(s))

    def fake_quantize_with_mask(self, x: torch.Tensor, *, seed=None, draws=None, need_mask=False):
        s = self.scales(x)
        xv = x.reshape(-1, x.shape[-1]) if (self.per_row and x.dim()) else x
        z = xv / s.to(xv.dtype)
        y = elementwise.fake_quant_values(z, self.fmt, self.rounding, self.overflow, seed=seed,
                                          draws=draws, nan="zero") * s.to(xv.dtype)
        mask = ((z >= self.fmt.min) & (z <= self.fmt.max)).reshape(x.shape) if need_mask else None
        return y.reshape(x.shape), mask

    def fake_quantize(self, x: torch.Tensor, *, seed=None, draws=None) -> torch.Tensor:
        return self.fake_quantize_with_mask(x, seed=seed, draws=draws)[0]

    def __call__(self, x: torch.Tensor, grad: str = "ste") -> torch.Tensor:
        return apply_fake_quant(x, lambda t, m: self.fake_quantize_with_mask(t, need_mask=m), grad)


def as_torch_quantizer(spec: Any) -> TorchQuantizer:
    if isinstance(spec, TorchQuantizer):
        return spec
    raise FmtlabError(f"cannot use {spec!r} as a quantizer")


def resolve(spec: Any, role: str = "weights") -> Callable | None:
    """A torch quantizer callable ``q(x, grad=...)`` for a spec, or None for no quantization."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in _IDENTITY):
        return None
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, (str, Format)):
        fmt = elementwise.as_format(spec)
        return TorchQuantizer(fmt, per_row=True)
    if callable(spec):
        return spec
    raise FmtlabError(f"a quantizer spec must be None, a name, a Format, a quantizer or a callable; got {spec!r}")


def spec_name(q: Any) -> str:
    if q is None:
        return "none"
    return getattr(q, "name", None) or getattr(q, "__name__", None) or repr(q)
