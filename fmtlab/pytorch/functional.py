"""``fake_quantize(tensor, format_or_quantizer)``: the functional entry point of the plug-in."""

from __future__ import annotations

import numpy as np
import torch

from fmtlab.errors import FormatError
from fmtlab.formats import Format, NanInput, Overflow, Rounding
from fmtlab.pytorch._ops import fake_quant_values
from fmtlab.pytorch.autograd import apply_fake_quant
from fmtlab.pytorch.encoding import as_format
from fmtlab.pytorch.quantizers import TorchQuantizer
from fmtlab.pytorch.specs import as_torch_quantizer

__all__ = ["fake_quantize", "in_range_mask"]


def in_range_mask(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """The clipped-STE pass region of an unscaled format: True where x lies within the rounding
    boundaries beyond the extreme finite values (``fmt.grid.bounds[0] <= x <= bounds[-1]``,
    compared in float64; INT8: [-128.5, 127.5]), i.e. where x is not clipped by the comparison
    of ``QuantReport.clipped``; False at NaN."""
    x64 = x.to(torch.float64)
    b = fmt.grid.bounds
    return (x64 >= float(b[0])) & (x64 <= float(b[-1]))


@torch.compiler.disable
def _resolve(spec, rounding, overflow, seed, draws, nan, dtype: torch.dtype, device: torch.device,
             prime: bool) -> tuple[Format | None, TorchQuantizer | None]:
    """(format, None) or (None, quantizer) of ``spec`` with the call's overrides, resolved eagerly
    (never traced by ``torch.compile``: names are parsed and formats built with numpy). With
    ``prime`` (inside a compile) the result also runs once on a small tensor of ``dtype`` on
    ``device``, so every lazily built fact it reads (grids, code masks, scale formats' tables)
    exists before the compiled code reads it: a format's first use in a process may be compiled."""
    fmt = None
    if isinstance(spec, Format):
        fmt = as_format(spec)
    elif isinstance(spec, str):
        try:
            fmt = as_format(spec)
        except FormatError:
            fmt = None  # not a format name: a quantizer preset ("mxfp4", "int8_per_token", ...)
    if fmt is not None:
        if prime:
            dummy = torch.linspace(-1.0, 1.0, 64, dtype=dtype, device=device)
            fake_quant_values(dummy, fmt, Rounding.NEAREST_EVEN, None, nan="zero")
            in_range_mask(dummy, fmt)
        return fmt, None
    tq = as_torch_quantizer(spec)
    if rounding is not None or overflow is not None or nan is not NanInput.RAISE:
        stoch = rounding is not None and Rounding.parse(rounding) is Rounding.STOCHASTIC
        if stoch and seed is None and draws is None and tq.seed is None:
            raise ValueError("stochastic rounding needs seed= (int or numpy Generator) or draws=")
        # the numpy Quantizer wants an int seed with STOCHASTIC; the call's seed/draws win anyway
        qseed = (seed if isinstance(seed, int) else (tq.seed if tq.seed is not None else 0)) if stoch else None
        tq = tq.replace(rounding=rounding, overflow=overflow, seed=qseed,
                        nan=None if nan is NanInput.RAISE else nan)
    if prime:
        k = int(getattr(tq.granularity, "size", 0) or 32)
        dummy = torch.linspace(-1.0, 1.0, k * k, dtype=dtype, device=device).reshape(k, k)
        tq.fake_quantize_with_mask(dummy, seed=0 if tq.rounding is Rounding.STOCHASTIC else None, need_mask=True)
    return None, tq


def fake_quantize(x: torch.Tensor, spec, *, rounding: "Rounding | str | None" = None,
                  overflow: "Overflow | str | None" = None,
                  seed: "int | np.random.Generator | None" = None, draws=None,
                  nan: "NanInput | str" = NanInput.RAISE, grad: str = "ste",
                  method: str = "auto") -> torch.Tensor:
    """Fake-quantize ``x`` (any float dtype, CPU or CUDA) with a format or a quantizer.

    spec: an element format (``Format`` or registry name such as ``"fp8_e4m3"``; values are
    unscaled, e.g. INT8 rounds to integers) or a quantizer (a ``fmtlab.formats`` Quantizer, a
    :class:`fmtlab.pytorch.TorchQuantizer` or a preset name such as ``"mxfp4"``, ``"nvfp4"``,
    ``"int8_per_token"``), which brings its own scales, rounding and overflow.
    rounding / overflow / nan / seed / draws: as :func:`fmtlab.pytorch.elementwise.encode`
    (rounding defaults to NEAREST_EVEN for formats; for quantizers, None keeps theirs).
    grad: "ste" (straight-through) or "clipped" (zero gradient where the quantizer clips,
    the comparison of ``QuantReport.clipped``; see fmtlab.pytorch.autograd).
    The result has x's dtype and is bit-identical to the numpy path for float32/float64 input.
    """
    fmt, tq = _resolve(spec, rounding, overflow, seed, draws, nan, x.dtype, x.device,
                       torch.compiler.is_compiling())
    if fmt is not None:
        rnd = Rounding.NEAREST_EVEN if rounding is None else rounding

        def run(t: torch.Tensor, need_mask: bool):
            y = fake_quant_values(t, fmt, rnd, overflow, seed=seed, draws=draws,
                                              nan=nan, method=method)
            return y, (in_range_mask(t, fmt) if need_mask else None)

        return apply_fake_quant(x, run, grad)

    def run_q(t: torch.Tensor, need_mask: bool):
        return tq.fake_quantize_with_mask(t, seed=seed, draws=draws, need_mask=need_mask)

    return apply_fake_quant(x, run_q, grad)
