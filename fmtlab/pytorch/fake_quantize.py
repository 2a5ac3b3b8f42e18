"""``FormatFakeQuantize``: any fmtlab format or quantizer as a ``torch.ao.quantization`` module.

It drops into a ``QConfig`` and so into ``prepare_qat``::

    QConfig(activation=FormatFakeQuantize.with_args(fmt="fp8_e4m3"),
            weight=FormatFakeQuantize.with_args(fmt="int4", ch_axis=0))

Scale (static, observer-driven): an observer (torch's MinMax family) tracks min/max of what it
sees; ``c = max(|min|, |max|)`` per tensor or per channel, and the scale follows the fmtlab
quantizer convention ``s = fl32(c / fl32(fmt.max))`` (c == 0 -> 1, an underflow -> 2**-149, then
the quantizer's pow2 rounding). Forward: exactly ``Quantizer(fmt, granularity,
Static(s)).fake_quantize(x)`` (torch ops, bit-identical to the numpy path for float32/float64),
gradient by straight-through estimator (``grad="ste"``) or its clipped variant
(``grad="clipped"``: zero where ``x / s`` is clipped, the comparison of ``QuantReport.clipped``).
``calculate_qparams()`` returns ``(scale, zero_point)`` with zero_point 0 (symmetric).

Non-finite inputs (the rule, as torch's own FakeQuantize behaves): a NaN input gives a NaN output
at its position (with ``fmt=``; a ``quantizer=`` applies its own NaN policy); +-Inf is out of
range like any large value, so it saturates (or follows ``overflow``). The observer sees only
finite values (non-finite ones are replaced by 0, which never raises ``max(|min|, |max|)``), so a
batch holding NaN or Inf never changes the scale that later batches get.
:func:`fmtlab.pytorch.convert_qat` turns a trained QAT model into plain modules whose weights hold
the fake-quantized values.
"""

from __future__ import annotations

import torch
from torch.ao.quantization import FakeQuantizeBase, MovingAverageMinMaxObserver, PerChannelMinMaxObserver

from fmtlab.errors import FmtlabError
from fmtlab.formats import Format, Overflow, PerChannel, PerTensor, Quantizer, Rounding
from fmtlab.pytorch.autograd import apply_fake_quant, check_grad
from fmtlab.pytorch.quantizers import TorchQuantizer

__all__ = ["FormatFakeQuantize"]


class FormatFakeQuantize(FakeQuantizeBase):
    """Fake-quantize to an fmtlab format with an observer-driven static scale.

    fmt: format or name (``"fp8_e4m3"``, ``"int4"``, ``"fp4_e2m1"``, ...) quantized with
    ``rounding`` / ``overflow`` (default saturate, as QAT expects); or ``quantizer``: an fmtlab
    Quantizer, TorchQuantizer or preset name whose format, rounding, overflow, NaN policy and pow2
    are used; its granularity must be per-tensor or per-channel (the axis becomes ``ch_axis``).
    ch_axis: None = per-tensor (default observer MovingAverageMinMaxObserver), an int = one scale
    per slice along that axis (default observer PerChannelMinMaxObserver).
    grad: "ste" or "clipped". observer_kwargs go to the observer (e.g. averaging_constant).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, fmt: "Format | str | None" = None, observer=None, *, ch_axis: int | None = None,
                 rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
                 overflow: "Overflow | str | None" = Overflow.SATURATE, grad: str = "ste",
                 quantizer=None, factory_kwargs: dict | None = None, **observer_kwargs) -> None:
        super().__init__()
        if ch_axis is not None and (not isinstance(ch_axis, int) or isinstance(ch_axis, bool)):
            raise FmtlabError(f"ch_axis must be an int or None, got {ch_axis!r}")
        self.nan_propagates = quantizer is None
        if quantizer is not None:
            if fmt is not None:
                raise ValueError("pass either fmt= or quantizer=, not both")
            base = quantizer.quantizer if isinstance(quantizer, TorchQuantizer) else quantizer
            base = TorchQuantizer(base).quantizer
            g = base.granularity
            if isinstance(g, PerChannel):
                if ch_axis is not None and ch_axis != g.axis:
                    raise ValueError(f"ch_axis={ch_axis} contradicts the quantizer's {g}")
                ch_axis = g.axis
            elif not isinstance(g, PerTensor):
                raise FmtlabError(f"FormatFakeQuantize keeps one static scale per tensor or per channel; "
                                  f"the quantizer's granularity {g} is not one of them")
        else:
            if Rounding.parse(rounding) is Rounding.STOCHASTIC:
                raise ValueError("FormatFakeQuantize needs a deterministic rounding (stochastic "
                                 "rounding needs a seed per call; use fmtlab.pytorch.fake_quantize)")
            base = Quantizer(fmt if fmt is not None else "fp8_e4m3",
                             PerTensor() if ch_axis is None else PerChannel(ch_axis),
                             rounding=rounding, overflow=overflow, nan="zero")
        if base.rounding is Rounding.STOCHASTIC:
            raise ValueError("FormatFakeQuantize needs a deterministic rounding")
        self.tq = TorchQuantizer(base)
        self.fmt = self.tq.format
        self.rounding = self.tq.rounding
        self.overflow = self.tq.overflow
        self.grad = check_grad(grad)
        self.ch_axis = ch_axis
        if observer is None:
            observer = MovingAverageMinMaxObserver if ch_axis is None else PerChannelMinMaxObserver
        if ch_axis is not None:
            observer_kwargs.setdefault("ch_axis", ch_axis)
            observer_kwargs.setdefault("qscheme", torch.per_channel_symmetric)
        else:
            observer_kwargs.setdefault("qscheme", torch.per_tensor_symmetric)
        observer_kwargs.setdefault("dtype", torch.qint8)  # the observer's own qparams are unused
        self.activation_post_process = observer(**observer_kwargs)
        self.is_per_channel = ch_axis is not None
        self.qscheme = torch.per_channel_symmetric if self.is_per_channel else torch.per_tensor_symmetric
        self.dtype = torch.float  # no torch integer dtype: convert with fmtlab.pytorch.convert_qat
        device = (factory_kwargs or {}).get("device")
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float, device=device))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int, device=device))

    @property
    def quantizer(self) -> Quantizer:
        """The numpy Quantizer this module mirrors (its scale rule is replaced by the observer)."""
        return self.tq.quantizer

    # ---- scale ------------------------------------------------------------------------------
    def _observed_scale(self) -> torch.Tensor:
        obs = self.activation_post_process
        c = torch.maximum(obs.min_val.abs(), obs.max_val.abs()).to(torch.float32).reshape(-1)
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))  # no observation yet: 1
        return self.tq.scales_from_statistic(c)

    @torch.jit.export
    def calculate_qparams(self):  # type: ignore[override]
        """(scale, zero_point): the current static scale(s) and zeros."""
        return self.scale.clone(), torch.zeros_like(self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ch_axis is not None and not -x.dim() <= self.ch_axis < x.dim():
            raise FmtlabError(f"FormatFakeQuantize(ch_axis={self.ch_axis}) got a {x.dim()}-d tensor of shape "
                              f"{tuple(x.shape)}: the channel axis is out of range")
        if self.observer_enabled[0] == 1:
            xd = x.detach()
            if xd.is_floating_point():  # never observe NaN/Inf (branch-free: no host sync on CUDA)
                xd = torch.where(torch.isfinite(xd), xd, torch.zeros_like(xd))
            self.activation_post_process(xd)
            s = self._observed_scale().to(self.scale.device)
            if self.scale.shape != s.shape:
                self.scale.resize_(s.shape)
                self.zero_point.resize_(s.shape)
                self.zero_point.zero_()
            self.scale.copy_(s)
        if self.fake_quant_enabled[0] == 1:
            scale = self.scale
            y = apply_fake_quant(
                x, lambda t, m: self.tq.fake_quantize_with_mask(t, need_mask=m, scales=scale), self.grad)
            x = torch.where(torch.isnan(x), x, y) if self.nan_propagates and x.is_floating_point() else y
        return x

    def extra_repr(self) -> str:
        gran = "per-tensor" if not self.is_per_channel else f"per-channel(axis={self.ch_axis})"
        return (f"fmt={self.fmt.name}, {gran}, rounding={self.rounding.value}, grad={self.grad}, "
                f"fake_quant_enabled={int(self.fake_quant_enabled[0])}, "
                f"observer_enabled={int(self.observer_enabled[0])}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
