"""fmtlab quantizers (format x granularity x scale rule x rounding) in torch ops.

``TorchQuantizer(q)`` wraps an ``fmtlab.formats.Quantizer`` (or a preset name for
``get_quantizer``) and reproduces its bits with torch ops on any device, following the numeric
conventions written in ``fmtlab/formats/quantizer.py``, ``scaling.py`` and ``mx.py``:

- scales are float32; statistics (max finite |x|, percentile, min/max) are rounded to float32;
  symmetric ``s = fl32(c / fl32(fmt.max))`` with c == 0 -> 1 and an underflow to 0 -> 2**-149;
  ``pow2`` rounds s up to a power of two;
- asymmetric (MinMax, INT): lo = min(min x, 0), hi = max(max x, 0) (float32),
  ``s = fl32(fl32(hi - lo) / fl32(qmax - qmin))``, zero point
  ``z = clip(rint(qmin - lo / s), qmin, qmax)`` in float64;
- elements: ``y = fl(x / s)`` in x's precision (``x * fl(1/s)`` when every scale is a power of
  two, as the numba kernels do: the same number except where 1/s leaves the float range), the
  format's rounding of y on the grid shifted by -z, value ``fl(fl64(v - z) * s)``;
- MSE: per slot, clip values c_k = fl32(amax * r_k); the sum of squared errors is accumulated
  sequentially in float64 (``torch.cumsum``), ties keep the larger c;
- MX blocks (E8M0 shared exponent, FLOOR / CEIL / EVEN / RCEIL) and FP8-scaled blocks (NVFP4),
  with NaN/Inf blocks getting the NaN scale (outputs NaN, codes 0).
Stochastic rounding draws ``numpy.random.default_rng(seed).random(n)`` (the quantizer's seed or
the ``seed=`` / ``draws=`` of the call): one draw per element of x in C order, or per element
of the working layout (axis moved last) for block formats, exactly as the numpy path does.
Inputs: float32 and float64 keep their precision; float16 / bfloat16 are computed in float32
(as numpy computes them) and cast back to their dtype; integers are computed in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import (
    MSE, AbsMax, Format, MinMax, NanInput, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken,
    Quantizer, Rounding, Static, get_format, get_quantizer,
)
from fmtlab.pytorch import elementwise
from fmtlab.pytorch._tables import torch_grid
from fmtlab.pytorch.autograd import apply_fake_quant

__all__ = ["TorchQuantizer", "TorchQTensor", "resolve", "spec_name", "as_torch_quantizer"]

_IDENTITY = ("none", "fp32", "float32", "identity")
_TINY32 = 2.0 ** -149
_ABS32 = 0x7FFFFFFF
_INF32 = 0x7F800000
_MAN32 = 0x007FFFFF


class TorchQTensor(NamedTuple):
    """Codes (x's shape, int32 tensor holding the format's codes), float32 scales in the numpy
    layout's scale shape, int64 zero points or None, block scale codes or None, NVFP4 tensor
    scale or None."""

    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor | None
    scale_codes: torch.Tensor | None
    tensor_scale: float | None


@dataclasses.dataclass
class _Work:
    """x arranged for one granularity: ``w`` (axis moved last where needed) and how to undo it."""

    w: torch.Tensor
    moved: int | None
    scale_shape: tuple
    slots: torch.Tensor | None = None  # [nslots, L] slot matrix (non-block) when needed


def _norm_axis(axis: int, nd: int, what: str) -> int:
    if not -nd <= axis < nd:
        raise FmtlabError(f"{what}: axis={axis} is out of range for a {nd}-d array")
    return axis % nd


class TorchQuantizer:
    """Torch twin of an ``fmtlab.formats.Quantizer`` (see the module docstring).

    spec: a Quantizer, a preset name (``"mxfp4"``, ``"int8_per_channel"``, ``"nvfp4"``, ...;
    keyword overrides go to ``get_quantizer``), or a format name / Format with ``granularity=``
    etc. as Quantizer keywords. ``q(x, grad="ste")`` fake-quantizes with a straight-through
    gradient; :meth:`fake_quantize` and :meth:`quantize` mirror the numpy methods.
    """

    def __init__(self, spec: Any, **overrides: Any) -> None:
        if isinstance(spec, TorchQuantizer):
            spec = spec.quantizer if not overrides else dataclasses.replace(spec.quantizer, **overrides)
            overrides = {}
        if isinstance(spec, Quantizer):
            q = dataclasses.replace(spec, **overrides) if overrides else spec
        elif isinstance(spec, Format):
            q = Quantizer(spec, **overrides)
        elif isinstance(spec, str):
            try:
                q = get_quantizer(spec, **overrides)
            except FmtlabError as exc:
                try:
                    fmt = get_format(spec)
                except FormatError:
                    raise exc from None
                q = Quantizer(fmt, **overrides)
        else:
            raise FmtlabError(f"TorchQuantizer needs a Quantizer, a preset name or a format, got {spec!r}")
        self.quantizer: Quantizer = q
        self.format: Format = elementwise.warm(q.format)
        self.granularity = q.granularity
        self.scale_rule = q.scale_rule
        self.rounding: Rounding = q.rounding
        self.overflow = q.overflow
        self.nan = q.nan
        self.pow2 = bool(q.pow2)
        self.seed = q.seed
        self._fmax32 = float(np.float32(self.format.max))
        self._fmin32 = float(np.float32(self.format.min))
        # rounding boundaries beyond the extreme finite values: the clip test of QuantReport
        self._clip_lo = float(self.format.grid.bounds[0])
        self._clip_hi = float(self.format.grid.bounds[-1])
        self._int = self.format.family == "int"
        self._fast32 = self._fq32_rounds_product()
        if isinstance(self.granularity, PerBlock):
            from fmtlab.formats import mx as _mx

            self._be = _mx.block_elem(self.format)

    # ---- description ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.quantizer)

    def __repr__(self) -> str:
        return f"TorchQuantizer({self.quantizer.describe()})"

    def replace(self, **kw: Any) -> "TorchQuantizer":
        """A copy with Quantizer fields replaced (None values are ignored)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        return TorchQuantizer(dataclasses.replace(self.quantizer, **kw)) if kw else self

    def _fq32_rounds_product(self) -> bool:
        """Whether the numba fused kernel forms v * s in float32 for float32 input (minifloats on
        the float32 fast path and INT; other families multiply a float64 value)."""
        f = self.format
        if f.family == "int":
            return True
        if f.family == "minifloat":
            return (1 - f.bias) >= -126 and f.max < 2.0 ** 128
        return False

    # ---- layout -----------------------------------------------------------------------------
    def _work(self, a: torch.Tensor) -> _Work:
        g = self.granularity
        nd = a.dim()
        if a.numel() == 0:
            raise FmtlabError(f"cannot quantize an empty tensor (shape {tuple(a.shape)})")
        if isinstance(g, PerTensor):
            return _Work(a, None, ())
        if nd == 0:
            raise FmtlabError(f"{g} needs an array with at least one axis; got a 0-d array")
        if isinstance(g, PerChannel):
            ax = _norm_axis(g.axis, nd, str(g))
            return _Work(a, ax, (a.shape[ax],))
        if isinstance(g, PerToken):
            return _Work(a, None, tuple(a.shape[:-1]))
        kind = "group" if isinstance(g, PerGroup) else "block"
        ax = _norm_axis(g.axis, nd, str(g))
        L = a.shape[ax]
        if L % g.size:
            raise FmtlabError(f"{kind} size {g.size} does not divide axis {ax} of length {L} "
                              f"(shape {tuple(a.shape)}); pad the tensor or pick a size that divides {L}")
        moved = None if ax == nd - 1 else ax
        w = a.movedim(ax, -1).contiguous() if moved is not None else a.contiguous()
        return _Work(w, moved, tuple(w.shape[:-1]) + (L // g.size,))

    def _slot_matrix(self, wk: _Work) -> torch.Tensor:
        """[nslots, L] with each slot's elements in the numpy slot-matrix order."""
        g, w = self.granularity, wk.w
        if isinstance(g, PerTensor):
            return w.reshape(1, -1)
        if isinstance(g, PerChannel):
            return w.movedim(wk.moved, 0).reshape(w.shape[wk.moved], -1)
        if isinstance(g, PerToken):
            return w.reshape(-1, w.shape[-1])
        return w.reshape(-1, g.size)

    def _broadcast(self, v: torch.Tensor, wk: _Work) -> torch.Tensor:
        """Per-slot values shaped to broadcast against the working array (grouped view for
        groups/blocks: [..., ngroups, size])."""
        g, w = self.granularity, wk.w
        if isinstance(g, PerTensor):
            return v.reshape(())
        if isinstance(g, PerChannel):
            shape = [1] * w.dim()
            shape[wk.moved] = -1
            return v.reshape(shape)
        if isinstance(g, PerToken):
            return v.reshape(tuple(w.shape[:-1]) + (1,))
        return v.reshape(wk.scale_shape + (1,))

    def _grouped(self, t: torch.Tensor, wk: _Work) -> torch.Tensor:
        g = self.granularity
        if isinstance(g, (PerGroup, PerBlock)):
            return t.reshape(tuple(wk.w.shape[:-1]) + (-1, g.size))
        return t

    def _unwork(self, t: torch.Tensor, wk: _Work) -> torch.Tensor:
        t = t.reshape(wk.w.shape)
        if isinstance(self.granularity, (PerGroup, PerBlock)) and wk.moved is not None:
            t = t.movedim(-1, wk.moved)
        return t

    # ---- scales -----------------------------------------------------------------------------
    def _finalize(self, c: torch.Tensor) -> torch.Tensor:
        c = c.to(torch.float32)
        if not bool(torch.isfinite(c).all()):
            raise FmtlabError(f"non-finite scale: the input holds Inf (rule {self.scale_rule}); "
                              "clean it or use a static scale")
        s = c / torch.tensor(self._fmax32, dtype=torch.float32)
        s = torch.where(c == 0, 1.0, torch.where(s == 0, _TINY32, s)).to(torch.float32)
        return self._pow2(s)

    def _pow2(self, s: torch.Tensor) -> torch.Tensor:
        if not self.pow2:
            return s
        m, e = torch.frexp(s.to(torch.float64))
        out = torch.ldexp(torch.ones_like(m), torch.where(m == 0.5, e - 1, e)).to(torch.float32)
        if not bool(torch.isfinite(out).all()):
            raise FmtlabError("a power-of-two scale overflows float32")
        return out

    @staticmethod
    def _finite_absmax(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(max finite |x| per row as float32, row has NaN, row has Inf)."""
        b = M.abs()
        fin = torch.isfinite(b)
        amax = torch.where(fin, b, torch.zeros((), dtype=b.dtype, device=b.device)).amax(dim=1)
        return amax.to(torch.float32), torch.isnan(b).any(dim=1), torch.isinf(b).any(dim=1)

    def _slot_absmax(self, M: torch.Tensor) -> torch.Tensor:
        amax, _, inf = self._finite_absmax(M)
        if bool(inf.any()):
            raise FmtlabError(f"non-finite scale: the input holds Inf (rule {self.scale_rule}); "
                              "clean it or use a static scale")
        return amax

    def _percentile(self, M: torch.Tensor, p: float) -> torch.Tensor:
        v = torch.sort(M.abs().to(torch.float32), dim=1).values  # NaN sorts last
        n = (~torch.isnan(v)).sum(dim=1)
        h = (torch.clamp(n, min=1) - 1).to(torch.float64) * (p / 100.0)
        i = torch.floor(h).to(torch.int64)
        t = h - i.to(torch.float64)
        lo = v.gather(1, i[:, None])[:, 0].to(torch.float64)
        hi = v.gather(1, torch.minimum(i + 1, torch.clamp(n - 1, min=0))[:, None])[:, 0].to(torch.float64)
        c = (lo + (hi - lo) * t).to(torch.float32)
        return torch.where(n == 0, torch.zeros_like(c), c)

    def _mse(self, M: torch.Tensor, rule: MSE) -> torch.Tensor:
        amax = self._slot_absmax(M)
        rnd = Rounding.NEAREST_EVEN if self.rounding is Rounding.STOCHASTIC else self.rounding
        nan = "zero" if not self.format.has_nan else self.nan
        best = torch.full(amax.shape, float("inf"), dtype=torch.float64, device=M.device)
        best_c = amax.clone()
        x64 = M.to(torch.float64)
        for r in rule.ratios.tolist():
            c = (amax * torch.tensor(r, dtype=torch.float32)).to(torch.float32)
            s = self._finalize(c)
            y = self._divide(M, s[:, None])
            v = self._values(y, rnd, nan=nan)
            prod = v * s.to(torch.float64)[:, None]
            if M.dtype == torch.float32 and self._fast32:
                prod = prod.to(torch.float32).to(torch.float64)
            d = prod - x64
            sse = torch.cumsum(d * d, dim=1)[:, -1]  # sequential float64 sum, as the kernel
            better = sse < best
            best = torch.where(better, sse, best)
            best_c = torch.where(better, c, best_c)
        return best_c

    def _minmax(self, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(torch.isinf(M).any()):
            raise FmtlabError("non-finite scale: the input holds Inf (rule minmax)")
        nanm = torch.isnan(M)
        mn = torch.where(nanm, torch.full_like(M, float("inf")), M).amin(dim=1)
        mx = torch.where(nanm, torch.full_like(M, float("-inf")), M).amax(dim=1)
        mn = torch.where(torch.isinf(mn), torch.zeros_like(mn), mn)  # all-NaN slot: 0
        mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
        lo = torch.clamp(mn, max=0).to(torch.float32)
        hi = torch.clamp(mx, min=0).to(torch.float32)
        qmin, qmax = self._fmin32, self._fmax32
        den = torch.tensor(qmax, dtype=torch.float32) - torch.tensor(qmin, dtype=torch.float32)
        s = (hi - lo) / den
        s = torch.where(hi - lo == 0, 1.0, torch.where(s == 0, _TINY32, s)).to(torch.float32)
        if not bool(torch.isfinite(s).all()):
            raise FmtlabError("non-finite scale: max - min overflows float32")
        s = self._pow2(s)
        z = torch.clamp(torch.round(qmin - lo.to(torch.float64) / s.to(torch.float64)), qmin, qmax)
        return s, z.to(torch.int64)

    def _scales(self, wk: _Work) -> tuple[torch.Tensor, torch.Tensor | None]:
        rule = self.scale_rule
        dev = wk.w.device
        nslots = int(np.prod(wk.scale_shape)) if wk.scale_shape else 1
        if isinstance(rule, Static):
            s = torch.tensor(np.asarray(rule.scale, dtype=np.float32).reshape(-1), device=dev)
            if s.numel() not in (1, nslots):
                raise FmtlabError(f"static scale has {s.numel()} values; this layout needs 1 or "
                                  f"{nslots} (scale shape {wk.scale_shape})")
            s = self._pow2(s.expand(nslots).clone())
            z = None
            if rule.zero_point is not None:
                z = torch.tensor(np.asarray(rule.zero_point, dtype=np.int64).reshape(-1), device=dev)
                if z.numel() not in (1, nslots):
                    raise FmtlabError(f"static zero_point has {z.numel()} values for {nslots} slots")
                z = z.expand(nslots).clone()
                if bool((z < self.format.min).any()) or bool((z > self.format.max).any()):
                    raise FmtlabError(f"zero points must lie in [{self.format.min:g}, {self.format.max:g}]")
            return s, z
        M = self._slot_matrix(wk)
        if isinstance(rule, AbsMax):
            return self._finalize(self._slot_absmax(M)), None
        if isinstance(rule, Percentile):
            return self._finalize(self._percentile(M, rule.p)), None
        if isinstance(rule, MSE):
            return self._finalize(self._mse(M, rule)), None
        if isinstance(rule, MinMax):
            return self._minmax(M)
        raise FmtlabError(f"scale rule {rule} does not apply to {self.granularity}")

    def compute_scales(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scales, zero points) of a non-block quantizer, flat (float32 / int64), as
        ``Quantizer.compute_scales``."""
        if isinstance(self.granularity, PerBlock):
            raise FmtlabError("block formats compute their scales inside quantize/fake_quantize")
        return self._scales(self._work(self._as_input(x)))

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The clip value c per slot (flat, float32) that the scale rule (absmax, percentile, MSE)
        picks for ``x``, before the scale conversion: ``compute_scales(x)[0]`` equals
        ``scales_from_statistic(statistic(x))`` bit for bit. Min/max, static and block rules raise."""
        rule = self.scale_rule
        if isinstance(self.granularity, PerBlock) or not isinstance(rule, (AbsMax, Percentile, MSE)):
            raise FmtlabError(f"{self.name}: no single clip statistic for scale rule {rule} / {self.granularity}")
        M = self._slot_matrix(self._work(self._as_input(x)))
        if isinstance(rule, AbsMax):
            return self._slot_absmax(M)
        if isinstance(rule, Percentile):
            return self._percentile(M, rule.p)
        return self._mse(M, rule)

    def scales_from_statistic(self, c: torch.Tensor) -> torch.Tensor:
        """Scales from clip values: ``fl32(c / fl32(fmt.max))`` (c == 0 -> 1, underflow ->
        2**-149), then the quantizer's pow2 rounding."""
        return self._finalize(c)

    # ---- elements ---------------------------------------------------------------------------
    @staticmethod
    def _is_pow2(s: torch.Tensor) -> bool:
        m, _ = torch.frexp(s.to(torch.float64))
        return bool((m == 0.5).all())

    def _divide(self, x: torch.Tensor, s: torch.Tensor, pow2: bool | None = None) -> torch.Tensor:
        """y = fl(x / s) in x's precision (x * fl(1/s) when every scale is a power of two whose
        reciprocal x's dtype holds, as the numba kernels do)."""
        if pow2 is None:
            pow2 = self._is_pow2(s)
        if pow2:  # only where x's dtype holds every reciprocal (2**-149 has none in float32)
            inv = (1.0 / s.to(torch.float64)).to(x.dtype)
            if bool(torch.isfinite(inv).all()):
                return x * inv
        return x / s.to(x.dtype)

    def _codes(self, y: torch.Tensor, rounding: Rounding, *, z: torch.Tensor | None = None,
               draws: torch.Tensor | None = None, nan=None) -> torch.Tensor:
        """int32 codes of y (any shape) on the grid shifted by -z (INT zero points)."""
        nan = self.nan if nan is None else nan
        if z is None:
            c = elementwise._encode_codes(y, self.format, rounding, self.overflow, seed=None,
                                          draws=draws, nan=nan)
            return c.reshape(y.shape)
        q = self._int_shifted(y, rounding, z, draws)
        fmt = self.format
        if bool(torch.isnan(y).any()):
            sp = [int(v) for v in fmt.special_codes(self.overflow, fmt._resolve(rounding, None, nan)[2])]
            if sp[0] < 0:
                raise FormatError(f"{fmt.name} has no NaN code and the input holds "
                                  f"{int(torch.isnan(y).sum())} NaN value(s); clean the input or pass nan='zero'")
        code = (torch.nan_to_num(q + z.to(q.dtype), nan=0.0).to(torch.int64)) & ((1 << fmt.bits) - 1)
        return code.to(torch.int32)

    def _int_shifted(self, y: torch.Tensor, rounding: Rounding, z: torch.Tensor,
                     draws: torch.Tensor | None) -> torch.Tensor:
        """q = clamp(round(y), lo - z, hi - z) in float64 (the INT kernel with a zero point)."""
        y64 = y.to(torch.float64)
        if rounding is Rounding.STOCHASTIC:
            L = torch.floor(y64)
            q = torch.where(draws.reshape(y.shape) < (y64 - L), L + 1.0, L)
        elif rounding is Rounding.NEAREST_EVEN:
            q = torch.round(y64)
        elif rounding is Rounding.NEAREST_AWAY:
            t = torch.trunc(y64)
            q = torch.where((y64 - t).abs() >= 0.5, t + torch.sign(y64), t)
        else:
            q = torch.trunc(y64)
        z64 = z.to(torch.float64)
        return torch.minimum(torch.maximum(q, self.format.min - z64), self.format.max - z64)

    def _values(self, y: torch.Tensor, rounding: Rounding, *, z: torch.Tensor | None = None,
                draws: torch.Tensor | None = None, nan=None) -> torch.Tensor:
        """float64 element values v - z of y (the fused kernels' value, before the scale)."""
        nan = self.nan if nan is None else nan
        if z is None:
            c = self._codes(y, rounding, draws=draws, nan=nan)
            v = torch_grid(self.format, y.device).values[c.long()]
            if self._int and rounding is not Rounding.STOCHASTIC:
                v = torch.where(torch.isnan(y), self._int_nan_value(nan), v)
            return v
        q = self._int_shifted(y, rounding, z, draws)
        if rounding is Rounding.STOCHASTIC:
            c = self._codes(y, rounding, z=z, draws=draws, nan=nan)
            vals = torch_grid(self.format, y.device).values[c.long()]
            return vals - z.to(torch.float64)
        self._codes(y[torch.isnan(y)], rounding, z=z.expand_as(y)[torch.isnan(y)], nan=nan) \
            if bool(torch.isnan(y).any()) else None  # raises for NaN under nan='raise'
        q = q + 0.0  # -0.0 -> +0.0 (INT has one zero)
        return torch.where(torch.isnan(y), self._int_nan_value(nan), q)

    def _scaled_values(self, y: torch.Tensor, sb: torch.Tensor, zb, draws, nan) -> torch.Tensor:
        """fl(fl64(v - z) * s) in y's dtype. Shortcut where that equals fl(v * s) computed in y's
        dtype (float64 y; or float32 y with float32-exact element values, no zero point): the
        element values then come from ``elementwise.quantize`` (cast / arithmetic fast paths)."""
        if zb is None and (y.dtype == torch.float64 or self._fast32):
            v = elementwise.quantize(y, self.format, self.rounding, self.overflow, draws=draws,
                                     nan=nan)
            return v * sb.to(y.dtype)
        v = self._values(y, self.rounding, z=zb, draws=draws, nan=nan)
        return (v * sb.to(torch.float64)).to(y.dtype)

    def _int_nan_value(self, nan) -> float:
        from fmtlab.formats import NanInput

        return 0.0 if NanInput.parse(nan) is NanInput.ZERO else float("nan")

    # ---- draws ------------------------------------------------------------------------------
    def _draws(self, a: torch.Tensor, seed, draws) -> torch.Tensor | None:
        if self.rounding is not Rounding.STOCHASTIC:
            return None
        if draws is None and seed is None:
            seed = self.seed
        return elementwise.stochastic_draws(a.numel(), seed, draws, a.device).reshape(a.shape)

    # ---- main API ---------------------------------------------------------------------------
    @staticmethod
    def _as_input(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise FmtlabError("cannot quantize complex input")
        if x.dtype in (torch.float32, torch.float64):
            a = x
        elif x.is_floating_point():
            a = x.to(torch.float32)
        else:
            a = x.to(torch.float64)
        if a.numel() == 0:
            raise FmtlabError(f"cannot quantize an empty tensor (shape {tuple(a.shape)})")
        return a.detach()

    def _run(self, x: torch.Tensor, *, seed=None, draws=None, want_codes: bool = False,
             need_mask: bool = False, scales: torch.Tensor | None = None,
             zero_points: torch.Tensor | None = None):
        """(out, codes, scales, zero points, scale codes, tensor scale, in-range mask)."""
        a = self._as_input(x)
        wk = self._work(a)
        if isinstance(self.granularity, PerBlock):
            if scales is not None:
                raise FmtlabError("block formats compute their own scales; scales= does not apply")
            return self._run_blocks(a, wk, seed, draws, want_codes, need_mask)
        r = self._draws(a, seed, draws)
        if r is not None and isinstance(self.granularity, (PerGroup, PerBlock)) and wk.moved is not None:
            r = r.movedim(wk.moved, -1).contiguous()
        if scales is None:
            s, z = self._scales(wk)
        else:  # given scales (e.g. an observer's static scale), used as they are
            nslots = int(np.prod(wk.scale_shape)) if wk.scale_shape else 1
            s = scales.to(device=a.device, dtype=torch.float32).reshape(-1)
            if s.numel() not in (1, nslots):
                raise FmtlabError(f"{s.numel()} scales given; this layout needs 1 or {nslots} "
                                  f"(scale shape {wk.scale_shape})")
            s = s.expand(nslots)
            z = None if zero_points is None else zero_points.to(a.device, torch.int64).reshape(-1).expand(nslots)
        sb = self._broadcast(s, wk)
        zb = None if z is None else self._broadcast(z, wk)
        w = self._grouped(wk.w, wk)
        rg = None if r is None else self._grouped(r, wk)
        y = self._divide(w, sb, self._is_pow2(s))
        out = self._scaled_values(y, sb, zb, rg, self.nan)
        self._check_range(w, out, s)
        codes = self._codes(y, self.rounding, z=zb, draws=rg) if want_codes else None
        mask = None
        if need_mask:
            yz = y if zb is None else y + zb.to(y.dtype)
            mask = self._unwork(self._in_range(yz), wk)
        return (self._unwork(out, wk), None if codes is None else self._unwork(codes, wk),
                s.reshape(wk.scale_shape), None if z is None else z.reshape(wk.scale_shape),
                None, None, mask)

    def _check_range(self, x: torch.Tensor, out: torch.Tensor, s: torch.Tensor) -> None:
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

    def _in_range(self, y: torch.Tensor) -> torch.Tensor:
        """The clipped-STE pass region: ``y`` (= x / s + z, in x's precision) not clipped by the
        very comparison of ``Quantizer.quantize(...).report.clipped`` (y beyond the rounding
        boundary of the largest / most negative finite value, compared in float64), False at NaN.
        Comparing with fmt.max instead would zero the gradient of a row's largest element, whose
        x / s is 127.000004 in float32 for INT8 absmax."""
        y64 = y.to(torch.float64)
        return (y64 >= self._clip_lo) & (y64 <= self._clip_hi)

    def fake_quantize(self, x: torch.Tensor, *, seed=None, draws=None) -> torch.Tensor:
        """Fused quantize-dequantize; bit-identical to ``Quantizer.fake_quantize`` for float32 /
        float64 input (other floats: computed in float32, returned in x's dtype)."""
        return self.fake_quantize_with_mask(x, seed=seed, draws=draws)[0]

    def fake_quantize_with_mask(self, x: torch.Tensor, *, seed=None, draws=None, need_mask: bool = False,
                                scales: torch.Tensor | None = None, zero_points: torch.Tensor | None = None):
        """(fake_quantize(x), in-range mask or None): the mask is True where the scaled value
        (plus zero point) lies in [fmt.min, fmt.max] (the clipped-STE pass region).

        ``scales`` (float32, one per slot or one in all) replaces the scale rule and is used as
        given (the same bits as ``Quantizer(..., scale_rule=Static(scales), pow2=False)``).
        Under ``torch.compile`` (deterministic rounding, no seed / draws) it runs as the opaque
        custom op ``torch.ops.fmtlab.quantizer_fake_quant``: the same eager code, bit for bit, for
        every family (MX and NVFP4 included)."""
        if (torch.compiler.is_compiling() and self.rounding is not Rounding.STOCHASTIC
                and seed is None and draws is None):
            from fmtlab.pytorch._ops import quantizer_op

            return quantizer_op(self, x, need_mask, scales, zero_points)
        res = self._run(x, seed=seed, draws=draws, need_mask=need_mask, scales=scales,
                        zero_points=zero_points)
        out = res[0].to(x.dtype) if x.is_floating_point() else res[0]
        return out, res[6]

    def quantize(self, x: torch.Tensor, *, seed=None, draws=None) -> TorchQTensor:
        """Codes and scales (as ``Quantizer.quantize``: codes in x's shape, scales float32 in the
        layout's scale shape, zero points, block scale codes, NVFP4 tensor scale)."""
        out, codes, s, z, sc, ts, _ = self._run(x, seed=seed, draws=draws, want_codes=True)
        return TorchQTensor(codes, s, z, sc, ts)

    def dequantize(self, q: TorchQTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """fl(fl64(v - z) * s) per element, in ``dtype`` (use x's dtype for a round trip)."""
        a = torch.empty(q.codes.shape, dtype=dtype, device=q.codes.device)
        wk = self._work(a)
        v = torch_grid(self.format, a.device).values[self._grouped(
            q.codes.movedim(wk.moved, -1).contiguous() if (isinstance(self.granularity, (PerGroup, PerBlock))
                                                           and wk.moved is not None) else q.codes, wk).long()]
        if q.zero_points is not None:
            v = v - self._broadcast(q.zero_points, wk).to(torch.float64)
        out = (v * self._broadcast(q.scales, wk).to(torch.float64)).to(dtype)
        if self.pow2:
            self._check_range(torch.where(torch.isfinite(v), 0.0, float("inf")), out, q.scales)
        return self._unwork(out, wk)

    def __call__(self, x: torch.Tensor, grad: str = "ste", *, seed=None, draws=None) -> torch.Tensor:
        """Fake-quantize with a straight-through (or clipped, ``grad="clipped"``) gradient."""
        return apply_fake_quant(
            x, lambda t, m: self.fake_quantize_with_mask(t, seed=seed, draws=draws, need_mask=m), grad)

    # ---- block formats ----------------------------------------------------------------------
    def _run_blocks(self, a, wk, seed, draws, want_codes, need_mask):
        g = self.granularity
        K_ = g.size
        w = wk.w.reshape(-1, K_)  # [nblocks, K] in the working layout
        if self.nan is not None:  # explicit policy; None is OCP MX's NaN block (as Quantizer._blocks)
            nanm = torch.isnan(w)
            if bool(nanm.any()):
                if NanInput.parse(self.nan) is NanInput.RAISE:
                    raise FormatError(f"{self.name}: the input holds {int(nanm.sum())} NaN value(s) and "
                                      "nan='raise' (the default nan=None makes their MX blocks NaN; "
                                      "nan='zero' reads them as 0)")
                w = torch.where(nanm, torch.zeros_like(w), w)
        r = None
        if self.rounding is Rounding.STOCHASTIC:
            if draws is None and seed is None:
                seed = self.seed
            r = elementwise.stochastic_draws(w.numel(), seed, draws, w.device).reshape(w.shape)
        amax, has_nan, has_inf = self._finite_absmax(w)
        bad = has_nan | has_inf
        ts = None
        if g.scale_format == "e8m0":
            e = self._mx_exponents(amax, w.dtype)
            sexp = torch.where(bad, 255, e + 127).to(torch.uint8)
            ee = (e + self._be.eoff).to(torch.float64)
            scales = torch.where(bad, float("nan"), torch.pow(2.0, ee)).to(torch.float32)
            scale_codes = sexp
        else:
            scale_codes, scales, ts = self._fp8_scales(amax, bad)
        s = torch.where(bad, torch.ones_like(scales), scales)
        wz = torch.where(bad[:, None], torch.zeros_like(w), w)
        y = wz / s[:, None].to(w.dtype)
        out = self._scaled_values(y, s[:, None], None, r, "raise")
        out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
        codes = None
        if want_codes:
            codes = self._codes(y, self.rounding, draws=r, nan="raise")
            codes = torch.where(bad[:, None], torch.zeros_like(codes), codes)
            codes = self._unwork(codes, wk)
        mask = None
        if need_mask:
            mask = self._unwork(self._in_range(y) & ~bad[:, None], wk)
        shape = wk.scale_shape
        return (self._unwork(out, wk), codes, scales.reshape(shape), None,
                scale_codes.reshape(shape), ts, mask)

    def _mx_exponents(self, amax: torch.Tensor, dtype) -> torch.Tensor:
        """Unbiased E8M0 exponent per block (mx.py: FLOOR / CEIL / EVEN / RCEIL), clamped to
        [-127, 127]; an all-zero block gets -127."""
        be, rule = self._be, self.scale_rule.mode
        bits = amax.view(torch.int32).to(torch.int64)
        if rule == "floor":
            e = _floor_log2_bits(bits) - be.emax
        elif rule == "ceil":
            e = _ceil_log2_bits(bits) - be.emax
        elif rule == "even":
            if be.mbits < 0:
                raise FmtlabError(f"the EVEN shared-exponent rule needs a minifloat or INT element, "
                                  f"not {self.format.name}")
            rb = bits + (1 << (22 - be.mbits))
            rb = torch.where((rb >> 23) > 0, rb & ~((1 << 23) - 1), rb)
            e = _floor_log2_bits(rb) - be.emax
        else:  # rceil
            d = amax / torch.tensor(float(be.elem_max), dtype=torch.float32)
            db = d.view(torch.int32).to(torch.int64)
            e = torch.where(db == 0, -127, _ceil_log2_bits(torch.where(db == 0, 1, db)))
        e = torch.where(bits == 0, -127, e)
        return e.clamp(-127, 127)

    def _fp8_scales(self, amax: torch.Tensor, bad: torch.Tensor):
        """NVFP4-style block scales: (E4M3 codes, effective float32 scales, tensor scale g)."""
        g = self.granularity
        e4m3 = get_format("fp8_e4m3")
        elem_max = torch.tensor(float(self._be.elem_max), dtype=torch.float32)
        if g.tensor_scale is True:
            a = amax.max()
            if not bool(torch.isfinite(a)):
                raise FmtlabError("the tensor scale needs a finite max |x|")
            if float(a) == 0:
                gt = torch.tensor(1.0, dtype=torch.float32)
            else:
                gt = a.cpu() / (torch.tensor(float(e4m3.max), dtype=torch.float32) * elem_max)
                if not float(gt) > 0:
                    gt = torch.tensor(_TINY32, dtype=torch.float32)
            ts = float(gt)
        else:
            gt = torch.tensor(1.0, dtype=torch.float32)
            ts = None
        gt = gt.to(amax.device)
        s_rel = (amax / elem_max.to(amax.device)) / gt
        c8 = elementwise._encode_codes(s_rel, e4m3, Rounding.NEAREST_EVEN, "saturate", seed=None,
                                       draws=None, nan="raise")
        c8 = c8.clamp(1, e4m3.max_code())
        val = torch_grid(e4m3, amax.device).values[c8.long()].to(torch.float32)
        S = gt * val
        nan_code = e4m3.canonical_nan_code()
        codes = torch.where(bad, nan_code, c8).to(torch.uint8)
        S = torch.where(bad, float("nan"), S).to(torch.float32)
        return codes, S, ts


def _floor_log2_bits(b: torch.Tensor) -> torch.Tensor:
    """floor(log2 A) of positive finite float32 patterns b (int64; subnormals included)."""
    E = b >> 23
    f = (b & _MAN32).to(torch.float64)
    _, ef = torch.frexp(torch.where(f > 0, f, 1.0))
    sub = (ef.to(torch.int64) - 1) - 149
    return torch.where(E > 0, E - 127, sub)


def _ceil_log2_bits(b: torch.Tensor) -> torch.Tensor:
    fl = _floor_log2_bits(b)
    E = b >> 23
    man = b & _MAN32
    exact = torch.where(E > 0, man == 0, (man & (man - 1)) == 0)
    return torch.where(exact, fl, fl + 1)


def as_torch_quantizer(spec: Any) -> TorchQuantizer:
    """A TorchQuantizer from itself, a numpy Quantizer or a preset name."""
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, (Quantizer, str)):
        return TorchQuantizer(spec)
    raise FmtlabError(f"cannot use {spec!r} as a quantizer (pass a Quantizer, TorchQuantizer or preset name)")


def default_quantizer(fmt: Format, role: str) -> TorchQuantizer:
    """The quantizer a bare format gets in ``quantize_model``: absmax, per output channel for
    weights ([out, in] rows), per token for (dynamic) activations, per tensor for
    ``role="static_activations"``."""
    g, tag = {"weights": (PerChannel(0), "per_channel"),
              "static_activations": (PerTensor(), "per_tensor")}.get(role, (PerToken(), "per_token"))
    return TorchQuantizer(Quantizer(fmt, g, name=f"{fmt.name}_{tag}"))


def resolve(spec: Any, role: str = "weights") -> Callable | None:
    """A torch quantizer ``q(x, grad=...)`` for a spec, or None for no quantization.

    spec: None / "none" / "fp32"; a TorchQuantizer; a numpy Quantizer; a preset name
    (``get_quantizer``: "mxfp4", "nvfp4", "int8_per_channel", "int4_g128", ..., with overrides as
    ``"int8_per_token(pow2=yes)"``); a format name or
    Format (absmax per output channel for weights, per token for activations, see
    :func:`default_quantizer`); or any callable ``q(x, grad="ste") -> tensor`` used as is.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in _IDENTITY):
        return None
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, Quantizer):
        return TorchQuantizer(spec)
    if isinstance(spec, Format):
        return default_quantizer(spec, role)
    if isinstance(spec, str):
        if "(" in spec:  # "name(key=value, ...)": preset keyword overrides, as fmtlab.sim parses them
            from fmtlab.sim.quant import parse_call

            name, kwargs = parse_call(spec)
            return TorchQuantizer(get_quantizer(name, **kwargs))
        try:
            return TorchQuantizer(get_quantizer(spec))
        except FmtlabError:
            pass
        return default_quantizer(get_format(spec), role)
    if callable(spec):
        return spec
    raise FmtlabError(f"a quantizer spec must be None, a name, a Format, a Quantizer or a callable; got {spec!r}")


def spec_name(q: Any) -> str:
    if q is None:
        return "none"
    return getattr(q, "name", None) or getattr(q, "__name__", None) or repr(q)
