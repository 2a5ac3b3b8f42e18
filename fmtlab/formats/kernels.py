"""Element kernels of scaled arrays: the fast numba path where a format has a kernel plan, the exact
table path for every format, bit-identical where both exist.

Numeric convention (both paths): ``y = x / s`` in x's precision (float32 or float64; for
power-of-two scales ``x * (1/s)``, the same number), the code of y (float64(y) rounded once, by
the format's rounding; for INT zero points the grid shifted by -z, ties to an even y-integer), and
for fake-quant ``fl(fl64(v - z) * s)`` with v the element value (float64 product, then x's dtype;
exact before the final rounding wherever v is a float32 number). NaN inputs of a format without
NaN raise (nan='raise') or read as 0 (nan='zero'). The fast kernels are held to the table kernel
``_table_kernel.encode_table`` (the reference) by the tests.

Kernel choice: ``params`` asks the capability registry for the family's ``Subsystem.KERNEL``
handler (``kernel_plans``); no handler, or a handler that answers None, means the table path.
``reference_path()`` forces the table path everywhere (tests, debugging). Importing this module
does not import numba: the kernels load on first use.

Layouts (how a scaled array maps to its scales), over the flat C-order data:
  Rows(Q, C)  element i has scale slot (i // Q) % C   (per-tensor: Q = n, C = 1; per-token and
              per-channel on axis 0: Q = row length; groups along the last axis: Q = group size)
  Cols(C)     x is [P, C] and column c has scale slot c   (per-channel on the last axis)
"""

from __future__ import annotations

import contextlib
import contextvars
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats import _fast_kernels as K
from fmtlab.formats.capabilities import Subsystem, find_handler
from fmtlab.formats.kernel_plans import Plan, PlanInputs, generic
from fmtlab.formats.base import Format, make_rng
from fmtlab.formats.rounding import NanInput, Overflow, Rounding, ROUNDING_ID


__all__ = ["FastKernelRouting", "params", "kernel_plan", "reference_path", "Plan", "Rows", "Cols", "generic",
           "scale_args", "encode_fast", "quantize_fast", "encode_scaled", "fq_scaled", "fq_vector"]


class Rows(NamedTuple):
    Q: int
    C: int


class Cols(NamedTuple):
    C: int


_REFERENCE = contextvars.ContextVar("fmtlab_kernels_reference", default=False)


@contextlib.contextmanager
def reference_path():
    """Within the block, every element kernel choice (``params``) answers None: encode,
    fake-quant and every Quantizer granularity run on the exact table path (block scales are
    computed as usual). The named slow reference the fast kernels are held to."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def kernel_plan(fmt: "Format", rounding: Rounding, overflow: Overflow, nan: NanInput) -> Plan | None:
    """The fast-kernel plan of ``fmt`` under these conventions from its family's KERNEL handler
    (None: no handler, or the handler does not cover them); ignores ``reference_path``."""
    handler = find_handler(Subsystem.KERNEL, fmt)
    if handler is None:
        return None
    return _plan(handler, fmt, rounding, overflow, nan)


def params(fmt: "Format", rounding: Rounding, overflow: Overflow, nan: NanInput) -> Plan | None:
    """The element kernel plan to use (None: the table path; always None in ``reference_path``)."""
    if _REFERENCE.get():
        return None
    return kernel_plan(fmt, rounding, overflow, nan)


@lru_cache(maxsize=256)
def _plan(handler, fmt, rounding, overflow, nan) -> Plan | None:
    spec = [int(c) for c in fmt.special_codes(overflow, nan)]
    vals = np.ascontiguousarray(fmt.values(), dtype=np.float64)
    vals.setflags(write=False)
    return handler(fmt, PlanInputs(ROUNDING_ID[rounding], spec, vals, spec[0] < 0))


def _nan_error(fmt: "Format", bad: int) -> FormatError:
    return FormatError(f"{fmt.name} has no NaN code and the input holds {bad} NaN value(s); "
                       "clean the input or pass nan='zero'")


def _rand_arg(rand, n: int) -> np.ndarray:
    if rand is None:
        return np.zeros(1)
    r = np.ascontiguousarray(rand, dtype=np.float64).reshape(-1)
    if r.shape[0] != n:
        raise ValueError(f"stochastic rounding needs one draw per element: {r.shape[0]} draws "
                         f"for {n} elements")
    return r


def scale_args(scales, zps, dtype, pow2: bool):
    """(scales, reciprocals, zero points) in the data's dtype, and whether to multiply by the
    reciprocals: only for powers of two whose reciprocal the dtype holds (2**-149 has none)."""
    s = np.ascontiguousarray(scales, dtype=dtype).reshape(-1)
    if pow2:
        with np.errstate(over="ignore", divide="ignore"):
            inv = (1.0 / s.astype(np.float64)).astype(dtype)
        pow2 = bool(np.all(np.isfinite(inv)))
    inv = inv if pow2 else s
    z = np.zeros(1, dtype=dtype) if zps is None else np.ascontiguousarray(zps, dtype=dtype).reshape(-1)
    return s, inv, z, pow2


def _flat(x: np.ndarray) -> np.ndarray:
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"element kernels take float32 or float64 arrays, got {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1)


def _run_encode(plan, flat, layout, s, inv, z, pow2, r, want_codes, want_vals):
    n = flat.shape[0]
    codes = np.empty(n if want_codes else 1, np.uint16)
    vals = np.empty(n if want_vals else 1, flat.dtype)
    if not n:
        return codes, vals, 0
    g = generic(plan)
    if isinstance(layout, Cols):
        bad = K.encode_cols(*g, flat, codes, vals, want_codes, want_vals, layout.C, s, inv, z, pow2, r)
    else:
        bad = K.encode_rows(*g, flat, codes, vals, want_codes, want_vals, max(layout.Q, 1), layout.C,
                            s, inv, z, pow2, r)
    return codes, vals, bad


# ---- the exact table path -------------------------------------------------------------------
def _slot_grid(flat: np.ndarray, layout) -> tuple[np.ndarray, np.ndarray]:
    """(x as a 2-D view, slot index per row (Rows) or per column (Cols))."""
    n = flat.shape[0]
    if isinstance(layout, Cols):
        return flat.reshape(-1, layout.C), np.arange(layout.C)
    Q = max(layout.Q, 1)
    if n % Q:
        raise ValueError(f"row layout Q={Q} does not divide {n} elements")
    return flat.reshape(n // Q, Q), np.arange(n // Q) % layout.C


def _per_slot(a: np.ndarray, slots: np.ndarray, cols: bool) -> np.ndarray:
    """Per-slot values broadcast against the 2-D view (a length-1 array applies to all slots)."""
    v = a[slots] if a.shape[0] > 1 else np.broadcast_to(a, slots.shape)
    return v[None, :] if cols else v[:, None]


def _shifted_grid(fmt: "Format", z: float):
    """The format's grid shifted by -z (zero point z), ties by the parity of the shifted value."""
    g = fmt.grid
    if z == 0:
        return g.vals, g.bounds, g.even.astype(np.uint8)
    vals = g.vals - z
    if not np.all(vals == np.rint(vals)):
        raise FormatError(f"zero points need an integer grid; {fmt.name} has non-integer values")
    return vals, g.bounds - z, (np.mod(vals, 2) == 0).astype(np.uint8)


def _table_codes(fmt, y64, neg, ze, r, mode, spec) -> tuple[np.ndarray, int]:
    """int64 codes of the flat float64 y (zero point ze per element or None) by the table kernel."""
    from fmtlab.formats._table_kernel import encode_table

    out = np.empty(y64.shape, np.int64)
    stoch = r.shape[0] == y64.shape[0]
    if ze is None or not np.any(ze):
        vals, bounds, even = _shifted_grid(fmt, 0.0)
        bad = encode_table(y64, neg, r, vals, fmt.grid.codes, bounds, even, mode, spec, out)
        return out, bad
    uz, which = np.unique(ze, return_inverse=True)
    order = np.argsort(which, kind="stable")
    cuts = np.searchsorted(which[order], np.arange(uz.size + 1))
    bad = 0
    for k, zv in enumerate(uz):
        idx = order[cuts[k]:cuts[k + 1]]
        vals, bounds, even = _shifted_grid(fmt, float(zv))
        sub = np.empty(idx.size, np.int64)
        bad += encode_table(np.ascontiguousarray(y64[idx]), np.ascontiguousarray(neg[idx]),
                            np.ascontiguousarray(r[idx]) if stoch else r, vals, fmt.grid.codes,
                            bounds, even, mode, spec, sub)
        out[idx] = sub
    return out, bad


def _run_table(fmt, flat, layout, s, inv, z, pow2, r, rounding, overflow, nan, want_vals):
    """(codes int64, fake-quant values or None, bad) of the table path, same arithmetic as the
    fast kernels (see the module docstring)."""
    if flat.shape[0] == 0:
        return np.zeros(0, np.int64), (np.zeros(0, flat.dtype) if want_vals else None), 0
    X, slots = _slot_grid(flat, layout)
    cols = isinstance(layout, Cols)
    with np.errstate(all="ignore"):
        y = X * _per_slot(inv, slots, cols) if pow2 else X / _per_slot(s, slots, cols)
    y = np.ascontiguousarray(y).reshape(-1)
    neg = np.signbit(y)
    zflat = None
    if np.any(z):
        zflat = np.broadcast_to(_per_slot(z.astype(np.float64), slots, cols), X.shape).reshape(-1)
    spec = fmt.special_codes(overflow, nan)
    y64 = y.astype(np.float64)
    if zflat is not None and spec[0] >= 0 and not fmt.has_nan:
        y64 = np.where(np.isnan(y64), 0.0, y64)  # nan='zero' reads NaN as 0, i.e. y = 0
        neg = neg & ~np.isnan(y)
    codes, bad = _table_codes(fmt, y64, neg, zflat, r, ROUNDING_ID[rounding], spec)
    if not want_vals:
        return codes, None, bad
    v = fmt.values()[np.maximum(codes, 0)]
    if zflat is not None:
        v = v - zflat
    with np.errstate(all="ignore"):
        s64 = np.broadcast_to(_per_slot(s.astype(np.float64), slots, cols), X.shape).reshape(-1)
        out = (v * s64).astype(flat.dtype)
    return codes, out, bad


# ---- public entry points --------------------------------------------------------------------
def _prepare(fmt, x, scales, zps, pow2, rounding, overflow, nan, rand):
    overflow = fmt.default_overflow if overflow is None else overflow
    plan = params(fmt, rounding, overflow, nan)
    flat = _flat(x)
    s, inv, z, pow2 = scale_args(scales, zps, flat.dtype, pow2)
    r = _rand_arg(rand, flat.shape[0]) if rounding is Rounding.STOCHASTIC else np.zeros(1)
    return plan, overflow, flat, s, inv, z, r, pow2


def encode_scaled(fmt: "Format", x: np.ndarray, layout, scales, zps=None, *, pow2: bool = False,
                  rounding: Rounding = Rounding.NEAREST_EVEN, overflow: Overflow | None = None,
                  nan: NanInput = NanInput.RAISE, rand=None) -> np.ndarray:
    """Codes of ``x / scale`` (+ zero point for INT) in x's shape; see the module docstring.

    ``x / s`` is computed in x's precision (float32 or float64); pow2=True promises every scale
    is a power of two (then x * (1/s) is used, which is the same number). Any format: the fast
    kernels where it has a plan, else the table path (same codes).
    """
    plan, overflow, flat, s, inv, z, r, pow2 = _prepare(fmt, x, scales, zps, pow2, rounding,
                                                         overflow, nan, rand)
    if plan is None:
        codes, _, bad = _run_table(fmt, flat, layout, s, inv, z, pow2, r, rounding, overflow, nan, False)
    else:
        codes, _, bad = _run_encode(plan, flat, layout, s, inv, z, pow2, r, True, False)
    if bad:
        raise _nan_error(fmt, bad)
    return codes.astype(fmt.code_dtype, copy=False).reshape(x.shape)


def fq_scaled(fmt: "Format", x: np.ndarray, layout, scales, zps=None, *, pow2: bool = False,
              rounding: Rounding = Rounding.NEAREST_EVEN, overflow: Overflow | None = None,
              nan: NanInput = NanInput.RAISE, rand=None) -> np.ndarray:
    """Fake-quant ``fl(v(x / s) * s)`` (v the element value, minus the zero point) in x's dtype
    and shape; fused (codes never stored) on the fast path. Same conventions as ``encode_scaled``."""
    plan, overflow, flat, s, inv, z, r, pow2 = _prepare(fmt, x, scales, zps, pow2, rounding,
                                                         overflow, nan, rand)
    n = flat.shape[0]
    if plan is None:
        _, res, bad = _run_table(fmt, flat, layout, s, inv, z, pow2, r, rounding, overflow, nan, True)
    elif rounding is Rounding.STOCHASTIC:
        _, res, bad = _run_encode(plan, flat, layout, s, inv, z, pow2, r, False, True)
    else:
        res = np.empty(n, dtype=flat.dtype)
        kp = plan if flat.dtype == np.float32 else generic(plan)
        count = bool(plan.P.nan_raise)
        if not n:
            bad = 0
        elif isinstance(layout, Cols):
            bad = K.fq_cols(*kp, flat, res, layout.C, s, inv, z, pow2, count)
        else:
            bad = K.fq_rows(*kp, flat, res, max(layout.Q, 1), layout.C, s, inv, z, pow2, count)
    if bad:
        raise _nan_error(fmt, bad)
    return res.reshape(x.shape)


def fq_vector(fmt: "Format", x: np.ndarray, scales: np.ndarray, zps=None, *,
              rounding: Rounding = Rounding.NEAREST_EVEN, overflow: Overflow | None = None,
              nan: NanInput = NanInput.RAISE, rand=None) -> np.ndarray:
    """``fq_scaled`` of a short 1-D ``x`` with one scale (and zero point) per element, the same
    numbers bit for bit, run serially: for per-column loops (GPTQ) where a parallel kernel launch
    costs more than the work (x / s is the same number as fq_scaled's x * (1/s) for power-of-two
    scales). Formats without a kernel plan and stochastic rounding take ``fq_scaled`` itself."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"fq_vector takes a 1-D array, got shape {x.shape}")
    plan, overflow, flat, s, inv, z, r, pow2 = _prepare(fmt, x, scales, zps, False, rounding,
                                                         overflow, nan, rand)
    if plan is None or rounding is Rounding.STOCHASTIC or s.shape[0] != flat.shape[0]:
        return fq_scaled(fmt, x, Cols(x.shape[0]), scales, zps, rounding=rounding, overflow=overflow,
                         nan=nan, rand=rand)
    res = np.empty_like(flat)
    kp = plan if flat.dtype == np.float32 else generic(plan)
    bad = K.fq_vec(*kp, flat, res, s, z)
    if bad and plan.P.nan_raise:
        raise _nan_error(fmt, bad)
    return res


_ONE = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1)}


def encode_fast(fmt: "Format", a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                rand) -> np.ndarray:
    """``fmt.encode`` through the fast kernels (the format's table kernel where it has no plan)."""
    if params(fmt, rounding, overflow, nan) is None or a.dtype not in (np.float32, np.float64):
        return fmt.encode_table(a, rounding, overflow, nan, rand)
    one = _ONE[a.dtype]
    return encode_scaled(fmt, a, Rows(a.size, 1), one, pow2=True, rounding=rounding,
                         overflow=overflow, nan=nan, rand=rand).reshape(-1)


def quantize_fast(fmt: "Format", a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                  draws: Callable[[int], np.ndarray] | None = None) -> np.ndarray | None:
    """decode(encode(a)) in a's dtype, fused; None where the fast kernels do not apply. For
    STOCHASTIC, ``draws(a.size)`` gives the uniform draws (called only when a kernel runs, so a
    caller falling back to ``Format.encode`` draws from an untouched generator)."""
    if params(fmt, rounding, overflow, nan) is None or a.dtype not in (np.float32, np.float64):
        return None
    rand = None
    if rounding is Rounding.STOCHASTIC:
        if draws is None:
            raise ValueError("stochastic rounding needs draws")
        rand = draws(a.size)
    return fq_scaled(fmt, a, Rows(a.size, 1), _ONE[a.dtype], pow2=True, rounding=rounding,
                     overflow=overflow, nan=nan, rand=rand)


class FastKernelRouting:
    """Mixin for a family's Format class: route ``encode``/``quantize`` to the fast kernels here.

    Those kernels are bit-identical to :meth:`Format.encode_table` (held there by the tests) and
    fall back to it for layouts they do not cover. numba loads on the first call, not at import.
    """

    def _encode_array(self, a, rounding, overflow, nan, rand):
        return encode_fast(self, a, rounding, overflow, nan, rand)

    def _quantize_array(self, a, rounding, overflow, nan, seed):
        # fused, never stores codes
        return quantize_fast(self, a, rounding, overflow, nan, lambda n: make_rng(seed).random(n))
