"""fmtlab quantizers (format x granularity x scale rule x rounding) in torch ops.

``TorchQuantizer(q)`` wraps an ``fmtlab.formats.Quantizer`` (or a preset name for
``get_quantizer``) and reproduces its bits with torch ops on any device. It shares the numpy
side's spec instead of re-deriving it: the layout of scale slots is ``scaling.plan_layout``'s
(:mod:`fmtlab.pytorch.layout` only moves tensors), the scale rules are the Quantizer's rule
objects (:mod:`fmtlab.pytorch.scales`), block rules are ``mx.py``'s (:mod:`fmtlab.pytorch.blocks`),
and only the element rounding is twinned (:mod:`fmtlab.pytorch.elements`: the exact table path
for every format, a family's torch core where one is registered).

Numeric convention: ``fmtlab/formats/quantizer.py``, ``scaling.py`` and ``mx.py``. Stochastic
rounding draws ``numpy.random.default_rng(seed).random(n)`` (the quantizer's seed or the
``seed=`` / ``draws=`` of the call): one draw per element of x in C order, or per element of the
working layout (axis moved last) for block formats, exactly as the numpy path does.
Inputs: float32 and float64 keep their precision; float16 / bfloat16 are computed in float32
(as numpy computes them) and cast back to their dtype; integers are computed in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import MSE, AbsMax, Format, Percentile, PerBlock, Quantizer, Rounding, get_format, get_quantizer
from fmtlab.pytorch._ops import quantizer_op
from fmtlab.pytorch._tables import torch_grid
from fmtlab.pytorch.autograd import apply_fake_quant
from fmtlab.formats.mixfp4 import ALT_ELEMENT, E1M2_FLAG
from fmtlab.formats.scaling import MixFP4
from fmtlab.pytorch.blocks import run_blocks
from fmtlab.pytorch.elements import ElementOps, is_pow2
from fmtlab.pytorch.encoding import stochastic_draws, warm
from fmtlab.pytorch.layout import TorchLayout
from fmtlab.pytorch.scales import TorchScales

__all__ = ["TorchQuantizer", "TorchQTensor", "as_quantizer"]


class TorchQTensor(NamedTuple):
    """Codes (x's shape, int32 tensor holding the format's codes), float32 scales in the numpy
    layout's scale shape, int64 zero points or None, block scale codes or None, NVFP4 tensor
    scale or None."""

    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor | None
    scale_codes: torch.Tensor | None
    tensor_scale: float | None


class _Result(NamedTuple):
    out: torch.Tensor
    codes: torch.Tensor | None
    scales: torch.Tensor
    zero_points: torch.Tensor | None
    scale_codes: torch.Tensor | None
    tensor_scale: float | None
    mask: torch.Tensor | None


def as_quantizer(spec: Any, **overrides: Any) -> Quantizer:
    """The numpy Quantizer of a spec: a Quantizer (with field overrides), a preset name, or a
    format / format name with Quantizer keywords."""
    if isinstance(spec, Quantizer):
        return dataclasses.replace(spec, **overrides) if overrides else spec
    if isinstance(spec, Format):
        return Quantizer(spec, **overrides)
    if isinstance(spec, str):
        try:
            q = get_quantizer(spec, **overrides)
        except FmtlabError as exc:
            try:
                fmt = get_format(spec)
            except FormatError:
                raise exc from None
            return Quantizer(fmt, **overrides)
        if not isinstance(q, Quantizer):  # the identity (None), PEG, fitted-base log
            raise FmtlabError(f"TorchQuantizer needs a scaled quantizer; {spec!r} is "
                              f"{'the identity' if q is None else type(q).__name__}")
        return q
    raise FmtlabError(f"TorchQuantizer needs a Quantizer, a preset name or a format, got {spec!r}")


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


class TorchQuantizer:
    """Torch twin of an ``fmtlab.formats.Quantizer`` (see the module docstring).

    spec: a Quantizer, a preset name (``"mxfp4"``, ``"int8_per_channel"``, ``"nvfp4"``, ...;
    keyword overrides go to ``get_quantizer``), or a format name / Format with ``granularity=``
    etc. as Quantizer keywords. ``q(x, grad="ste")`` fake-quantizes with a straight-through
    gradient; :meth:`fake_quantize` and :meth:`quantize` mirror the numpy methods.
    """

    def __init__(self, spec: Any, **overrides: Any) -> None:
        if isinstance(spec, TorchQuantizer):
            spec = spec.quantizer
        q = as_quantizer(spec, **overrides)
        self.quantizer: Quantizer = q
        self.format: Format = warm(q.format)
        self.granularity = q.granularity
        self.scale_rule = q.scale_rule
        self.rounding: Rounding = q.rounding
        self.overflow = q.overflow
        self.nan = q.nan
        self.pow2 = bool(q.pow2)
        self.seed = q.seed
        self.elements = ElementOps(q)
        self.block = isinstance(q.granularity, PerBlock)
        self.scales = None if self.block else TorchScales(q)

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

    def layout(self, shape) -> TorchLayout:
        """The shared layout (``Quantizer.layout``) of an array of ``shape``, for tensors."""
        return TorchLayout(self.quantizer.layout(tuple(shape)))

    # ---- scales -----------------------------------------------------------------------------
    def _products(self, M: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """float64 v * s of the slot matrix M under scales s (MSE's trial fake-quant)."""
        rnd = Rounding.NEAREST_EVEN if self.rounding is Rounding.STOCHASTIC else self.rounding
        nan = "zero" if not self.format.has_nan else self.nan
        y = self.elements.divide(M, s[:, None])
        v = self.elements.values(y, rnd, nan=nan)
        prod = v * s.to(torch.float64)[:, None]
        if M.dtype == torch.float32 and self.elements.mse_rounds_product(rnd, nan):
            prod = prod.to(torch.float32).to(torch.float64)
        return prod

    def _non_block(self, what: str) -> TorchScales:
        if self.scales is None:
            raise FmtlabError(f"block formats compute their scales inside quantize/fake_quantize ({what})")
        return self.scales

    def compute_scales(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scales, zero points) of a non-block quantizer, flat (float32 / int64), as
        ``Quantizer.compute_scales``."""
        sc = self._non_block("compute_scales")
        a = _as_input(x)
        tl = self.layout(a.shape)
        return sc.compute(tl.to_work(a), tl, self._products)

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The clip value c per slot (flat, float32) that the scale rule (absmax, percentile, MSE)
        picks for ``x``, before the scale conversion: ``compute_scales(x)[0]`` equals
        ``scales_from_statistic(statistic(x))`` bit for bit. Min/max, static and block rules raise."""
        rule = self.scale_rule
        if self.block or not isinstance(rule, (AbsMax, Percentile, MSE)):
            raise FmtlabError(f"{self.name}: no single clip statistic for scale rule {rule} / {self.granularity}")
        a = _as_input(x)
        tl = self.layout(a.shape)
        M = tl.slot_matrix(tl.to_work(a))
        return self.scales.statistic(M, self._products)

    def scales_from_statistic(self, c: torch.Tensor) -> torch.Tensor:
        """Scales from clip values: ``fl32(c / fl32(fmt.max))`` (c == 0 -> 1, underflow ->
        2**-149), then the quantizer's pow2 rounding."""
        return self._non_block("scales_from_statistic").finalize(c)

    # ---- main API ---------------------------------------------------------------------------
    def _draws(self, a: torch.Tensor, seed, draws) -> torch.Tensor | None:
        if self.rounding is not Rounding.STOCHASTIC:
            return None
        if draws is None and seed is None:
            seed = self.seed
        return stochastic_draws(a.numel(), seed, draws, a.device).reshape(a.shape)

    def _given_scales(self, tl: TorchLayout, scales: torch.Tensor, zero_points, device):
        nslots = tl.nslots
        s = scales.to(device=device, dtype=torch.float32).reshape(-1)
        if s.numel() not in (1, nslots):
            raise FmtlabError(f"{s.numel()} scales given; this layout needs 1 or {nslots} "
                              f"(scale shape {tl.scale_shape})")
        z = None if zero_points is None else zero_points.to(device, torch.int64).reshape(-1).expand(nslots)
        return s.expand(nslots), z

    def _run(self, x: torch.Tensor, *, seed=None, draws=None, want_codes: bool = False,
             need_mask: bool = False, scales: torch.Tensor | None = None,
             zero_points: torch.Tensor | None = None) -> _Result:
        a = _as_input(x)
        tl = self.layout(a.shape)
        w = tl.to_work(a)
        if self.block:
            if scales is not None:
                raise FmtlabError("block formats compute their own scales; scales= does not apply")
            b = run_blocks(self.quantizer, self.elements, tl, w, seed, draws, want_codes, need_mask)
            return _Result(b.out, b.codes, b.scales, None, b.scale_codes, b.tensor_scale, b.mask)
        r = self._draws(a, seed, draws)
        if scales is None:
            s, z = self.scales.compute(w, tl, self._products)
        else:  # given scales (e.g. an observer's static scale), used as they are
            s, z = self._given_scales(tl, scales, zero_points, a.device)
        ops = self.elements
        sb = tl.per_slot(s)
        zb = None if z is None else tl.per_slot(z)
        wr = tl.rows(w)
        rr = None if r is None else tl.rows(tl.to_work(r))
        y = ops.divide(wr, sb, is_pow2(s))
        out = ops.scaled_values(y, sb, zb, rr, self.nan)
        ops.check_range(wr, out, s)
        codes = ops.codes(y, self.rounding, z=zb, draws=rr) if want_codes else None
        mask = None
        if need_mask:
            yz = y if zb is None else y + zb.to(y.dtype)
            mask = tl.from_work(ops.in_range(yz))
        return _Result(tl.from_work(out), None if codes is None else tl.from_work(codes),
                       s.reshape(tl.scale_shape), None if z is None else z.reshape(tl.scale_shape),
                       None, None, mask)

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
            return quantizer_op(self, x, need_mask, scales, zero_points)
        res = self._run(x, seed=seed, draws=draws, need_mask=need_mask, scales=scales,
                        zero_points=zero_points)
        out = res.out.to(x.dtype) if x.is_floating_point() else res.out
        return out, res.mask

    def quantize(self, x: torch.Tensor, *, seed=None, draws=None) -> TorchQTensor:
        """Codes and scales (as ``Quantizer.quantize``: codes in x's shape, scales float32 in the
        layout's scale shape, zero points, block scale codes, NVFP4 tensor scale)."""
        res = self._run(x, seed=seed, draws=draws, want_codes=True)
        return TorchQTensor(res.codes, res.scales, res.zero_points, res.scale_codes, res.tensor_scale)

    def dequantize(self, q: TorchQTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """fl(fl64(v - z) * s) per element, in ``dtype`` (use x's dtype for a round trip)."""
        tl = self.layout(q.codes.shape)
        rows = tl.rows(tl.to_work(q.codes))
        v = torch_grid(self.format, q.codes.device).values[rows.long()]
        if isinstance(self.quantizer.scale_rule, MixFP4):  # E1M2 blocks: scale-code bit 7
            sc = q.scale_codes.to(torch.int64)
            alt = tl.per_slot(((sc & E1M2_FLAG) != 0) & ((sc & 0x7F) != 0x7F))
            va = torch_grid(get_format(ALT_ELEMENT), q.codes.device).values[rows.long()]
            v = torch.where(alt, va, v)
        if q.zero_points is not None:
            v = v - tl.per_slot(q.zero_points).to(torch.float64)
        out = (v * tl.per_slot(q.scales).to(torch.float64)).to(dtype)
        if self.pow2:
            self.elements.check_range(torch.where(torch.isfinite(v), 0.0, float("inf")), out, q.scales)
        return tl.from_work(out)

    def __call__(self, x: torch.Tensor, grad: str = "ste", *, seed=None, draws=None) -> torch.Tensor:
        """Fake-quantize with a straight-through (or clipped, ``grad="clipped"``) gradient."""
        return apply_fake_quant(
            x, lambda t, m: self.fake_quantize_with_mask(t, seed=seed, draws=draws, need_mask=m), grad)
