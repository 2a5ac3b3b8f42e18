"""numba scalar cores of INTn and of sign-symmetric table formats (dINT, log-base-b).

Numeric convention: see ``_fast_kernels`` (bit-identical to the table kernel); parameter tuples
``IN`` and ``TB``/``TBD``/``TBD32``/``TBS``/``TBS32``/``TBL`` in ``_kernel_params``. Plain ``@njit``
functions compiled into the cached layout kernels: after editing this file, update CORE_DIGEST in
``_layout_kernels.py`` and ``_block_kernels.py`` (their import says so).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fmtlab.formats._fast_bits import bits_f32, f32_bits, f64_bits
from fmtlab.formats._kernel_params import (
    ABS32, MAN32, MAN64, NEAREST_AWAY, NEAREST_EVEN, STOCHASTIC, TOWARD_ZERO,
)
from fmtlab.formats._mf_cores import stoch_up

__all__ = ["int_code", "int_fq32", "int_fq64", "tb_code", "tb_fq", "dint_fq32", "log_fq32",
           "small_fq", "small_fq32", "dint_fq32f"]


# ---------------------------------------------------------------------------------------------
# INT
# ---------------------------------------------------------------------------------------------
@njit
def _int_round(y, mode):
    """Round to an integer in y's precision: rint (ties to even), half away (frac = y - trunc(y)
    is exact), or trunc."""
    if mode == NEAREST_EVEN:
        return np.rint(y)
    t = np.trunc(y)
    if mode == NEAREST_AWAY:
        f = y - t
        return t + np.sign(y) if abs(f) >= 0.5 else t
    return t


@njit
def int_code(P, x, r, z):
    """Code of float64 x on the integer grid shifted by the zero point z: q = clamp(round(x), lo-z,
    hi-z) + z, stored as (q & mask) (two's complement for signed formats). NaN: -1 while raising;
    with nan='zero' it reads as x = 0, the code of the zero point (as the fused value is 0)."""
    if x != x:
        if P.nan_raise:
            return -1
        x = 0.0
    if P.mode == STOCHASTIC:
        L = np.floor(x)
        q = L + 1.0 if r < (x - L) else L  # U - L = 1
    else:
        q = _int_round(x, P.mode)
    q = min(max(q, P.lo64 - z), P.hi64 - z) + z
    return np.int64(q) & P.mask


@njit
def int_fq32(P, y, z):
    """Element value q - z of float32 y (RNE/RNA/TZ); NaN gives P.nan32 (0.0 with nan='zero').
    A rounded -0.0 becomes +0.0 (INT has one zero): adding +0.0 does that under IEEE rules."""
    q = _int_round(y, P.mode)
    q = min(max(q, P.lo32 - z), P.hi32 - z) + np.float32(0.0)
    return P.nan32 if y != y else q


@njit
def int_fq64(P, y, z):
    q = _int_round(y, P.mode)
    q = min(max(q, P.lo64 - z), P.hi64 - z) + 0.0
    return P.nan64 if y != y else q


# ---------------------------------------------------------------------------------------------
# Sign-symmetric tables (dINT, log)
# ---------------------------------------------------------------------------------------------
@njit
def _tb_floor_index(P, T, a):
    """Largest j with mags[j] <= a (a >= 0 finite; j = K + 1 means at or above the virtual value).

    Estimate, then exact fix-up against the float64 magnitudes:
      dINT  a >= 1: j = ndenorm + floor(a)           (levels 1, 2, ... after the denormals)
      log   j = floor(log_b a) + kmax + 1, log2 a ~ (E - 1023) + F / 2**52 (error < 0.09),
            from the float64 pattern |0|E|F| (mags[j] = b**-(kmax + 1 - j))
    """
    K1 = P.K + 1
    if P.kind == 0:
        j = P.ndenorm + np.int64(min(a, 1e18)) if a >= 1.0 else 0
    else:
        b = f64_bits(a)
        l2 = np.float64((b >> 52) - 1023) + np.float64(b & MAN64) * (1.0 / 4503599627370496.0)
        t = l2 * P.inv_log2b
        t = min(max(t, -1e9), 1e9)
        j = np.int64(np.floor(t)) + P.kmax + 1
    j = min(max(j, 0), K1)
    mags = T[0]
    while j > 0 and mags[j] > a:
        j -= 1
    while j < K1 and mags[j + 1] <= a:
        j += 1
    return j


@njit
def _tb_index(P, T, a, mode):
    """Index of the rounded magnitude a (RNE/RNA/TZ); K + 1 means overflow."""
    j = _tb_floor_index(P, T, a)
    if mode == TOWARD_ZERO or j > P.K or a == T[0, j]:
        return j
    bnd = T[1, j]
    if a < bnd:
        return j
    if a > bnd:
        return j + 1
    if mode == NEAREST_AWAY:
        return j + 1
    if T[2, j] != T[2, j + 1]:
        return j if T[2, j] != 0.0 else j + 1
    return j


@njit
def tb_code(P, T, x, r):
    if x != x:
        return P.nan_n if np.signbit(x) else P.nan_p
    neg = np.signbit(x)
    a = abs(x)
    if a == np.inf:
        return P.inf_n if neg else P.inf_p
    if P.mode == STOCHASTIC:
        j = _tb_floor_index(P, T, a)
        if j <= P.K and a != T[0, j] and stoch_up(x, T[0, j], T[0, j + 1], r):
            j += 1
    else:
        j = _tb_index(P, T, a, P.mode)
    if j > P.K:
        return P.sat_n if neg else P.sat_p  # dINT and log formats saturate
    if j == 0:
        return P.nzero if (neg and P.nzero >= 0) else P.zero
    return (j | P.signbit) if neg else j


@njit
def tb_fq(P, T, y):
    """Element value (float64) of y; NaN gives P.nan64."""
    a = abs(np.float64(y))
    j = _tb_index(P, T, a, P.mode)
    j = min(j, P.K)
    v = T[0, j]
    if np.signbit(y) and (j > 0 or P.negzero):
        v = -v
    return P.nan64 if y != y else v


@njit
def dint_fq32(P, y):
    """dINT element value (float64) of float32 y, branch-free; ndenorm <= 2.

    a = |y|; integer region (a past th_ndenorm): rint / floor(a + 0.5) / floor, capped at vmax;
    below: a chain of selects over the denormal thresholds. Ties between levels below 1 go down
    under NEAREST_EVEN (0 is even, denormal levels and 1 are not: smaller magnitude wins).
    """
    a = abs(np.float64(y))
    mode = P.mode
    if mode == NEAREST_EVEN:
        vi = np.rint(a)
    elif mode == NEAREST_AWAY:
        vi = np.floor(a + 0.5)
    else:
        vi = np.floor(a)
    vi = min(vi, P.vmax)
    c0 = (a > P.th0) | ((not P.strict) & (a == P.th0))
    c1 = (a > P.th1) | ((not P.strict) & (a == P.th1))
    c2 = (a > P.th2) | ((not P.strict) & (a == P.th2))
    vd = P.v1 if c0 else 0.0
    vd = P.v2 if c1 else vd
    nd = P.ndenorm
    up = c2 if nd == 2 else (c1 if nd == 1 else c0)
    v = vi if up else vd
    neg = np.signbit(y)
    v = -v if (neg & ((v > 0.0) | P.negzero)) else v
    return P.nan64 if y != y else v


@njit
def log_fq32(P, T, y):
    """log-base-b element value (float64) of float32 y: index estimate, one exact fix-up step each
    way against the float64 bounds, then the tie rule.

    |y| = (1 + f) * 2**(E - 127):  log2 |y| ~ (E - 127) + f + 0.3466 f (1 - f)   (error < 0.006)
    j0 = floor(log2|y| / log2 b + kmax + off), clamped to [0, K + 1]; E = 0 (zero, subnormal): j0 = 0.
    Nearest modes: j = #(ub < a) (ties down) via  j -= a <= lb[j];  j += a > ub[j];  a tie
    (a == ub[j]) moves up under NEAREST_AWAY, or to an even neighbour under NEAREST_EVEN.
    TOWARD_ZERO: the floor index via the magnitudes themselves.
    """
    b = f32_bits(y) & ABS32
    a = np.float64(bits_f32(b))
    E = b >> 23
    f = np.float64(b & MAN32) * (1.0 / 8388608.0)
    l2 = np.float64(E - 127) + f + 0.3466 * f * (1.0 - f)
    t = min(max(l2 * P.inv_log2b + (P.kmax + P.off), 0.0), P.K + 1.0)
    j = np.int64(t) if E > 0 else 0
    mags = T[0]
    ub = T[1]
    lb = T[3]
    if P.mode == TOWARD_ZERO:
        j = j - (a < mags[j])
        j = j + (a >= mags[min(j + 1, P.K + 1)])
    else:
        j = j - (a <= lb[j])
        j = j + (a > ub[j])
        tie = a == ub[j]
        if P.mode == NEAREST_AWAY:
            j = j + tie
        else:
            ev = T[2]
            j = j + (tie & (ev[j] == 0.0) & (ev[min(j + 1, P.K + 1)] != 0.0))
    j = min(j, P.K)
    v = mags[j]
    v = -v if (np.signbit(y) & ((j > 0) | P.negzero)) else v
    return P.nan64 if y != y else v


@njit
def _step(a, t, u, lv, v):
    return lv if ((a > t) | ((a == t) & u)) else v


@njit
def small_fq(P, y):
    """Element value (float64) of y for a table with <= 8 thresholds: a chain of selects over
    thresholds broadcast from scalars (no table gathers; see ``TBS``)."""
    a = abs(np.float64(y))
    v = 0.0
    v = _step(a, P.t0, P.u0, P.l0, v)
    v = _step(a, P.t1, P.u1, P.l1, v)
    v = _step(a, P.t2, P.u2, P.l2, v)
    v = _step(a, P.t3, P.u3, P.l3, v)
    v = _step(a, P.t4, P.u4, P.l4, v)
    v = _step(a, P.t5, P.u5, P.l5, v)
    v = _step(a, P.t6, P.u6, P.l6, v)
    v = _step(a, P.t7, P.u7, P.l7, v)
    v = -v if (np.signbit(y) & ((v > 0.0) | P.negzero)) else v
    return P.nan64 if y != y else v


@njit
def small_fq32(P, y):
    """``small_fq`` entirely in float32 (``TBS32``): 16 lanes per vector instead of 8."""
    a = abs(y)
    v = np.float32(0.0)
    v = _step(a, P.t0, P.u0, P.l0, v)
    v = _step(a, P.t1, P.u1, P.l1, v)
    v = _step(a, P.t2, P.u2, P.l2, v)
    v = _step(a, P.t3, P.u3, P.l3, v)
    v = _step(a, P.t4, P.u4, P.l4, v)
    v = _step(a, P.t5, P.u5, P.l5, v)
    v = _step(a, P.t6, P.u6, P.l6, v)
    v = _step(a, P.t7, P.u7, P.l7, v)
    v = -v if (np.signbit(y) & ((v > 0) | P.negzero)) else v
    return P.nan32 if y != y else v


@njit
def dint_fq32f(P, y):
    """``dint_fq32`` entirely in float32 (``TBD32``). NEAREST_AWAY rounds the integer part as
    trunc + (frac >= 0.5) (frac = a - trunc(a) is exact; a + 0.5 would round for a >= 2**23)."""
    a = abs(y)
    mode = P.mode
    if mode == NEAREST_EVEN:
        vi = np.rint(a)
    elif mode == NEAREST_AWAY:
        t = np.trunc(a)
        vi = t + np.float32(1.0) if (a - t) >= 0.5 else t
    else:
        vi = np.floor(a)
    vi = min(vi, P.vmax)
    c0 = (a > P.th0) | ((a == P.th0) & P.u0)
    c1 = (a > P.th1) | ((a == P.th1) & P.u1)
    c2 = (a > P.th2) | ((a == P.th2) & P.u2)
    vd = P.v1 if c0 else np.float32(0.0)
    vd = P.v2 if c1 else vd
    nd = P.ndenorm
    up = c2 if nd == 2 else (c1 if nd == 1 else c0)
    v = vi if up else vd
    v = -v if (np.signbit(y) & ((v > 0) | P.negzero)) else v
    return P.nan32 if y != y else v

