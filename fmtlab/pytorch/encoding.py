"""Element encode in torch ops: the exact table path for every format, plus the optional cores.

Numeric convention (identical to the numpy path, ``fmt.encode``; tests hold it bit-exact):
- every input is widened to float64 (exact for float16/bfloat16/float32) and rounded once;
- the table path (any format, no handler needed) is the algorithm of ``Format.encode_table``:
  find the largest grid value L <= x with ``torch.searchsorted`` on the extended grid
  (``fmt.grid``), pick L or its upper neighbour U by the rounding mode (ties at ``bounds`` by the
  ``even`` flags, else to the smaller magnitude, NEAREST_AWAY to the larger), map the virtual
  ends to the overflow codes and apply the Inf / NaN / -0 rules of the specials vector
  ``fmt.special_codes(overflow, nan)``, in the same order as the numba table kernel;
  TOWARD_ZERO takes the smaller magnitude of L and U (U on equal magnitudes), which is
  truncation and, inside an interval L < 0 < U of a format without zero, the oracle's rule;
- STOCHASTIC: x goes up iff draw < (x - L) / (U - L), computed in float64; the draws are
  ``make_rng(seed).random(x.numel())`` (numpy, float64, C order) so a seed gives the numpy
  result, or an explicit ``draws`` tensor;
- a family's ``Subsystem.TORCH`` handler (:class:`fmtlab.pytorch.cores.TorchCore`) may replace
  the search by a cast twin or arithmetic for in-range inputs (same codes), or state its own
  encode rule where numpy's is not the table (E8M0).
Every op is device-agnostic (no host sync on CUDA or under ``torch.compile``: the special rules
then run branch-free over all elements).
"""

from __future__ import annotations

import numpy as np
import torch

from fmtlab.errors import FormatError
from fmtlab.formats import Format, NanInput, Overflow, Rounding, get_format
from fmtlab.formats.base import check_exact_in_float64, make_rng
from fmtlab.pytorch._fastpaths import special_index
from fmtlab.pytorch._tables import torch_grid
from fmtlab.pytorch.cores import torch_core

__all__ = ["METHODS", "as_format", "warm", "conventions", "stochastic_draws", "table_codes",
           "apply_overrides", "encode_codes", "nan_error"]

#: "auto": torch cast twin (CPU, NEAREST_EVEN, fp8/fp16/bf16) > arithmetic path > table path;
#: "arith": arithmetic core where the family has one, else table; "table": the table path only.
METHODS = ("auto", "arith", "table")


def as_format(fmt: "Format | str") -> Format:
    """A Format from a Format or a registry name (its derived tables computed, see :func:`warm`)."""
    return warm(get_format(fmt))


def warm(fmt: Format) -> Format:
    """Compute the format's lazily derived facts now (grid, range, specials), so that code traced
    by ``torch.compile`` reads them as constants instead of tracing their numpy construction."""
    fmt.grid, fmt.max, fmt.min, fmt.values()  # noqa: B018 - cached_property side effects
    return fmt


def conventions(fmt: Format, rounding, overflow, nan) -> tuple[Rounding, Overflow, NanInput]:
    """(rounding, overflow, nan) parsed and checked against ``fmt`` exactly as ``fmt.encode``
    does (same errors, same messages; overflow None = the format's default)."""
    return fmt.resolve_conventions(rounding, overflow, nan)  # the numpy path's own check (one definition)


def nan_error(fmt: Format, bad: int) -> FormatError:
    """The error of a NaN input for a format without a NaN code (numpy's message)."""
    return FormatError(f"{fmt.name} has no NaN code and the input holds {bad} NaN value(s); "
                       "clean the input or pass nan='zero'")


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


def table_codes(xf: torch.Tensor, fmt: Format, mode: Rounding, sp: list[int],
                r: torch.Tensor | None) -> torch.Tensor:
    """The search-and-pick part of the table kernel on flat float64 ``xf`` -> int32 codes, valid
    for inputs inside the extended grid (the rest is fixed by :func:`apply_overrides`)."""
    g = torch_grid(fmt, xf.device)
    n = g.vals.numel()
    tz = mode is Rounding.TOWARD_ZERO
    # lo = largest i with vals[i] <= x, clamped to a valid interval (out-of-range handled later)
    lo = (torch.searchsorted(g.vals, xf, right=True) - 1).clamp_(0, n - 2)
    L = g.vals[lo]
    U = g.vals[lo + 1]
    if tz:  # the smaller magnitude (x > 0 <=> |L| < |U| unless L < 0 < U: a format without zero)
        up = L.abs() >= U.abs()
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


def apply_overrides(c: torch.Tensor, x: torch.Tensor, neg: torch.Tensor, fmt: Format, tz: bool,
                    sp: list[int]) -> torch.Tensor:
    """Range, Inf, NaN and -0 rules of the table kernel, in its order (``x`` flat, any float
    dtype holding the grid ends exactly; ``sp`` = ``fmt.special_codes(overflow, nan)``)."""
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


def check_exact_int64(x: torch.Tensor) -> None:
    """FormatError if an int64 tensor holds a value float64 cannot hold exactly (|v| > 2**53 off
    the float64 grid): it would be rounded twice. The numpy path's rule
    (:func:`fmtlab.formats.base.check_exact_in_float64`), checked on the few large values only.
    Under ``torch.compile`` (no data-dependent raise) the check is skipped."""
    if x.dtype != torch.int64 or torch.compiler.is_compiling():
        return
    flat = x.detach().reshape(-1)
    big = flat[(flat > (1 << 53)) | (flat < -(1 << 53))]
    if big.numel():
        check_exact_in_float64(big.cpu().numpy())


def encode_codes(x: torch.Tensor, fmt: Format, rounding, overflow, *, seed=None, draws=None,
                 nan="raise", method: str = "auto") -> torch.Tensor:
    """Flat int32 codes of ``x`` (any shape, real dtype, device), as ``fmt.encode`` computes them.

    ``method``: see :data:`METHODS` (all exact). A NaN input of a format without a NaN code
    raises FormatError under nan='raise' (codes -1 are never returned).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError("complex input cannot be encoded")
    mode, overflow, nan = conventions(fmt, rounding, overflow, nan)
    check_exact_int64(x)
    core = torch_core(fmt)
    r = None
    if mode is Rounding.STOCHASTIC:
        r = stochastic_draws(x.numel(), seed, draws, x.device)
    if core.encode is not None:
        return core.encode(_float64(x), fmt, mode, overflow, r)
    twin = core.cast_twin(fmt, mode, x) if (method == "auto" and core.cast_twin) else None
    if twin is not None:
        xw = x.detach().reshape(-1).to(torch.float32)
        view = torch.uint8 if fmt.bits <= 8 else torch.int16
        c = xw.to(twin).view(view).to(torch.int32) & ((1 << fmt.bits) - 1)
        idx = special_index(xw, fmt)
        if idx.numel():
            c[idx] = encode_codes(xw[idx], fmt, mode, overflow, nan=nan, method="table")
        return c
    sp = [int(v) for v in fmt.special_codes(overflow, nan)]
    neg = torch.signbit(x.detach().reshape(-1)) if x.is_floating_point() else x.reshape(-1) < 0
    if method != "table" and core.fast_codes is not None and core.eligible(fmt, mode):
        c, xw = core.fast_codes(x, neg, fmt, mode, sp)
    else:
        xw = _float64(x)
        c = table_codes(xw, fmt, mode, sp, r)
    tz = mode is Rounding.TOWARD_ZERO
    if xw.is_cuda or torch.compiler.is_compiling() or xw.device.type != "cpu":
        c = apply_overrides(c, xw, neg, fmt, tz, sp)  # branch-free: no host sync
    else:
        # CPU: only the few special elements (NaN, +/-Inf, out of range, zeros) need the rules
        g = fmt.grid
        special = ~((xw > float(g.vals[0])) & (xw < float(g.vals[-1])))
        if sp[9] >= 0:
            special |= xw == 0
        idx = special.nonzero().squeeze(1)
        if idx.numel():
            c[idx] = apply_overrides(c[idx], xw[idx], neg[idx], fmt, tz, sp)
    if sp[0] < 0 or sp[1] < 0:
        bad = int((c < 0).sum())
        if bad:
            raise nan_error(fmt, bad)
    return c
