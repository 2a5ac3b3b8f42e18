"""``FormatFakeQuantize``: any fmtlab format as a ``torch.ao.quantization`` fake-quantize module.

It drops into a ``QConfig`` (``QConfig(activation=FormatFakeQuantize.with_args(fmt="fp8_e4m3"),
weight=FormatFakeQuantize.with_args(fmt="int4", ch_axis=0))``) and so into ``prepare_qat``.

Scale (static, observer-driven): an observer (torch's MinMax family) tracks min/max of what it
sees; ``scale = amax / fmt.max`` with ``amax = max(|min|, |max|)`` per tensor or per channel,
computed in float32 (1.0 where amax is 0 or not finite). Forward: ``q(x / scale) * scale`` with the
element format's exact fake-quant ``q`` (float32 arithmetic for float32 x), gradient by
straight-through estimator (``grad="ste"``) or its clipped variant (``grad="clipped"``: zero
where ``x / scale`` lies outside ``[fmt.min, fmt.max]``).
``calculate_qparams()`` returns ``(scale, zero_point)`` with zero_point 0 (symmetric).
:func:`fmtlab.pytorch.convert_qat` turns a trained QAT model into plain modules whose weights hold
the fake-quantized values.
"""

from __future__ import annotations

import torch
from torch.ao.quantization import FakeQuantizeBase, MovingAverageMinMaxObserver, PerChannelMinMaxObserver

from fmtlab.formats import Format, Overflow, Rounding
from fmtlab.pytorch import elementwise
from fmtlab.pytorch.autograd import apply_fake_quant, check_grad

__all__ = ["FormatFakeQuantize", "scaled_fake_quant"]


def scaled_fake_quant(x: torch.Tensor, fmt: Format, scale: torch.Tensor, *,
                      rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
                      overflow: "Overflow | str | None" = Overflow.SATURATE, grad: str = "ste",
                      seed=None) -> torch.Tensor:
    """``q(x / scale) * scale`` (scale broadcast against x) with a straight-through gradient."""

    def run(t: torch.Tensor, need_mask: bool):
        s = scale.to(t.dtype) if t.is_floating_point() else scale
        z = t / s
        y = elementwise.fake_quant_values(z, fmt, rounding, overflow, seed=seed, nan="zero") * s
        mask = ((z >= fmt.min) & (z <= fmt.max)) if need_mask else None
        return y, mask

    return apply_fake_quant(x, run, grad)


class FormatFakeQuantize(FakeQuantizeBase):
    """Fake-quantize to an fmtlab element format with an observer-driven static scale.

    fmt: format or name (``"fp8_e4m3"``, ``"int4"``, ``"fp4_e2m1"``, ...), or ``quantizer``: an
    fmtlab Quantizer whose format and rounding are used (its granularity picks per-tensor or
    per-channel: a per-channel quantizer's axis becomes ``ch_axis``).
    ch_axis: None = per-tensor (default observer MovingAverageMinMaxObserver), an int = one
    scale per slice along that axis (default observer PerChannelMinMaxObserver).
    rounding / overflow: as ``Format.encode`` (overflow defaults to saturate, as QAT expects).
    grad: "ste" or "clipped". observer_kwargs go to the observer (e.g. averaging_constant).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, fmt: "Format | str | None" = None, observer=None, *, ch_axis: int | None = None,
                 rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
                 overflow: "Overflow | str | None" = Overflow.SATURATE, grad: str = "ste",
                 quantizer=None, factory_kwargs: dict | None = None, **observer_kwargs) -> None:
        super().__init__()
        if quantizer is not None:
            if fmt is not None:
                raise ValueError("pass either fmt= or quantizer=, not both")
            fmt = getattr(quantizer, "format", None) or getattr(quantizer, "fmt", None)
            rounding = getattr(quantizer, "rounding", rounding)
            gran = getattr(quantizer, "granularity", None)
            axis = getattr(gran, "axis", None)
            if ch_axis is None and axis is not None and "channel" in type(gran).__name__.lower():
                ch_axis = int(axis)
        if fmt is None:
            fmt = "fp8_e4m3"
        self.fmt = elementwise.as_format(fmt)  # (warmed: constants under torch.compile)
        self.quantizer = quantizer
        self.rounding = Rounding.parse(rounding)
        if self.rounding is Rounding.STOCHASTIC:
            raise ValueError("FormatFakeQuantize needs a deterministic rounding (stochastic "
                             "rounding needs a seed per call; use fmtlab.pytorch.fake_quantize)")
        self.overflow = None if overflow is None else Overflow.parse(overflow)
        self.fmt._resolve(self.rounding, self.overflow, "zero")  # validate once, early
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

    # ---- scale ------------------------------------------------------------------------------
    def _observed_scale(self) -> torch.Tensor:
        obs = self.activation_post_process
        amax = torch.maximum(obs.min_val.abs(), obs.max_val.abs()).to(torch.float32)
        s = amax / torch.tensor(self.fmt.max, dtype=torch.float32)
        return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s)).reshape(-1)

    def _broadcast_scale(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_per_channel:
            return self.scale.reshape(())
        shape = [1] * x.dim()
        shape[self.ch_axis] = -1
        return self.scale.reshape(shape)

    @torch.jit.export
    def calculate_qparams(self):  # type: ignore[override]
        """(scale, zero_point): the current static scale(s) and zeros."""
        return self.scale.clone(), torch.zeros_like(self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            s = self._observed_scale().to(self.scale.device)
            if self.scale.shape != s.shape:
                self.scale.resize_(s.shape)
                self.zero_point.resize_(s.shape)
                self.zero_point.zero_()
            self.scale.copy_(s)
        if self.fake_quant_enabled[0] == 1:
            x = scaled_fake_quant(x, self.fmt, self._broadcast_scale(x), rounding=self.rounding,
                                  overflow=self.overflow, grad=self.grad)
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
