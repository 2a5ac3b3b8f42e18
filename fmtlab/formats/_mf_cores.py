"""numba scalar cores of minifloats (any ExMy, bias, ieee/fn/fnuz/fin, subnormals or FTZ), and
the helpers every family shares. Numeric convention: see ``_fast_kernels`` (bit-identical to the
table kernel); parameter tuples ``MF``/``MF1``/``MFX`` in ``_kernel_params``.

These are plain ``@njit`` functions, compiled into the cached layout kernels: after editing this
file, update CORE_DIGEST in ``_layout_kernels.py`` and ``_block_kernels.py`` (their import says so).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fmtlab.formats._fast_bits import bits_f32, bits_f64, f32_bits, f64_bits
from fmtlab.formats._kernel_params import (
    ABS32, ABS64, INF32, INF64, MAN32, MAN64, NEAREST_AWAY, NEAREST_EVEN, STOCHASTIC, TOWARD_ZERO,
)

__all__ = ["rshift_round", "stoch_up", "sel", "mf_mag64", "mf_mag32", "mf_val64", "mf_code",
           "mf_fq32", "mf1_fq32", "mf_fq64"]


# ---------------------------------------------------------------------------------------------
# Shared scalar helpers
# ---------------------------------------------------------------------------------------------
@njit
def rshift_round(w, sh, mode):
    """Round the non-negative integer w / 2**sh to an integer (1 <= sh <= 62).

         w = | kept bits | r | sticky... |        r = bit sh-1 (the half), sticky = bits below
                         ^ bit sh
    NEAREST_EVEN adds half-minus-one plus the kept LSB (ties go to an even result);
    NEAREST_AWAY adds half; TOWARD_ZERO drops the bits.
    """
    if mode == NEAREST_EVEN:
        return (w + ((1 << (sh - 1)) - 1) + ((w >> sh) & 1)) >> sh
    if mode == NEAREST_AWAY:
        return (w + (1 << (sh - 1))) >> sh
    return w >> sh


@njit
def stoch_up(x, lo_mag, hi_mag, r):
    """True iff stochastic rounding picks the larger magnitude hi_mag for x (lo_mag <= |x| < hi_mag),
    evaluated exactly as the table kernel: with L <= x < U the signed neighbours, U iff r < (x-L)/(U-L)."""
    if x >= 0:
        return r < (x - lo_mag) / (hi_mag - lo_mag)
    L = -hi_mag
    U = -lo_mag
    return not (r < (x - L) / (U - L))


# ---------------------------------------------------------------------------------------------
# Minifloats
# ---------------------------------------------------------------------------------------------
@njit
def mf_mag64(a, mode, m, emin64, ftz):
    """Magnitude code of the finite float64 whose |bits| are ``a`` (may exceed maxmag: overflow).

    float64 |0| E (11) | F (52) |   value = (2**52 + F) * 2**(E - 1075)   (E = 0: F * 2**-1074)
    Normal in the target (E >= emin64): round the pattern itself at bit 52 - m; a mantissa carry
    ripples into the exponent field, and subtracting (emin64 - 1) << m re-biases:
        code = round(a >> (52 - m)) - ((emin64 - 1) << m) = (E_target << m) | M.
    Subnormal in the target: code = round(S / 2**(52 - m + d)), S the significand with its hidden
    bit and d = emin64 - max(E, 1) binades below min_normal (a carry gives min_normal's code
    1 << m). FTZ formats round S to 0 or min_normal instead (m treated as 0, code << m).
    Shifts are capped at 54 (> the 53-bit significand: everything rounds to 0 there).
    """
    E = a >> 52
    if E >= emin64:
        return rshift_round(a, 52 - m, mode) - ((emin64 - 1) << m)
    S = (a & MAN64) | ((1 << 52) if E > 0 else 0)
    d = emin64 - (E if E > 0 else 1)
    if ftz:
        return rshift_round(S, min(52 + d, 54), mode) << m
    return rshift_round(S, min(52 - m + d, 54), mode)


@njit
def mf_mag32(a, mode, m, emin32, ftz):
    """The float32 twin of ``mf_mag64`` (needs emin32 >= 1):

    float32 |0| E (8) | F (23) |   normal: round(a >> (23 - m)) - ((emin32 - 1) << m)
    subnormal target: round(S / 2**(23 - m + d)), shifts capped at 25 (> 24-bit significand).
    """
    E = a >> 23
    if E >= emin32:
        return rshift_round(a, 23 - m, mode) - ((emin32 - 1) << m)
    S = (a & MAN32) | ((1 << 23) if E > 0 else 0)
    d = emin32 - (E if E > 0 else 1)
    if ftz:
        return rshift_round(S, min(23 + d, 25), mode) << m
    return rshift_round(S, min(23 - m + d, 25), mode)


@njit
def mf_val64(c, m, emin64, sub64):
    """float64 value of magnitude code c (c may be maxmag + 1, the virtual value above max):
    subnormal c < 2**m: c * 2**(emin - m); normal: the float64 pattern
    ((c + ((emin64 - 1) << m)) << (52 - m)), i.e. exponent field E_target + emin64 - 1, mantissa M."""
    if c < (1 << m):
        return np.float64(c) * sub64
    return bits_f64((c + ((emin64 - 1) << m)) << (52 - m))


@njit
def mf_code(P, x, r):
    b = f64_bits(x)
    neg = b < 0
    a = b & ABS64
    if a > INF64:
        return P.nan_n if neg else P.nan_p
    if a == INF64:
        return P.inf_n if neg else P.inf_p
    if P.mode == STOCHASTIC:
        c = mf_mag64(a, TOWARD_ZERO, P.m, P.emin64, P.ftz)
        if c <= P.maxmag:
            c1 = (1 << P.m) if (P.ftz and c == 0) else c + 1
            if stoch_up(x, mf_val64(c, P.m, P.emin64, P.sub64), mf_val64(c1, P.m, P.emin64, P.sub64), r):
                c = c1
    else:
        c = mf_mag64(a, P.mode, P.m, P.emin64, P.ftz)
    if c > P.maxmag:
        if P.mode == TOWARD_ZERO:
            return P.sat_n if neg else P.sat_p
        return P.ovf_n if neg else P.ovf_p
    if c == 0:
        return P.nzero if (neg and P.nzero >= 0) else P.zero
    return (c | P.signbit) if neg else c


@njit
def sel(c, a, b):
    """a if c else b for int64 a, b, as arithmetic (vectorizes where a branch would not)."""
    return b ^ ((a ^ b) & -np.int64(c))


@njit
def mf_fq32(P, y):
    """Element value (float32) of float32 y, RNE/RNA/TZ, branch-free (``sel``):

    y |s|E|F| -> a = |y| bits -> magnitude code c (as ``mf_mag32``) -> value bits:
      normal    (c + ((emin32 - 1) << m)) << (23 - m)        (the float32 pattern of the value)
      subnormal float32(c) * 2**(emin - m)                    (exact: c < 2**m)
    then the sign bit (dropped on zero unless the format has -0) and the overflow / Inf-input /
    NaN-input patterns.
    """
    b = f32_bits(y)
    a = b & ABS32
    neg = b >> 31
    m = P.m
    emin32 = P.emin32
    E = a >> 23
    sub = E < emin32
    S = (a & MAN32) | sel(E > 0, 1 << 23, 0)
    shs = min(23 - sel(P.ftz, 0, m) + emin32 - max(E, 1), 25)
    w = sel(sub, S, a)
    sh = sel(sub, shs, 23 - m)
    half = np.int64(1) << (sh - 1)
    mode = P.mode
    inc = sel(mode == NEAREST_EVEN, half - 1 + ((w >> sh) & 1), sel(mode == NEAREST_AWAY, half, 0))
    r = (w + inc) >> sh
    c = sel(sub, r << sel(P.ftz, m, 0), r - ((emin32 - 1) << m))
    vn = (c + ((emin32 - 1) << m)) << (23 - m)
    vs = f32_bits(np.float32(c) * P.sub32)
    vb = sel(c >= P.subthr, vn, vs)
    vb = vb | ((neg << 31) & -np.int64((c != 0) | P.negzero))
    vb = sel(c > P.maxmag, sel(neg, P.ovf32_neg, P.ovf32_pos), vb)
    vb = sel(a == INF32, sel(neg, P.inf32_neg, P.inf32_pos), vb)
    vb = sel(a > INF32, sel(neg, P.nan32_neg, P.nan32_pos), vb)
    return bits_f32(vb)


@njit
def mf1_fq32(P, y):
    """``mf_fq32`` for emin32 = 1 (``MF1``): round the magnitude pattern at bit 23 - m,

        |0| E (8) | F (23) |  ->  c = round(a >> (23 - m)),  value pattern c << (23 - m)

    (a carry ripples into the exponent; float32 subnormals need no special case), then sign,
    overflow (c > maxmag, Inf) and NaN patterns."""
    b = f32_bits(y)
    a = b & ABS32
    neg = b >> 31
    sh = 23 - P.m
    mode = P.mode
    half = np.int64(1) << (sh - 1)
    inc = sel(mode == NEAREST_EVEN, half - 1 + ((a >> sh) & 1), sel(mode == NEAREST_AWAY, half, 0))
    c = (a + inc) >> sh
    vb = (c << sh) | ((neg << 31) & -np.int64((c != 0) | P.negzero))
    vb = sel(c > P.maxmag, sel(neg, P.ovf32_neg, P.ovf32_pos), vb)
    vb = sel(a == INF32, sel(neg, P.inf32_neg, P.inf32_pos), vb)
    vb = sel(a > INF32, sel(neg, P.nan32_neg, P.nan32_pos), vb)
    return bits_f32(vb)


@njit
def mf_fq64(P, V, y):
    c = mf_code(P, y, 0.0)
    return V[c] if c >= 0 else np.nan

