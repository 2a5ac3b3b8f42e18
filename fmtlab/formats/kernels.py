"""Python side of the fast element kernels: per-format parameter tuples and layout runners.

Numeric convention: as ``_fast_kernels`` (bit-identical to the table kernel ``encode_table``,
the reference, for every format and rounding mode; float64 input rounds once from float64).
``params`` returns None for a format the fast kernels do not cover (E8M0, tables that are not
sign-symmetric); callers then use the table kernel.

Layouts (how a scaled array maps to its scales), over the flat C-order data:
  Rows(Q, C)  element i has scale slot (i // Q) % C   (per-tensor: Q = n, C = 1; per-token and
              per-channel on axis 0: Q = row length; groups along the last axis: Q = group size)
  Cols(C)     x is [P, C] and column c has scale slot c   (per-channel on the last axis)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats import _fast_kernels as K
from fmtlab.formats.base import Format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding, ROUNDING_ID

__all__ = ["params", "Plan", "Rows", "Cols", "encode_fast", "quantize_fast", "encode_scaled", "fq_scaled"]


class Rows(NamedTuple):
    Q: int
    C: int


class Cols(NamedTuple):
    C: int


def _f32_pattern(v: float) -> int:
    """float32 pattern of v (Inf where v is beyond float32: only MFX formats, which do not use it)."""
    with np.errstate(over="ignore"):
        return int(np.array(v, dtype=np.float64).astype(np.float32).view(np.uint32))


class Plan(NamedTuple):
    """What the kernels need for one format under one set of conventions."""

    P: tuple  # the family's scalar parameter tuple (its type selects the family's cores)
    T: np.ndarray  # family table, 2-D float64 (dINT/log magnitudes, bounds, tie flags)
    V: np.ndarray  # value of every code, float64


def generic(plan: Plan) -> Plan:
    """The plan with its parameter tuple reduced to the family's base type (MF, IN or TB): the
    float64 cores (codes, STOCHASTIC, float64 fake-quant) read only base fields, so one compiled
    kernel per family serves every variant (fewer numba specializations to compile)."""
    P = plan.P
    if isinstance(P, (K.MFX, K.MF1)):
        P = K.MF(*P)
    elif isinstance(P, (K.TBD, K.TBS, K.TBL, K.TBS32, K.TBD32)):
        P = K.TB(*P[:len(K.TB._fields)])
    return Plan(P, plan.T, plan.V)


_NO_TABLE = np.zeros((1, 1))
_NO_TABLE.setflags(write=False)


@lru_cache(maxsize=256)
def params(fmt: Format, rounding: Rounding, overflow: Overflow, nan: NanInput) -> Plan | None:
    """The kernel plan of ``fmt`` under these conventions (None: not covered, use the table)."""
    fam = fmt.family
    mode = ROUNDING_ID[rounding]
    spec = [int(c) for c in fmt.special_codes(overflow, nan)]
    vals = np.ascontiguousarray(fmt.values(), dtype=np.float64)
    vals.setflags(write=False)
    nan_raise = spec[0] < 0
    if fam == "minifloat":
        return Plan(_mf_params(fmt, mode, spec, vals, nan_raise), _NO_TABLE, vals)
    if fam == "int":
        nanv = np.nan if nan_raise else 0.0
        P = K.IN(mode, np.float32(fmt.min), np.float32(fmt.max), float(fmt.min), float(fmt.max),
                 (1 << fmt.bits) - 1, *spec, np.float32(nanv), float(nanv), nan_raise)
        return Plan(P, _NO_TABLE, vals)
    if fam in ("dint", "log"):
        return _tb_params(fmt, mode, spec, vals, nan_raise)
    return None


def _mf_params(fmt, mode, spec, vals, nan_raise):
    m = fmt.man_bits
    emin = 1 - fmt.bias
    ftz = (not fmt.subnormals) and m > 0
    maxmag = fmt.max_code() & ((1 << (fmt.bits - 1)) - 1)
    fast32 = emin >= -126 and fmt.max < 2.0 ** 128

    def val32(code: int) -> int:
        return _f32_pattern(vals[code]) if code >= 0 else 0x7FC00000

    ov = (spec[6], spec[7]) if mode == K.TOWARD_ZERO else (spec[4], spec[5])
    cls = (K.MF1 if emin + 127 == 1 and not ftz else K.MF) if fast32 else K.MFX
    # 2**(emin - m); unused (0) when emin32 == 1, where it would be a slow subnormal operand
    sub32 = np.float32(math.ldexp(1.0, emin - m)) if -126 < emin else np.float32(0.0)
    subthr = 0 if emin + 127 == 1 else 1 << m
    return cls(mode, m, emin + 127, emin + 1023, ftz, maxmag, 1 << (fmt.bits - 1), sub32,
               math.ldexp(1.0, emin - m), subthr, *spec, val32(ov[0]), val32(ov[1]), val32(spec[2]),
               val32(spec[3]), val32(spec[0]), val32(spec[1]), fmt.negative_zero_code is not None,
               nan_raise)


def _tb_params(fmt, mode, spec, vals, nan_raise):
    g = fmt.grid
    i0 = int(np.flatnonzero(g.vals == 0)[0])
    mags = np.asarray(g.vals[i0:], dtype=np.float64)
    bounds = np.asarray(g.bounds[i0:], dtype=np.float64)
    Kn = len(mags) - 2
    signbit = 1 << (fmt.bits - 1)
    # the fast path needs a sign-symmetric grid whose magnitude codes are 0..K in value order
    neg_ok = (i0 == Kn + 1 and np.array_equal(g.vals[:i0], -mags[1:][::-1])
              and np.array_equal(g.bounds[:i0], -bounds[::-1])
              and np.array_equal(g.even[:i0], g.even[i0 + 1:][::-1]))
    codes_ok = (np.array_equal(g.codes[i0:i0 + Kn + 1], np.arange(Kn + 1))
                and np.array_equal(g.codes[1:i0], signbit | np.arange(Kn, 0, -1)))
    if not (neg_ok and codes_ok):
        return None
    if fmt.family == "dint":
        kind, nden, inv_log2b, kmax = 0, len(fmt.denormals), 0.0, 0
    else:
        kind, nden, inv_log2b, kmax = 1, 0, 1.0 / math.log2(fmt.base), fmt.kmax
    T = np.zeros((4, Kn + 2))
    T[0] = mags
    T[1, :Kn + 1] = bounds
    T[1, Kn + 1] = np.inf
    T[2] = g.even[i0:]
    T[3, 0] = -np.inf
    T[3, 1:] = T[1, :Kn + 1]
    T.setflags(write=False)
    base = (mode, kind, Kn, nden, inv_log2b, kmax, signbit, fmt.negative_zero_code is not None,
            *spec, np.nan if nan_raise else 0.0, nan_raise)
    P = K.TB(*base)
    ties_down = T[2, 0] == 1.0 and not T[2, 1:nden + 2].any()  # below 1: RNE ties go down
    if kind == 0 and nden <= 2 and ties_down and mode != K.STOCHASTIC:
        th = mags[1:nden + 2] if mode == K.TOWARD_ZERO else bounds[:nden + 1]
        th = list(th) + [np.inf] * (3 - len(th))
        lev = list(mags[1:nden + 1]) + [0.0] * (2 - nden)
        P = K.TBD(*base, th[0], th[1], th[2], lev[0], lev[1], mode == K.NEAREST_EVEN,
                  float(mags[Kn]))
        if _f32_exact(lev + [mags[Kn]]):
            t32 = [_f32_threshold(t, mode != K.NEAREST_EVEN) for t in th]
            P = K.TBD32(*base, *[t for t, _ in t32], *[u for _, u in t32],
                        *[np.float32(v) for v in lev], np.float32(mags[Kn]), np.float32(base[-2]))
    elif Kn + 1 <= K._SMALL and mode != K.STOCHASTIC:
        steps = _small_steps(mode, mags, bounds, T[2], Kn)
        P = K.TBS(*base, *steps)
        if _f32_exact(steps[2::3]):
            s32 = []
            for t, u, lv in zip(steps[0::3], steps[1::3], steps[2::3]):
                t32, u32 = _f32_threshold(t, u)
                s32 += [t32, u32, np.float32(lv)]
            P = K.TBS32(*base, *s32, np.float32(base[-2]))
    elif kind == 1 and math.log2(fmt.base) > 0.05 and mags[1] >= 2.0 ** -126 and mode != K.STOCHASTIC:
        P = K.TBL(*base, 1.0 if mode == K.TOWARD_ZERO else 1.5)
    return Plan(P, T, vals)


def _f32_exact(vals) -> bool:
    """Every value is a float32 number."""
    v = np.asarray(vals, dtype=np.float64)
    return bool(np.all(v.astype(np.float32).astype(np.float64) == v))


def _f32_threshold(t: float, inclusive: bool) -> tuple[np.float32, bool]:
    """(t32, inclusive32) with, for every float32 a: (a > t or (a == t and inclusive)) <=>
    (a > t32 or (a == t32 and inclusive32)). t32 = t when float32 holds t, else the largest
    float32 below t with a strict test (a float32 a never equals such a t)."""
    f = np.float32(t)
    if np.isinf(t) or float(f) == t:
        return f, bool(inclusive)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return f, False


def _small_steps(mode, mags, bounds, even, Kn) -> list:
    """(t_i, u_i, l_i) for i < 8 of the TBS small-table path (see _fast_kernels.TBS)."""
    out = []
    for i in range(K._SMALL):
        if i > Kn:
            out += [np.inf, False, float(mags[Kn])]
            continue
        lv = float(mags[min(i + 1, Kn)])  # the virtual level above max saturates to max
        if mode == K.TOWARD_ZERO:
            out += [float(mags[i + 1]), True, lv]
        else:
            up = mode == K.NEAREST_AWAY or (even[i] == 0.0 and even[i + 1] != 0.0)
            out += [float(bounds[i]), bool(up), lv]
    return out


def _nan_error(fmt: Format, bad: int) -> FormatError:
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


def _scale_args(scales, zps, dtype, pow2: bool):
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
        raise TypeError(f"fast kernels take float32 or float64 arrays, got {x.dtype}")
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


def _prepare(fmt, x, scales, zps, pow2, rounding, overflow, nan, rand):
    overflow = fmt.default_overflow if overflow is None else overflow
    plan = params(fmt, rounding, overflow, nan)
    if plan is None:
        raise FormatError(f"no fast kernel for {fmt.name}")
    flat = _flat(x)
    s, inv, z, pow2 = _scale_args(scales, zps, flat.dtype, pow2)
    r = _rand_arg(rand, flat.shape[0]) if rounding is Rounding.STOCHASTIC else np.zeros(1)
    return plan, flat, s, inv, z, r, pow2


def encode_scaled(fmt: Format, x: np.ndarray, layout, scales, zps=None, *, pow2: bool = False,
                  rounding: Rounding = Rounding.NEAREST_EVEN, overflow: Overflow | None = None,
                  nan: NanInput = NanInput.RAISE, rand=None) -> np.ndarray:
    """Codes of ``x / scale`` (+ zero point for INT) in x's shape; see the module docstring.

    ``x / s`` is computed in x's precision (float32 or float64); pow2=True promises every scale
    is a power of two (then x * (1/s) is used, which is the same number).
    """
    plan, flat, s, inv, z, r, pow2 = _prepare(fmt, x, scales, zps, pow2, rounding, overflow, nan, rand)
    codes, _, bad = _run_encode(plan, flat, layout, s, inv, z, pow2, r, True, False)
    if bad:
        raise _nan_error(fmt, bad)
    return codes.astype(fmt.code_dtype, copy=False).reshape(x.shape)


def fq_scaled(fmt: Format, x: np.ndarray, layout, scales, zps=None, *, pow2: bool = False,
              rounding: Rounding = Rounding.NEAREST_EVEN, overflow: Overflow | None = None,
              nan: NanInput = NanInput.RAISE, rand=None) -> np.ndarray:
    """Fused fake-quant ``fl(v(x / s) * s)`` (v the element value, minus the zero point) in x's
    dtype and shape; codes are never stored. Same conventions as ``encode_scaled``."""
    plan, flat, s, inv, z, r, pow2 = _prepare(fmt, x, scales, zps, pow2, rounding, overflow, nan, rand)
    n = flat.shape[0]
    if rounding is Rounding.STOCHASTIC:
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


_ONE = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1)}


def encode_fast(fmt: Format, a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                rand) -> np.ndarray:
    """``fmt.encode`` through the fast kernels (falls back to the table kernel where uncovered)."""
    if params(fmt, rounding, overflow, nan) is None or a.dtype not in (np.float32, np.float64):
        return fmt.encode_table(a, rounding, overflow, nan, rand)
    one = _ONE[a.dtype]
    return encode_scaled(fmt, a, Rows(a.size, 1), one, pow2=True, rounding=rounding,
                         overflow=overflow, nan=nan, rand=rand).reshape(-1)


def quantize_fast(fmt: Format, a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                  seed=None) -> np.ndarray | None:
    """decode(encode(a)) in a's dtype, fused; None where the fast kernels do not apply. For
    STOCHASTIC the draws are ``make_rng(seed).random(a.size)``, as ``Format.encode`` draws them."""
    if params(fmt, rounding, overflow, nan) is None or a.dtype not in (np.float32, np.float64):
        return None
    rand = None
    if rounding is Rounding.STOCHASTIC:
        from fmtlab.formats.base import make_rng

        rand = make_rng(seed).random(a.size)
    return fq_scaled(fmt, a, Rows(a.size, 1), _ONE[a.dtype], pow2=True, rounding=rounding,
                     overflow=overflow, nan=nan, rand=rand)
