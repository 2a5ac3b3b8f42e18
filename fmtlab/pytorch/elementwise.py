"""Element-format encode / decode / fake-quant on tensors (CPU and CUDA), for every format.

Numeric convention: identical to the numpy path (``fmt.encode`` / ``fmt.quantize``; tests hold it
bit-exact); the algorithm and its optional per-family accelerations are described in
:mod:`fmtlab.pytorch.encoding` and :mod:`fmtlab.pytorch.cores`. Codes come back as torch.uint8 /
uint16 (the format's code dtype), decoded values as float64 or the requested dtype (rounded to
nearest even by torch's cast).
"""

from __future__ import annotations

import torch

from fmtlab.errors import FormatError
from fmtlab.formats import Format, NanInput, Overflow, Rounding
from fmtlab.pytorch._fastpaths import special_index
from fmtlab.pytorch._tables import code_dtype, torch_grid, values_table
from fmtlab.pytorch.cores import torch_core
from fmtlab.pytorch.encoding import (
    METHODS, as_format, conventions, encode_codes, nan_error, stochastic_draws, warm,
)

__all__ = ["encode", "decode", "quantize", "stochastic_draws", "as_format", "warm", "METHODS"]

SeedLike = "int | np.random.Generator | None"


def encode(x: torch.Tensor, fmt: "Format | str", rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
           overflow: "Overflow | str | None" = None, *, seed: SeedLike = None, draws=None,
           nan: "NanInput | str" = NanInput.RAISE, method: str = "auto") -> torch.Tensor:
    """Round ``x`` (any real dtype, any device) to ``fmt`` and return its codes.

    Bit-identical to ``fmt.encode(x.numpy(), rounding, overflow, seed, nan)`` for every format
    (a format without a torch core takes the exact table path). Codes have the format's code
    dtype (torch.uint8 / uint16) and ``x``'s shape and device.
    rounding / overflow / nan: as :meth:`fmtlab.formats.Format.encode`. STOCHASTIC takes ``seed``
    (int or numpy Generator; draws made by numpy on the CPU, then moved) or ``draws`` (one float64
    uniform [0, 1) per element, C order). ``method``: see :data:`METHODS` (all are exact; they
    differ in speed only).
    Not differentiable (see ``fmtlab.pytorch.fake_quantize``).
    """
    fmt = as_format(fmt)
    codes = encode_codes(x, fmt, rounding, overflow, seed=seed, draws=draws, nan=nan, method=method)
    return codes.to(code_dtype(fmt)).reshape(x.shape)


def decode(codes: torch.Tensor, fmt: "Format | str", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Value of each code (float64 by default; other float dtypes by torch's round-to-nearest cast).

    Codes must be integers in [0, 2**bits); out-of-range codes raise FormatError.
    """
    fmt = as_format(fmt)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    c = codes.to(torch.int64)
    if c.numel():
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= (1 << fmt.bits):
            raise FormatError(f"{fmt.name}: codes must lie in [0, {1 << fmt.bits}); got min {lo}, max {hi}")
    return torch_grid(fmt, c.device).values[c].to(dtype)


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float64


def quantize(x: torch.Tensor, fmt: "Format | str", rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
             overflow: "Overflow | str | None" = None, *, seed: SeedLike = None, draws=None,
             nan: "NanInput | str" = NanInput.RAISE, method: str = "auto") -> torch.Tensor:
    """decode(encode(x)) in x's float dtype (float64 for integer input); no gradient.

    For float32/float64 input this equals ``fmt.quantize(x.numpy(), ...)`` bit for bit.
    """
    fmt = as_format(fmt)
    out = _out_dtype(x)
    if method == "auto" or method == "arith":
        mode = Rounding.parse(rounding)
        core = torch_core(fmt)
        if (core.fast_values is not None and mode is not Rounding.STOCHASTIC
                and isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64)):
            _, _, nan_p = conventions(fmt, rounding, overflow, nan)
            if nan_p is NanInput.RAISE and not fmt.has_nan and not torch.compiler.is_compiling():
                bad = int(torch.isnan(x).sum())
                if bad:
                    raise nan_error(fmt, bad)
            return core.fast_values(x.detach(), fmt, mode, nan_p is NanInput.ZERO)
        twin = None
        if method == "auto" and core.cast_twin is not None and isinstance(x, torch.Tensor):
            twin = core.cast_twin(fmt, mode, x)
        if twin is not None:  # fused: values straight from the cast, table rules for the rest
            conventions(fmt, rounding, overflow, nan)
            xw = x.detach().reshape(-1).to(torch.float32)
            y = xw.to(twin).to(out)
            idx = special_index(xw, fmt)
            if idx.numel():
                c = encode_codes(xw[idx], fmt, rounding, overflow, nan=nan, method="table")
                y[idx] = values_table(fmt, c.device, out)[c.long()]
            return y.reshape(x.shape)
    c = encode_codes(x, fmt, rounding, overflow, seed=seed, draws=draws, nan=nan, method=method)
    return values_table(fmt, c.device, out)[c.long()].reshape(x.shape)
