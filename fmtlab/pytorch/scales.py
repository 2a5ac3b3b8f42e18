"""The scale rules of a numpy ``Quantizer`` (absmax, percentile, MSE, static, min/max) in torch ops.

The rules, their parameters and their numeric convention are the numpy side's
(``fmtlab.formats.scaling``: the rule objects, ``MSE.ratios``, the float32 conventions written in
its module docstring); the slots come from the shared layout (:mod:`fmtlab.pytorch.layout`). This
module holds only the torch arithmetic that reproduces those bits on any device:

- statistics over finite values, rounded to float32; ``s = fl32(c / fl32(fmt.max))``, c == 0 ->
  1, an underflow to 0 -> 2**-149; ``pow2`` rounds s up to a power of two (exact, via frexp);
- min/max: lo = min(min x, 0), hi = max(max x, 0) (float32),
  ``s = fl32(fl32(hi - lo) / fl32(qmax - qmin))``, ``z = clip(rint(qmin - lo / s), qmin, qmax)``
  in float64;
- MSE: per slot, clip values c_k = fl32(amax * r_k); the sum of squared errors is accumulated
  sequentially in float64 (``torch.cumsum``), ties keep the larger c.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats import MSE, AbsMax, MinMax, Percentile, Quantizer, Static
from fmtlab.pytorch.layout import TorchLayout

__all__ = ["TorchScales", "finite_absmax", "TINY32"]

TINY32 = 2.0 ** -149  #: the scale an underflowing quotient gets (smallest float32 subnormal)

#: (M [nslots, L], s [nslots] float32) -> float64 fake-quant products v * s of M (MSE's inner step,
#: rounded to M's dtype where the numpy path rounds them)
Products = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def finite_absmax(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max finite |x| per row as float32, row has NaN, row has Inf)."""
    b = M.abs()
    amax = b.amax(dim=1)  # NaN or Inf in a row makes its amax non-finite: then the full path
    if M.shape[1] > 0 and bool(torch.isfinite(amax).all()):
        none = torch.zeros(M.shape[0], dtype=torch.bool, device=M.device)
        return amax.to(torch.float32), none, none
    fin = torch.isfinite(b)
    amax = torch.where(fin, b, torch.zeros((), dtype=b.dtype, device=b.device)).amax(dim=1)
    return amax.to(torch.float32), torch.isnan(b).any(dim=1), torch.isinf(b).any(dim=1)


class TorchScales:
    """Scales of quantizer ``q`` (a numpy Quantizer, non-block granularity) from torch data."""

    def __init__(self, q: Quantizer) -> None:
        self.quantizer = q
        self.rule = q.scale_rule
        self.granularity = q.granularity
        self.pow2 = bool(q.pow2)
        self.format = q.format
        self.fmax32 = float(np.float32(q.format.max))
        self.fmin32 = float(np.float32(q.format.min))

    def _inf_error(self) -> FmtlabError:
        return FmtlabError(f"non-finite scale: the input holds Inf (rule {self.rule}); "
                           "clean it or use a static scale")

    def finalize(self, c: torch.Tensor) -> torch.Tensor:
        """s = fl32(c / fl32(fmt.max)) with the zero and underflow conventions, then pow2."""
        c = c.to(torch.float32)
        if not bool(torch.isfinite(c).all()):
            raise self._inf_error()
        s = c / torch.tensor(self.fmax32, dtype=torch.float32)
        s = torch.where(c == 0, 1.0, torch.where(s == 0, TINY32, s)).to(torch.float32)
        return self.round_pow2(s)

    def round_pow2(self, s: torch.Tensor) -> torch.Tensor:
        """2**ceil(log2 s) where the quantizer has pow2=True (else s unchanged)."""
        if not self.pow2:
            return s
        m, e = torch.frexp(s.to(torch.float64))
        out = torch.ldexp(torch.ones_like(m), torch.where(m == 0.5, e - 1, e)).to(torch.float32)
        if not bool(torch.isfinite(out).all()):
            raise FmtlabError("a power-of-two scale overflows float32")
        return out

    def absmax(self, M: torch.Tensor) -> torch.Tensor:
        """max finite |x| per slot (float32); raises on Inf."""
        amax, _, inf = finite_absmax(M)
        if bool(inf.any()):
            raise self._inf_error()
        return amax

    @staticmethod
    def percentile(M: torch.Tensor, p: float) -> torch.Tensor:
        """The p-th percentile of |x| per slot, as ``scaling.Percentile`` defines it."""
        v = torch.sort(M.abs().to(torch.float32), dim=1).values  # NaN sorts last
        n = (~torch.isnan(v)).sum(dim=1)
        h = (torch.clamp(n, min=1) - 1).to(torch.float64) * (p / 100.0)
        i = torch.floor(h).to(torch.int64)
        t = h - i.to(torch.float64)
        lo = v.gather(1, i[:, None])[:, 0].to(torch.float64)
        hi = v.gather(1, torch.minimum(i + 1, torch.clamp(n - 1, min=0))[:, None])[:, 0].to(torch.float64)
        c = (lo + (hi - lo) * t).to(torch.float32)
        return torch.where(n == 0, torch.zeros_like(c), c)

    def mse(self, M: torch.Tensor, rule: MSE, products: Products) -> torch.Tensor:
        """The clip value per slot with the least sum of squared errors (``scaling.MSE``).

        On the CPU the numpy quantizer's compiled search runs (``Quantizer.mse_clip_values``: one
        fused fake-quant and float64 sequential sum per candidate, 10-100x faster than ~20 torch
        ops per candidate); elsewhere :meth:`mse_torch`. Both pick the same clip values, bit for
        bit (tests/pytorch/test_scales_mse_fast.py)."""
        if M.device.type == "cpu" and M.dtype in (torch.float32, torch.float64):
            c = self.quantizer.mse_clip_values(M.detach().contiguous().numpy(), rule)
            return torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
        return self.mse_torch(M, rule, products)

    def mse_torch(self, M: torch.Tensor, rule: MSE, products: Products) -> torch.Tensor:
        """:meth:`mse` in torch ops (any device)."""
        amax = self.absmax(M)
        best = torch.full(amax.shape, float("inf"), dtype=torch.float64, device=M.device)
        best_c = amax.clone()
        x64 = M.to(torch.float64)
        for r in rule.ratios.tolist():
            c = (amax * torch.tensor(r, dtype=torch.float32)).to(torch.float32)
            s = self.finalize(c)
            d = products(M, s) - x64
            sse = torch.cumsum(d * d, dim=1)[:, -1]  # sequential float64 sum, as the kernel
            better = sse < best
            best = torch.where(better, sse, best)
            best_c = torch.where(better, c, best_c)
        return best_c

    def minmax(self, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Asymmetric (scales float32, zero points int64) per slot."""
        if bool(torch.isinf(M).any()):
            raise FmtlabError("non-finite scale: the input holds Inf (rule minmax)")
        nanm = torch.isnan(M)
        mn = torch.where(nanm, torch.full_like(M, float("inf")), M).amin(dim=1)
        mx = torch.where(nanm, torch.full_like(M, float("-inf")), M).amax(dim=1)
        mn = torch.where(torch.isinf(mn), torch.zeros_like(mn), mn)  # all-NaN slot: 0
        mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
        lo = torch.clamp(mn, max=0).to(torch.float32)
        hi = torch.clamp(mx, min=0).to(torch.float32)
        qmin, qmax = self.fmin32, self.fmax32
        den = torch.tensor(qmax, dtype=torch.float32) - torch.tensor(qmin, dtype=torch.float32)
        s = (hi - lo) / den
        s = torch.where(hi - lo == 0, 1.0, torch.where(s == 0, TINY32, s)).to(torch.float32)
        if not bool(torch.isfinite(s).all()):
            raise FmtlabError("non-finite scale: max - min overflows float32")
        s = self.round_pow2(s)
        z = torch.clamp(torch.round(qmin - lo.to(torch.float64) / s.to(torch.float64)), qmin, qmax)
        return s, z.to(torch.int64)

    def static(self, rule: Static, tl: TorchLayout, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rule's given scales (and zero points) expanded to one per slot."""
        nslots = tl.nslots
        s = torch.tensor(np.asarray(rule.scale, dtype=np.float32).reshape(-1), device=device)
        if s.numel() not in (1, nslots):
            raise FmtlabError(f"static scale has {s.numel()} values; this layout needs 1 or "
                              f"{nslots} (scale shape {tl.scale_shape})")
        s = self.round_pow2(s.expand(nslots).clone())
        z = None
        if rule.zero_point is not None:
            z = torch.tensor(np.asarray(rule.zero_point, dtype=np.int64).reshape(-1), device=device)
            if z.numel() not in (1, nslots):
                raise FmtlabError(f"static zero_point has {z.numel()} values for {nslots} slots")
            z = z.expand(nslots).clone()
            if bool((z < self.format.min).any()) or bool((z > self.format.max).any()):
                raise FmtlabError(f"zero points must lie in [{self.format.min:g}, {self.format.max:g}]")
        return s, z

    def statistic(self, M: torch.Tensor, products: Products) -> torch.Tensor:
        """The clip value per slot of an absmax / percentile / MSE rule (before :meth:`finalize`)."""
        rule = self.rule
        if isinstance(rule, AbsMax):
            return self.absmax(M)
        if isinstance(rule, Percentile):
            return self.percentile(M, rule.p)
        if isinstance(rule, MSE):
            return self.mse(M, rule, products)
        raise FmtlabError(f"no single clip statistic for scale rule {rule}")

    def compute(self, w: torch.Tensor, tl: TorchLayout,
                products: Products) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scales float32, zero points int64 or None), one per slot, of the working data ``w``."""
        rule = self.rule
        if isinstance(rule, Static):
            return self.static(rule, tl, w.device)
        M = tl.slot_matrix(w)
        if isinstance(rule, MinMax):
            return self.minmax(M)
        if isinstance(rule, (AbsMax, Percentile, MSE)):
            return self.finalize(self.statistic(M, products)), None
        raise FmtlabError(f"scale rule {rule} does not apply to {self.granularity}")
