"""Fast-kernel plans of the built-in families, registered as ``Subsystem.KERNEL`` handlers.

A KERNEL handler is ``handler(fmt, inp: PlanInputs) -> Plan | None``: the parameter tuple (its type
selects the numba cores, see ``_kernel_params``), the family table T and the value of every code V
for one format under one set of conventions; None means "no fast kernel for this one" and the
caller takes the exact table path (``kernels.encode_scaled``/``fq_scaled``), which gives the same
bits. Families without a handler (LookupFormat, E8M0, any user format) always take that path.

This module holds no numba code (building a plan compiles nothing); ``kernels.params`` asks
``capabilities.find_handler(Subsystem.KERNEL, fmt)`` and caches the answer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fmtlab.formats import _kernel_params as K
from fmtlab.formats.capabilities import Subsystem, register_handler

__all__ = ["Plan", "PlanInputs", "generic", "minifloat_plan", "int_plan", "dint_plan", "log_plan"]


class Plan(NamedTuple):
    """What the kernels need for one format under one set of conventions."""

    P: tuple  # the family's scalar parameter tuple (its type selects the family's cores)
    T: np.ndarray  # family table, 2-D float64 (dINT/log magnitudes, bounds, tie flags)
    V: np.ndarray  # value of every code, float64


class PlanInputs(NamedTuple):
    """The conventions a handler plans for, precomputed from the format's data."""

    mode: int  # rounding.ROUNDING_ID of the rounding mode
    spec: list  # fmt.special_codes(overflow, nan) as ints (-1 where none; spec[0] < 0: NaN raises)
    vals: np.ndarray  # fmt.values(), float64, read-only
    nan_raise: bool  # a NaN input has no code (the kernels count it, the caller raises)


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


def _f32_pattern(v: float) -> int:
    """float32 pattern of v (Inf where v is beyond float32: only MFX formats, which do not use it)."""
    with np.errstate(over="ignore"):
        return int(np.array(v, dtype=np.float64).astype(np.float32).view(np.uint32))


def minifloat_plan(fmt, inp: PlanInputs) -> Plan | None:
    """MF / MF1 / MFX plan of a MiniFloat (reads bits, man_bits, bias, subnormals, max); None
    where a special-value rule leaves holes among the finite magnitude codes (``bit_layout``
    False: the bit tricks assume codes 0 .. max magnitude are all finite)."""
    if not getattr(fmt, "bit_layout", True):
        return None
    mode, spec, vals = inp.mode, inp.spec, inp.vals
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
    P = cls(mode, m, emin + 127, emin + 1023, ftz, maxmag, 1 << (fmt.bits - 1), sub32,
            math.ldexp(1.0, emin - m), subthr, *spec, val32(ov[0]), val32(ov[1]), val32(spec[2]),
            val32(spec[3]), val32(spec[0]), val32(spec[1]), fmt.negative_zero_code is not None,
            inp.nan_raise)
    return Plan(P, _NO_TABLE, vals)


def int_plan(fmt, inp: PlanInputs) -> Plan:
    """IN plan of an IntFormat (reads bits, min, max)."""
    nanv = np.nan if inp.nan_raise else 0.0
    P = K.IN(inp.mode, np.float32(fmt.min), np.float32(fmt.max), float(fmt.min), float(fmt.max),
             (1 << fmt.bits) - 1, *inp.spec, np.float32(nanv), float(nanv), inp.nan_raise)
    return Plan(P, _NO_TABLE, inp.vals)


def dint_plan(fmt, inp: PlanInputs) -> Plan | None:
    """TB-family plan of a DInt (kind 0: ndenorm levels below 1, then the integers)."""
    return _table_plan(fmt, inp, 0, len(fmt.denormals), 0.0, 0)


def log_plan(fmt, inp: PlanInputs) -> Plan | None:
    """TB-family plan of a LogFormat (kind 1: mags[j] = base**-(kmax + 1 - j))."""
    return _table_plan(fmt, inp, 1, 0, 1.0 / math.log2(fmt.base), fmt.kmax)


def _table_plan(fmt, inp, kind, nden, inv_log2b, kmax) -> Plan | None:
    """Plan of a sign-symmetric table format whose magnitude codes are 0..K in value order (None
    for any other code layout: the table path then handles it)."""
    mode, spec, vals, nan_raise = inp
    g = fmt.grid
    i0 = int(np.flatnonzero(g.vals == 0)[0])
    mags = np.asarray(g.vals[i0:], dtype=np.float64)
    bounds = np.asarray(g.bounds[i0:], dtype=np.float64)
    Kn = len(mags) - 2
    signbit = 1 << (fmt.bits - 1)
    neg_ok = (i0 == Kn + 1 and np.array_equal(g.vals[:i0], -mags[1:][::-1])
              and np.array_equal(g.bounds[:i0], -bounds[::-1])
              and np.array_equal(g.even[:i0], g.even[i0 + 1:][::-1]))
    codes_ok = (np.array_equal(g.codes[i0:i0 + Kn + 1], np.arange(Kn + 1))
                and np.array_equal(g.codes[1:i0], signbit | np.arange(Kn, 0, -1)))
    if not (neg_ok and codes_ok):
        return None
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
    elif Kn + 1 <= K.SMALL and mode != K.STOCHASTIC:
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
    """(t_i, u_i, l_i) for i < 8 of the TBS small-table path (see _kernel_params.TBS)."""
    out = []
    for i in range(K.SMALL):
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


for _family, _handler in (("minifloat", minifloat_plan), ("int", int_plan), ("dint", dint_plan),
                          ("log", log_plan)):
    register_handler(Subsystem.KERNEL, _family, _handler)
