"""The element step of a quantizer in torch ops: y = x / s, its codes and values, v * s.

Numeric convention (``fmtlab.formats.quantizer``; the numba fused kernels):
- ``y = fl(x / s)`` in x's precision (``x * fl(1/s)`` when every scale is a power of two whose
  reciprocal x's dtype holds: the same number);
- codes: the format's rounding of y (:func:`fmtlab.pytorch.encoding.encode_codes`: every format,
  the table path or the family's torch core), on the grid shifted by -z for zero points (the
  family's ``zero_point`` core; INT);
- value ``fl(fl64(v - z) * s)``, which equals ``fl(v * s)`` computed in y's dtype for float64 y,
  and for float32 y where every element value is a float32 number; the shortcut is taken where the
  family's core says the numba kernel forms the product in float32 (``float32_product``).
"""

from __future__ import annotations

import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats import NanInput, Quantizer, Rounding
from fmtlab.formats.kernels import params
from fmtlab.pytorch._tables import torch_grid
from fmtlab.pytorch.cores import required_core, torch_core
from fmtlab.pytorch.elementwise import quantize
from fmtlab.pytorch.encoding import conventions, encode_codes, nan_error

__all__ = ["ElementOps", "is_pow2"]


def is_pow2(s: torch.Tensor) -> bool:
    """Whether every scale is a power of two."""
    m, _ = torch.frexp(s.to(torch.float64))
    return bool((m == 0.5).all())


class ElementOps:
    """Element rounding of quantizer ``q`` (format, rounding, overflow, NaN policy) on scaled data."""

    def __init__(self, q: Quantizer) -> None:
        self.format = q.format
        self.rounding: Rounding = q.rounding
        self.overflow = q.overflow
        self.nan = q.nan
        core = torch_core(q.format)
        self.float32_product = bool(core.float32_product and core.float32_product(q.format))
        # rounding boundaries beyond the extreme finite values: the clip test of QuantReport
        self.clip_lo = float(q.format.grid.bounds[0])
        self.clip_hi = float(q.format.grid.bounds[-1])

    def mse_rounds_product(self, rounding: Rounding, nan) -> bool:
        """Whether numpy's MSE search sees ``v * s`` rounded to float32 for float32 data: where
        the format has no numba kernel plan (the table path returns fake-quant values in x's
        dtype) or the family's kernel forms the product in float32 (``float32_product``)."""
        mode, overflow, nan_p = conventions(self.format, rounding, self.overflow, nan)
        return params(self.format, mode, overflow, nan_p) is None or self.float32_product

    def divide(self, x: torch.Tensor, s: torch.Tensor, pow2: bool | None = None) -> torch.Tensor:
        """y = fl(x / s) in x's precision (see the module docstring)."""
        if pow2 is None:
            pow2 = is_pow2(s)
        if pow2:  # only where x's dtype holds every reciprocal (2**-149 has none in float32)
            inv = (1.0 / s.to(torch.float64)).to(x.dtype)
            if bool(torch.isfinite(inv).all()):
                return x * inv
        return x / s.to(x.dtype)

    def _zero_point_q(self, y, rounding, z, draws) -> torch.Tensor:
        shifted = required_core(self.format, "zero_point", "a zero point")
        return shifted(y, self.format, rounding, z, draws)

    def codes(self, y: torch.Tensor, rounding: Rounding, *, z: torch.Tensor | None = None,
              draws: torch.Tensor | None = None, nan=None) -> torch.Tensor:
        """int32 codes of y (any shape) on the grid shifted by -z (zero points)."""
        nan = self.nan if nan is None else nan
        fmt = self.format
        if z is None:
            c = encode_codes(y, fmt, rounding, self.overflow, draws=draws, nan=nan)
            return c.reshape(y.shape)
        q = self._zero_point_q(y, rounding, z, draws)
        if bool(torch.isnan(y).any()):
            sp = fmt.special_codes(self.overflow, conventions(fmt, rounding, None, nan)[2])
            if int(sp[0]) < 0:
                raise nan_error(fmt, int(torch.isnan(y).sum()))
        code = (torch.nan_to_num(q + z.to(q.dtype), nan=0.0).to(torch.int64)) & ((1 << fmt.bits) - 1)
        return code.to(torch.int32)

    def values(self, y: torch.Tensor, rounding: Rounding, *, z: torch.Tensor | None = None,
               draws: torch.Tensor | None = None, nan=None) -> torch.Tensor:
        """float64 element values v - z of y (the fused kernels' value, before the scale)."""
        nan = self.nan if nan is None else nan
        if z is None or rounding is Rounding.STOCHASTIC:
            c = self.codes(y, rounding, z=z, draws=draws, nan=nan)
            v = torch_grid(self.format, y.device).values[c.long()]
            return v if z is None else v - z.to(torch.float64)
        q = self._zero_point_q(y, rounding, z, draws)
        nanm = torch.isnan(y)
        if bool(nanm.any()):  # raises for NaN under nan='raise'
            self.codes(y[nanm], rounding, z=z.expand_as(y)[nanm], nan=nan)
        q = q + 0.0  # -0.0 -> +0.0 (INT has one zero)
        nan_value = 0.0 if NanInput.parse(nan) is NanInput.ZERO else float("nan")
        return torch.where(nanm, nan_value, q)

    def scaled_values(self, y: torch.Tensor, sb: torch.Tensor, zb, draws, nan) -> torch.Tensor:
        """fl(fl64(v - z) * s) in y's dtype (``sb``/``zb`` broadcast against y)."""
        if zb is None and (y.dtype == torch.float64 or self.float32_product):
            v = quantize(y, self.format, self.rounding, self.overflow, draws=draws, nan=nan)
            return v * sb.to(y.dtype)
        v = self.values(y, self.rounding, z=zb, draws=draws, nan=nan)
        return (v * sb.to(torch.float64)).to(y.dtype)

    def in_range(self, y: torch.Tensor) -> torch.Tensor:
        """The clipped-STE pass region: ``y`` (= x / s + z, in x's precision) not clipped by the
        very comparison of ``Quantizer.quantize(...).report.clipped`` (y beyond the rounding
        boundary of the largest / most negative finite value, compared in float64), False at NaN.
        Comparing with fmt.max instead would zero the gradient of a row's largest element, whose
        x / s is 127.000004 in float32 for INT8 absmax."""
        y64 = y.to(torch.float64)
        return (y64 >= self.clip_lo) & (y64 <= self.clip_hi)

    def check_range(self, x: torch.Tensor, out: torch.Tensor, s: torch.Tensor) -> None:
        """Mirror of ``Quantizer._check_range``: a finite input whose result left the float range
        of its dtype (power-of-two scales near the dtype's max) raises instead of giving +-Inf."""
        if s.numel() == 0 or not out.is_floating_point():
            return
        reach = float(s.max()) * (abs(self.format.max) + abs(self.format.min))
        if reach < float(torch.finfo(out.dtype).max):
            return
        bad = torch.isinf(out) & torch.isfinite(x)
        if bool(bad.any()):
            first = float(x[bad].reshape(-1)[0])
            raise FmtlabError(f"{int(bad.sum())} finite input(s) (e.g. {first!r}) round beyond the "
                              f"{str(out.dtype).replace('torch.', '')} range on the power-of-two grid "
                              "(pow2=True near the dtype's max): use pow2=False or float64 input")
