"""Element-format encode / decode / fake-quant written with torch ops (CPU and CUDA).

Numeric convention (identical to the numpy/numba path, ``fmt.encode``; tests hold it bit-exact):
- every input is widened to float64 (exact for float16/bfloat16/float32) and rounded once;
- the generic path is the table algorithm of ``fmtlab.formats._table_kernel``: find the largest
  grid value L <= x with ``torch.searchsorted`` on the extended grid, pick L or its upper
  neighbour U by the rounding mode (ties at ``bounds`` by the ``even`` flags, else to the smaller
  magnitude, NEAREST_AWAY to the larger), then map the virtual ends to the overflow codes and
  apply the Inf / NaN / -0 rules, in the same order as the numba kernel;
- STOCHASTIC: x goes up iff draw < (x - L) / (U - L), computed in float64; the draws are
  ``make_rng(seed).random(x.numel())`` (numpy, float64, C order) so a seed gives the numba result,
  or an explicit ``draws`` tensor;
- faster exact routes for the same rules: torch's own casts for in-range inputs of formats with
  a torch twin dtype (fp8 x4, fp16, bf16; CPU, NEAREST_EVEN) and the arithmetic minifloat/INT
  path (``_fastpaths``), chosen by ``method`` (see :data:`METHODS`);
- E8M0 mirrors its own kernel (``fmtlab.formats.e8m0``: frexp, ties up, below 2**-127 to code 0).
Codes come back as torch.uint8 / uint16 (the format's code dtype), decoded values as float64 or
the requested dtype (rounded to nearest even by torch's cast).
"""

from __future__ import annotations

import numpy as np
import torch

from fmtlab.errors import FormatError
from fmtlab.formats import E8M0, Format, IntFormat, NanInput, Overflow, Rounding, get_format
from fmtlab.formats.base import make_rng
from fmtlab.pytorch import _fastpaths
from fmtlab.pytorch._tables import code_dtype, torch_grid, values_table

__all__ = ["encode", "decode", "quantize", "stochastic_draws", "as_format", "METHODS"]

#: "auto": torch cast twin (CPU, NEAREST_EVEN, fp8/fp16/bf16) > arithmetic path > table path;
#: "arith": arithmetic minifloat/INT path where it exists, else table; "table": generic path only.
METHODS = ("auto", "arith", "table")

SeedLike = "int | np.random.Generator | None"


def as_format(fmt: "Format | str") -> Format:
    """A Format from a Format or a registry name (its derived tables computed, see :func:`warm`)."""
    return warm(get_format(fmt))


def warm(fmt: Format) -> Format:
    """Compute the format's lazily derived facts now (grid, range, specials), so that code traced
    by ``torch.compile`` reads them as constants instead of tracing their numpy construction."""
    fmt.grid, fmt.max, fmt.min, fmt.values()  # noqa: B018 - cached_property side effects
    return fmt


def stochastic_draws(n: int, seed: "int | np.random.Generator | None", draws, device) -> torch.Tensor:
    """Uniform [0, 1) draws for ``n`` elements as float64 on ``device``.

    ``draws`` (a tensor or array with ``n`` elements, C order) wins; otherwise ``seed`` (an int or
    a numpy Generator, consumed exactly as ``fmt.encode`` consumes it: ``rng.random(n)``).
    """
    if draws is not None:
        d = torch.as_tensor(draws).to(device=device, dtype=torch.float64).reshape(-1)
        if d.numel() != n:
            raise ValueError(f"draws must hold one value per element: got {d.numel()} for {n} elements")
        return d
    if isinstance(seed, torch.Generator):
        raise TypeError("seed must be an int or numpy.random.Generator (the numpy path's draws); "
                        "for torch-generated randomness pass draws=torch.rand(..., dtype=torch.float64)")
    r = make_rng(seed).random(n)
    return torch.from_numpy(r).to(device)


def _float64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64).reshape(-1)


def _table_core(xf: torch.Tensor, fmt: Format, mode: Rounding, sp: list[int],
                r: torch.Tensor | None) -> torch.Tensor:
    """The search-and-pick part of the table kernel on flat float64 ``xf`` -> int32 codes, valid
    for inputs inside the extended grid (the rest is fixed by :func:`_overrides`)."""
    g = torch_grid(fmt, xf.device)
    n = g.vals.numel()
    tz = mode is Rounding.TOWARD_ZERO
    # lo = largest i with vals[i] <= x, clamped to a valid interval (out-of-range handled later)
    lo = (torch.searchsorted(g.vals, xf, right=True) - 1).clamp_(0, n - 2)
    L = g.vals[lo]
    U = g.vals[lo + 1]
    if tz:
        up = xf <= 0                     # j = lo if x > 0 else lo + 1
    elif mode is Rounding.STOCHASTIC:
        up = r < (xf - L) / (U - L)
    else:
        m = g.bounds[lo]
        up = xf > m
        smaller_is_lo = L.abs() < U.abs()
        if mode is Rounding.NEAREST_EVEN:
            e_lo, e_hi = g.even[lo], g.even[lo + 1]
            tie_up = torch.where(e_lo != e_hi, e_hi, ~smaller_is_lo)
        else:  # NEAREST_AWAY
            tie_up = smaller_is_lo
        up = torch.where(xf == m, tie_up, up)
    up = up & (xf != L)
    c = g.codes[lo + up.to(lo.dtype)]
    c = torch.where(c == -2, sp[6] if tz else sp[4], c)
    c = torch.where(c == -1, sp[7] if tz else sp[5], c)
    if sp[9] >= 0:
        c = torch.where((c == sp[8]) & (xf < 0), sp[9], c)
    return c


def _overrides(c: torch.Tensor, x: torch.Tensor, neg: torch.Tensor, fmt: Format, tz: bool,
               sp: list[int]) -> torch.Tensor:
    """Range, Inf, NaN and -0 rules of the numba kernel, in its order (``x`` flat, any float
    dtype holding the grid ends exactly)."""
    g = fmt.grid
    c = torch.where(x < float(g.vals[0]), sp[7] if tz else sp[5], c)
    c = torch.where(x >= float(g.vals[-1]), sp[6] if tz else sp[4], c)
    c = torch.where(x == float("inf"), sp[2], c)
    c = torch.where(x == float("-inf"), sp[3], c)
    nan = torch.isnan(x)
    c = torch.where(nan & neg, sp[1], c)
    c = torch.where(nan & ~neg, sp[0], c)
    if sp[9] >= 0:
        c = torch.where((x == 0) & neg, sp[9], c)
    return c


def _encode_e8m0(xf: torch.Tensor, mode: Rounding, overflow: Overflow,
                 r: torch.Tensor | None) -> torch.Tensor:
    """Mirror of ``E8M0._encode_array``: nearest power of two (ties up; the float32 subnormal range
    too), inputs below 2**-127 to code 0."""
    ok = torch.isfinite(xf) & (xf > 0)
    xs = torch.where(ok, xf, 1.0)
    mant, exp = torch.frexp(xs)          # xs = mant * 2**exp, mant in [0.5, 1)
    m2 = 2 * mant
    e = exp - 1
    if mode is Rounding.TOWARD_ZERO:
        up = torch.zeros_like(ok)
    elif mode is Rounding.STOCHASTIC:
        up = r < (m2 - 1.0)
    else:
        up = m2 >= 1.5
    code = e + 127 + up.to(torch.int32)
    code = torch.where(code > 254, 254 if overflow is Overflow.SATURATE else 255, code)
    code = code.clamp(min=0)
    return torch.where(ok, code, 255)


def encode(x: torch.Tensor, fmt: "Format | str", rounding: "Rounding | str" = Rounding.NEAREST_EVEN,
           overflow: "Overflow | str | None" = None, *, seed: SeedLike = None, draws=None,
           nan: "NanInput | str" = NanInput.RAISE, method: str = "auto") -> torch.Tensor:
    """Round ``x`` (any real dtype, any device) to ``fmt`` and return its codes.

    Bit-identical to ``fmt.encode(x.numpy(), rounding, overflow, seed, nan)``. Codes have the
    format's code dtype (torch.uint8 / uint16) and ``x``'s shape and device.
    rounding / overflow / nan: as :meth:`fmtlab.formats.Format.encode`. STOCHASTIC takes ``seed``
    (int or numpy Generator; draws made by numpy on the CPU, then moved) or ``draws`` (one float64
    uniform [0, 1) per element, C order). ``method``: see :data:`METHODS` (all are exact; they
    differ in speed only).
    Not differentiable (see ``fmtlab.pytorch.fake_quantize``).
    """
    fmt = as_format(fmt)
    codes = _encode_codes(x, fmt, rounding, overflow, seed=seed, draws=draws, nan=nan, method=method)
    return codes.to(code_dtype(fmt)).reshape(x.shape)


def _encode_codes(x: torch.Tensor, fmt: Format, rounding, overflow, *, seed, draws, nan,
                  method: str = "auto") -> torch.Tensor:
    """Flat int32 codes (-1 never returned: NaN without a code raises)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError("complex input cannot be encoded")
    mode, overflow, nan = fmt._resolve(rounding, overflow, nan)  # same checks/messages as numpy
    r = None
    if mode is Rounding.STOCHASTIC:
        r = stochastic_draws(x.numel(), seed, draws, x.device)
    if isinstance(fmt, E8M0):
        return _encode_e8m0(_float64(x), mode, overflow, r)
    twin = _fastpaths.torch_twin(fmt, mode, x) if method == "auto" else None
    if twin is not None:
        xw = x.detach().reshape(-1).to(torch.float32)
        view = torch.uint8 if fmt.bits <= 8 else torch.int16
        c = xw.to(twin).view(view).to(torch.int32) & ((1 << fmt.bits) - 1)
        idx = _fastpaths.special_index(xw, fmt)
        if idx.numel():
            c[idx] = _encode_codes(xw[idx], fmt, mode, overflow, seed=None, draws=None, nan=nan,
                                   method="table")
        return c
    sp = [int(v) for v in fmt.special_codes(overflow, nan)]
    neg = torch.signbit(x.detach().reshape(-1)) if x.is_floating_point() else x.reshape(-1) < 0
    if method != "table" and _fastpaths.eligible(fmt, mode):
        c, xw = _fastpaths.encode_core(x, neg, fmt, mode, sp)
    else:
        xw = _float64(x)
        c = _table_core(xw, fmt, mode, sp, r)
    tz = mode is Rounding.TOWARD_ZERO
    if xw.is_cuda or torch.compiler.is_compiling():
        c = _overrides(c, xw, neg, fmt, tz, sp)  # branch-free: no host sync
    else:
        # CPU: only the few special elements (NaN, +/-Inf, out of range, zeros) need the rules
        g = fmt.grid
        special = ~((xw > float(g.vals[0])) & (xw < float(g.vals[-1])))
        if sp[9] >= 0:
            special |= xw == 0
        idx = special.nonzero().squeeze(1)
        if idx.numel():
            c[idx] = _overrides(c[idx], xw[idx], neg[idx], fmt, tz, sp)
    if sp[0] < 0 or sp[1] < 0:
        bad = int((c < 0).sum())
        if bad:
            raise FormatError(f"{fmt.name} has no NaN code and the input holds {bad} NaN value(s); "
                              "clean the input or pass nan='zero'")
    return c


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
    twin = None
    if method == "auto" and isinstance(x, torch.Tensor) and not isinstance(fmt, E8M0):
        twin = _fastpaths.torch_twin(fmt, Rounding.parse(rounding), x)
    if (method != "table" and isinstance(fmt, IntFormat) and x.dtype in (torch.float32, torch.float64)
            and Rounding.parse(rounding) is not Rounding.STOCHASTIC):
        _, _, nan_p = fmt._resolve(rounding, overflow, nan)
        if nan_p is NanInput.RAISE and not torch.compiler.is_compiling():
            bad = int(torch.isnan(x).sum())
            if bad:
                raise FormatError(f"{fmt.name} has no NaN code and the input holds {bad} NaN "
                                  "value(s); clean the input or pass nan='zero'")
        return _fastpaths.int_values(x.detach(), fmt, Rounding.parse(rounding), nan_p is NanInput.ZERO)
    if twin is not None:  # fused: values straight from the cast, table rules for the rest
        fmt._resolve(rounding, overflow, nan)
        xw = x.detach().reshape(-1).to(torch.float32)
        y = xw.to(twin).to(out)
        idx = _fastpaths.special_index(xw, fmt)
        if idx.numel():
            c = _encode_codes(xw[idx], fmt, rounding, overflow, seed=None, draws=None, nan=nan,
                              method="table")
            y[idx] = values_table(fmt, c.device, out)[c.long()]
        return y.reshape(x.shape)
    c = _encode_codes(x, fmt, rounding, overflow, seed=seed, draws=draws, nan=nan, method=method)
    return values_table(fmt, c.device, out)[c.long()].reshape(x.shape)


def fake_quant_values(x: torch.Tensor, fmt: Format, rounding, overflow, *, seed=None, draws=None,
                      nan="raise", method: str = "auto") -> torch.Tensor:
    """:func:`quantize` routed through the registered custom op where possible (deterministic
    rounding, default method), so that ``torch.compile`` treats it as one opaque exact op."""
    mode = Rounding.parse(rounding)
    if mode is Rounding.STOCHASTIC or method != "auto" or seed is not None or draws is not None:
        return quantize(x, fmt, mode, overflow, seed=seed, draws=draws, nan=nan, method=method)
    from fmtlab.pytorch._ops import quantize_op

    return quantize_op(x, fmt, mode, overflow, nan)
