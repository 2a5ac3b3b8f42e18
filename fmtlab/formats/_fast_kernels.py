"""Fast numba kernels for element formats: bit-trick rounding cores and the layouts that use them.

Numeric convention (every kernel here; the table kernel ``_table_kernel`` is the reference and
tests hold each path here to it bit for bit):
- An element input is taken at its exact value. float32 is widened to float64 where a core works
  in float64 (exact); float64 input is rounded once, from float64.
- Rounding: NEAREST_EVEN / NEAREST_AWAY / TOWARD_ZERO by integer arithmetic on the input's bits
  (minifloats), ``rint``/``trunc`` (INT), or exact comparisons with the format's float64 rounding
  boundaries (dINT, log). STOCHASTIC goes up iff ``r < (x - L) / (U - L)`` evaluated in float64
  exactly as the table kernel does (same draws give the same codes).
- Scaled layouts compute ``y = x / s`` in the input's precision (IEEE division, correctly
  rounded; for power-of-two scales ``x * (1/s)``, which is the same number) and return
  ``fl(v * s)`` where v is the element value: float32 product for minifloat/INT values (exact
  float32 numbers), ``fl32(fl64(v) * s)`` for dINT/log values (float64 table values).
- Codes never leave the fused fake-quant kernels (``fq_rows``/``fq_cols``/``mx_fq``/``fp8scale_fq``);
  ``encode_rows``/``encode_cols`` produce codes (and, for STOCHASTIC, values from them).

Families and their parameter tuples (built once per format by ``kernels.py``):
  MF  minifloats (any ExMy, bias, ieee/fn/fnuz/fin, subnormals or FTZ); variants MF1 (float32's
      exponent range, e.g. bf16) and MFX (outside float32's range: float64 core only)
  IN  INTn (signed, unsigned, narrow; zero points shift the clamp bounds)
  TB  sign-symmetric table formats (dINT, log-base-b): estimate + exact fix-up against the
      format's float64 boundaries; variants TBD/TBD32 (dINT, <= 2 denormal levels), TBS/TBS32
      (<= 8 thresholds: a select chain, no table loads), TBL (log, one-step fix-up)
Each family implements ``_code(P, T, x64, r, z)`` (one code from a float64 input, any rounding)
and ``_fq(P, T, V, y, z)`` (the element value of float32 or float64 y, RNE/RNA/TZ); layouts
dispatch on the parameter tuple's type at compile time (``numba.extending.overload``), so each
(family, dtype) pair compiles once and is cached. Codes, STOCHASTIC and float64 fake-quant use the
base types only (``kernels.generic``), which keeps the number of compiled specializations small.
Keep cores and layouts in this one file: numba's cache only notices edits to the file that
defines the cached kernel.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fmtlab.formats._fast_bits import bits_f32, bits_f64, f32_bits, f64_bits

NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = 0, 1, 2, 3  # = rounding.ROUNDING_ID

ABS32 = 0x7FFFFFFF
INF32 = 0x7F800000
ABS64 = 0x7FFFFFFFFFFFFFFF
INF64 = 0x7FF0000000000000
MAN64 = 0x000FFFFFFFFFFFFF
MAN32 = 0x007FFFFF
CHUNK = 8192  # elements per parallel task in row layouts

# Parameter tuples hold scalars only (a tuple holding arrays costs reference counting on every
# element and stops vectorization); tables travel as the separate arrays T (family table, 2-D
# float64) and V (the value of every code, float64). SPEC = the table kernel's specials, as fields:
# codes of NaN input, Inf input, overflow, saturation, zero and negative zero (-1 where none; see
# base.Format.special_codes); the *_n fields are for negative inputs.
SPEC = ["nan_p", "nan_n", "inf_p", "inf_n", "ovf_p", "ovf_n", "sat_p", "sat_n", "zero", "nzero"]
MF = namedtuple("MF", [
    "mode", "m", "emin32", "emin64", "ftz", "maxmag", "signbit", "sub32", "sub64", "subthr", *SPEC,
    "ovf32_pos", "ovf32_neg", "inf32_pos", "inf32_neg", "nan32_pos", "nan32_neg", "negzero",
    "nan_raise"])
MF.__doc__ = """Minifloat parameters. emin32/emin64: biased float32/float64 exponent of min_normal;
maxmag: largest finite magnitude code; sub32/sub64: 2**(emin - m) (value of subnormal code 1);
subthr: codes below it take the subnormal product (1 << m; 0 when emin32 = 1, where the normal
pattern formula also gives float32's subnormal patterns and sub32 would be a slow subnormal operand);
*32_pos/neg: float32 patterns of the overflow (for this mode), Inf-input and NaN-input results."""
MFX = namedtuple("MFX", MF._fields)
MFX.__doc__ = """Minifloats whose float32 fast path does not apply (min_normal below 2**-126 or max
at or above 2**128): float32 inputs go through the float64 core."""
MF1 = namedtuple("MF1", MF._fields)
MF1.__doc__ = """Minifloats with float32's exponent range (emin32 = 1, e.g. bf16): the target's
subnormals sit on float32's own subnormal grid, so one rounding of the float32 pattern at bit
23 - m serves every finite input (``_mf1_fq32``)."""
IN = namedtuple("IN", ["mode", "lo32", "hi32", "lo64", "hi64", "mask", *SPEC, "nan32", "nan64",
                       "nan_raise"])
IN.__doc__ = """INT parameters: lo/hi = most negative / largest value; mask = 2**bits - 1;
nan32/nan64 = value of the NaN-input code (0.0 with nan='zero', NaN while raising)."""
TB = namedtuple("TB", ["mode", "kind", "K", "ndenorm", "inv_log2b", "kmax", "signbit", "negzero",
                       *SPEC, "nan64", "nan_raise"])
TB.__doc__ = """Sign-symmetric table parameters; the table T is [4, K+2]: T[0] = mags, ascending
magnitudes (mags[0] = 0, mags[K] = max, mags[K+1] = the virtual value above); T[1][j] = ub[j],
the format's float64 rounding boundary between mags[j] and mags[j+1] (+inf at K+1); T[2][j] = tie
flag (1.0 = even); T[3][j] = lb[j] = ub[j-1] (-inf at 0). kind 0 = dINT (ndenorm levels below 1,
then 1, 2, ...), 1 = log (mags[j] = b**-(kmax+1-j))."""
TBD = namedtuple("TBD", TB._fields + ("th0", "th1", "th2", "v1", "v2", "strict", "vmax"))
TBD.__doc__ = """dINT with at most 2 denormal levels (float32 fast path). th_i: the threshold a must
pass to reach level i+1 (rounding bounds for RNE/RNA, the levels themselves for TZ; +inf where
unused; th_ndenorm is the threshold into 1.0); strict: '>' (RNE: ties below 1 go down) or '>='.
v1, v2: the denormal levels; vmax: the largest integer level."""
_SMALL = 8  # thresholds of the small-table path (formats with K + 1 <= 8: log2..log4, dint4)
TBS = namedtuple("TBS", TB._fields + tuple(f"{c}{i}" for i in range(_SMALL) for c in "tul"))
TBS.__doc__ = """Sign-symmetric table with at most 8 rounding thresholds (float32 fast path without
gathers). Step i: a passes threshold t_i (a > t_i, or a == t_i when u_i) -> the value l_i.
Nearest modes: t_i = ub[i] and u_i = 'a tie at ub[i] goes up'; TOWARD_ZERO: t_i = mags[i+1],
u_i = 1. l_i = mags[i+1], except that the virtual level above max is max itself (saturation);
unused steps have t_i = +inf."""
TBS32 = namedtuple("TBS32", TB._fields + tuple(f"{c}{i}" for i in range(_SMALL) for c in "tul")
                   + ("nan32",))
TBS32.__doc__ = """TBS whose levels are float32 numbers: the whole path runs in float32. A threshold t
that float32 cannot hold becomes the largest float32 below it with a strict test (for a float32
a: a > t <=> a > down32(t), and a == t cannot happen)."""
TBD32 = namedtuple("TBD32", TB._fields + ("th0", "th1", "th2", "u0", "u1", "u2", "v1", "v2",
                                          "vmax", "nan32"))
TBD32.__doc__ = """TBD in float32 (levels float32 numbers; thresholds as in TBS32, u_i: '>=' test)."""
TBL = namedtuple("TBL", TB._fields + ("off",))
TBL.__doc__ = """log-base-b whose estimate is within one index (float32 fast path); off: 1.5 for
nearest modes (log-domain nearest index), 1.0 for TOWARD_ZERO (floor index)."""


# ---------------------------------------------------------------------------------------------
# Shared scalar helpers
# ---------------------------------------------------------------------------------------------
@njit
def _rshift_round(w, sh, mode):
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
def _stoch_up(x, lo_mag, hi_mag, r):
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
def _mf_mag64(a, mode, m, emin64, ftz):
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
        return _rshift_round(a, 52 - m, mode) - ((emin64 - 1) << m)
    S = (a & MAN64) | ((1 << 52) if E > 0 else 0)
    d = emin64 - (E if E > 0 else 1)
    if ftz:
        return _rshift_round(S, min(52 + d, 54), mode) << m
    return _rshift_round(S, min(52 - m + d, 54), mode)


@njit
def _mf_mag32(a, mode, m, emin32, ftz):
    """The float32 twin of ``_mf_mag64`` (needs emin32 >= 1):

    float32 |0| E (8) | F (23) |   normal: round(a >> (23 - m)) - ((emin32 - 1) << m)
    subnormal target: round(S / 2**(23 - m + d)), shifts capped at 25 (> 24-bit significand).
    """
    E = a >> 23
    if E >= emin32:
        return _rshift_round(a, 23 - m, mode) - ((emin32 - 1) << m)
    S = (a & MAN32) | ((1 << 23) if E > 0 else 0)
    d = emin32 - (E if E > 0 else 1)
    if ftz:
        return _rshift_round(S, min(23 + d, 25), mode) << m
    return _rshift_round(S, min(23 - m + d, 25), mode)


@njit
def _mf_val64(c, m, emin64, sub64):
    """float64 value of magnitude code c (c may be maxmag + 1, the virtual value above max):
    subnormal c < 2**m: c * 2**(emin - m); normal: the float64 pattern
    ((c + ((emin64 - 1) << m)) << (52 - m)), i.e. exponent field E_target + emin64 - 1, mantissa M."""
    if c < (1 << m):
        return np.float64(c) * sub64
    return bits_f64((c + ((emin64 - 1) << m)) << (52 - m))


@njit
def _mf_code(P, x, r):
    b = f64_bits(x)
    neg = b < 0
    a = b & ABS64
    if a > INF64:
        return P.nan_n if neg else P.nan_p
    if a == INF64:
        return P.inf_n if neg else P.inf_p
    if P.mode == STOCHASTIC:
        c = _mf_mag64(a, TOWARD_ZERO, P.m, P.emin64, P.ftz)
        if c <= P.maxmag:
            c1 = (1 << P.m) if (P.ftz and c == 0) else c + 1
            if _stoch_up(x, _mf_val64(c, P.m, P.emin64, P.sub64), _mf_val64(c1, P.m, P.emin64, P.sub64), r):
                c = c1
    else:
        c = _mf_mag64(a, P.mode, P.m, P.emin64, P.ftz)
    if c > P.maxmag:
        if P.mode == TOWARD_ZERO:
            return P.sat_n if neg else P.sat_p
        return P.ovf_n if neg else P.ovf_p
    if c == 0:
        return P.nzero if (neg and P.nzero >= 0) else P.zero
    return (c | P.signbit) if neg else c


@njit
def _sel(c, a, b):
    """a if c else b for int64 a, b, as arithmetic (vectorizes where a branch would not)."""
    return b ^ ((a ^ b) & -np.int64(c))


@njit
def _mf_fq32(P, y):
    """Element value (float32) of float32 y, RNE/RNA/TZ, branch-free (``_sel``):

    y |s|E|F| -> a = |y| bits -> magnitude code c (as ``_mf_mag32``) -> value bits:
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
    S = (a & MAN32) | _sel(E > 0, 1 << 23, 0)
    shs = min(23 - _sel(P.ftz, 0, m) + emin32 - max(E, 1), 25)
    w = _sel(sub, S, a)
    sh = _sel(sub, shs, 23 - m)
    half = np.int64(1) << (sh - 1)
    mode = P.mode
    inc = _sel(mode == NEAREST_EVEN, half - 1 + ((w >> sh) & 1), _sel(mode == NEAREST_AWAY, half, 0))
    r = (w + inc) >> sh
    c = _sel(sub, r << _sel(P.ftz, m, 0), r - ((emin32 - 1) << m))
    vn = (c + ((emin32 - 1) << m)) << (23 - m)
    vs = f32_bits(np.float32(c) * P.sub32)
    vb = _sel(c >= P.subthr, vn, vs)
    vb = vb | ((neg << 31) & -np.int64((c != 0) | P.negzero))
    vb = _sel(c > P.maxmag, _sel(neg, P.ovf32_neg, P.ovf32_pos), vb)
    vb = _sel(a == INF32, _sel(neg, P.inf32_neg, P.inf32_pos), vb)
    vb = _sel(a > INF32, _sel(neg, P.nan32_neg, P.nan32_pos), vb)
    return bits_f32(vb)


@njit
def _mf1_fq32(P, y):
    """``_mf_fq32`` for emin32 = 1 (``MF1``): round the magnitude pattern at bit 23 - m,

        |0| E (8) | F (23) |  ->  c = round(a >> (23 - m)),  value pattern c << (23 - m)

    (a carry ripples into the exponent; float32 subnormals need no special case), then sign,
    overflow (c > maxmag, Inf) and NaN patterns."""
    b = f32_bits(y)
    a = b & ABS32
    neg = b >> 31
    sh = 23 - P.m
    mode = P.mode
    half = np.int64(1) << (sh - 1)
    inc = _sel(mode == NEAREST_EVEN, half - 1 + ((a >> sh) & 1), _sel(mode == NEAREST_AWAY, half, 0))
    c = (a + inc) >> sh
    vb = (c << sh) | ((neg << 31) & -np.int64((c != 0) | P.negzero))
    vb = _sel(c > P.maxmag, _sel(neg, P.ovf32_neg, P.ovf32_pos), vb)
    vb = _sel(a == INF32, _sel(neg, P.inf32_neg, P.inf32_pos), vb)
    vb = _sel(a > INF32, _sel(neg, P.nan32_neg, P.nan32_pos), vb)
    return bits_f32(vb)


@njit
def _mf_fq64(P, V, y):
    c = _mf_code(P, y, 0.0)
    return V[c] if c >= 0 else np.nan


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
def _int_code(P, x, r, z):
    """Code of float64 x on the integer grid shifted by the zero point z: q = clamp(round(x), lo-z,
    hi-z) + z, stored as (q & mask) (two's complement for signed formats)."""
    if x != x:
        return P.nan_n if np.signbit(x) else P.nan_p
    if P.mode == STOCHASTIC:
        L = np.floor(x)
        q = L + 1.0 if r < (x - L) else L  # U - L = 1
    else:
        q = _int_round(x, P.mode)
    q = min(max(q, P.lo64 - z), P.hi64 - z) + z
    return np.int64(q) & P.mask


@njit
def _int_fq32(P, y, z):
    """Element value q - z of float32 y (RNE/RNA/TZ); NaN gives P.nan32 (0.0 with nan='zero').
    A rounded -0.0 becomes +0.0 (INT has one zero): adding +0.0 does that under IEEE rules."""
    q = _int_round(y, P.mode)
    q = min(max(q, P.lo32 - z), P.hi32 - z) + np.float32(0.0)
    return P.nan32 if y != y else q


@njit
def _int_fq64(P, y, z):
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
def _tb_code(P, T, x, r):
    if x != x:
        return P.nan_n if np.signbit(x) else P.nan_p
    neg = np.signbit(x)
    a = abs(x)
    if a == np.inf:
        return P.inf_n if neg else P.inf_p
    if P.mode == STOCHASTIC:
        j = _tb_floor_index(P, T, a)
        if j <= P.K and a != T[0, j] and _stoch_up(x, T[0, j], T[0, j + 1], r):
            j += 1
    else:
        j = _tb_index(P, T, a, P.mode)
    if j > P.K:
        return P.sat_n if neg else P.sat_p  # dINT and log formats saturate
    if j == 0:
        return P.nzero if (neg and P.nzero >= 0) else P.zero
    return (j | P.signbit) if neg else j


@njit
def _tb_fq(P, T, y):
    """Element value (float64) of y; NaN gives P.nan64."""
    a = abs(np.float64(y))
    j = _tb_index(P, T, a, P.mode)
    j = min(j, P.K)
    v = T[0, j]
    if np.signbit(y) and (j > 0 or P.negzero):
        v = -v
    return P.nan64 if y != y else v


@njit
def _dint_fq32(P, y):
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
def _log_fq32(P, T, y):
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
def _small_fq(P, y):
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
def _small_fq32(P, y):
    """``_small_fq`` entirely in float32 (``TBS32``): 16 lanes per vector instead of 8."""
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
def _dint_fq32f(P, y):
    """``_dint_fq32`` entirely in float32 (``TBD32``). NEAREST_AWAY rounds the integer part as
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


# ---------------------------------------------------------------------------------------------
# Compile-time dispatch on the parameter tuple's type
# ---------------------------------------------------------------------------------------------
def _code(P, T, x, r, z):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


def _fq(P, T, V, y, z):  # pragma: no cover
    raise NotImplementedError


def _is(P, cls) -> bool:
    return isinstance(P, types.BaseNamedTuple) and P.instance_class is cls


@overload(_code)
def _ov_code(P, T, x, r, z):
    if _is(P, MF) or _is(P, MFX) or _is(P, MF1):
        return lambda P, T, x, r, z: _mf_code(P, x, r)
    if _is(P, IN):
        return lambda P, T, x, r, z: _int_code(P, x, r, z)
    if _is(P, TB) or _is(P, TBD) or _is(P, TBL) or _is(P, TBS) or _is(P, TBS32) or _is(P, TBD32):
        return lambda P, T, x, r, z: _tb_code(P, T, x, r)


@overload(_fq)
def _ov_fq(P, T, V, y, z):
    f32 = y == types.float32
    if _is(P, MF):
        if f32:
            return lambda P, T, V, y, z: _mf_fq32(P, y)
        return lambda P, T, V, y, z: _mf_fq64(P, V, y)
    if _is(P, MFX):
        return lambda P, T, V, y, z: _mf_fq64(P, V, np.float64(y))
    if _is(P, MF1):
        if f32:
            return lambda P, T, V, y, z: _mf1_fq32(P, y)
        return lambda P, T, V, y, z: _mf_fq64(P, V, y)
    if _is(P, IN):
        if f32:
            return lambda P, T, V, y, z: _int_fq32(P, y, z)
        return lambda P, T, V, y, z: _int_fq64(P, y, z)
    if _is(P, TB):
        return lambda P, T, V, y, z: _tb_fq(P, T, y)
    if _is(P, TBD):
        if f32:
            return lambda P, T, V, y, z: _dint_fq32(P, y)
        return lambda P, T, V, y, z: _tb_fq(P, T, y)
    if _is(P, TBL):
        if f32:
            return lambda P, T, V, y, z: _log_fq32(P, T, y)
        return lambda P, T, V, y, z: _tb_fq(P, T, y)
    if _is(P, TBS):
        return lambda P, T, V, y, z: _small_fq(P, y)
    if _is(P, TBS32):
        if f32:
            return lambda P, T, V, y, z: _small_fq32(P, y)
        return lambda P, T, V, y, z: _tb_fq(P, T, y)
    if _is(P, TBD32):
        if f32:
            return lambda P, T, V, y, z: _dint_fq32f(P, y)
        return lambda P, T, V, y, z: _tb_fq(P, T, y)


# ---------------------------------------------------------------------------------------------
# Layouts. x, out: flat C-contiguous. Row layout: element i belongs to row i // Q, whose scale is
# scales[(i // Q) % C]; column layout: x is [P, C] and element (p, c) has scales[c].
# inv = 1 / scales (used instead of division when pow2 is True: identical for powers of two).
# zps: zero points (x's dtype, integers) per scale slot, or a length-1 zero array.
# rand: STOCHASTIC draws (float64, one per element) or a length-1 dummy.
# T, V: the family table and the value of every code (see the parameter tuples).
# Return: the number of NaN inputs that have no code (the caller raises; nan='raise').
# ---------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def encode_rows(P, T, V, x, codes, vals, want_codes, want_vals, Q, C, scales, inv, zps, pow2, rand):
    """Codes of x / s (row layout), any rounding mode (the float64 cores); with want_vals also
    their values (V[code] - z) * s (the stochastic fake-quant). codes: uint16, vals: x's dtype
    (length-1 dummies when not wanted)."""
    n = x.shape[0]
    nrows = n // Q
    per = (Q + CHUNK - 1) // CHUNK
    nz = zps.shape[0]
    stoch = P.mode == STOCHASTIC
    bad = 0
    for t in prange(nrows * per):
        row = np.int64(t) // per
        lo = row * Q + (np.int64(t) - row * per) * CHUNK
        hi = min(lo + CHUNK, (row + 1) * Q)
        k = row % C
        s = scales[k]
        iv = inv[k]
        z = zps[k] if nz == C else zps[0]
        xs = x[lo:hi]
        rs = rand[lo:hi] if stoch else rand
        nb = 0
        for i in range(xs.shape[0]):
            y = xs[i] * iv if pow2 else xs[i] / s
            c = _code(P, T, np.float64(y), rs[i] if stoch else 0.0, np.float64(z))
            nb += c < 0
            if want_codes:
                codes[lo + i] = max(c, 0)
            if want_vals:
                vals[lo + i] = (V[c] - z) * s if c >= 0 else np.nan
        bad += nb
    return bad


@njit(cache=True, parallel=True)
def encode_cols(P, T, V, x, codes, vals, want_codes, want_vals, C, scales, inv, zps, pow2, rand):
    """``encode_rows`` for the column layout ([P, C], scale per column)."""
    nr = x.shape[0] // C
    nz = zps.shape[0]
    stoch = P.mode == STOCHASTIC
    bad = 0
    for p in prange(nr):
        nb = 0
        base = np.int64(p) * C
        for k in range(C):
            i = base + k
            y = x[i] * inv[k] if pow2 else x[i] / scales[k]
            z = zps[k] if nz == C else zps[0]
            c = _code(P, T, np.float64(y), rand[i] if stoch else 0.0, np.float64(z))
            nb += c < 0
            if want_codes:
                codes[i] = max(c, 0)
            if want_vals:
                vals[i] = (V[c] - z) * scales[k] if c >= 0 else np.nan
        bad += nb
    return bad


@njit(cache=True, parallel=True)
def fq_rows(P, T, V, x, out, Q, C, scales, inv, zps, pow2, count):
    """Fused fake-quant, row layout (RNE/RNA/TZ): out = fl(v(x / s) * s), codes never stored.

    Each parallel task takes a slice of at most CHUNK elements of one row and loops over it from
    index 0 (slices keep LLVM's vectorizer happy where offset indices do not). With count, returns
    the number of NaN inputs (for formats without NaN, where the caller raises)."""
    n = x.shape[0]
    nrows = n // Q
    per = (Q + CHUNK - 1) // CHUNK
    nz = zps.shape[0]
    bad = 0
    for t in prange(nrows * per):
        row = np.int64(t) // per
        lo = row * Q + (np.int64(t) - row * per) * CHUNK
        hi = min(lo + CHUNK, (row + 1) * Q)
        k = row % C
        s = scales[k]
        iv = inv[k]
        z = zps[k] if nz == C else zps[0]
        xs = x[lo:hi]
        os = out[lo:hi]
        m = xs.shape[0]
        nb = 0
        if pow2:
            for i in range(m):
                os[i] = _fq(P, T, V, xs[i] * iv, z) * s
        else:
            for i in range(m):
                os[i] = _fq(P, T, V, xs[i] / s, z) * s
        if count:
            for i in range(m):
                nb += xs[i] != xs[i]
        bad += nb
    return bad


@njit(cache=True, parallel=True)
def fq_cols(P, T, V, x, out, C, scales, inv, zps, pow2, count):
    """Fused fake-quant, column layout ([P, C], one scale per column; RNE/RNA/TZ)."""
    nr = x.shape[0] // C
    nz = zps.shape[0]
    bad = 0
    for p in prange(nr):
        nb = 0
        base = np.int64(p) * C
        xs = x[base:base + C]
        os = out[base:base + C]
        if nz == C:
            for k in range(C):
                os[k] = _fq(P, T, V, xs[k] / scales[k], zps[k]) * scales[k]
        elif pow2:
            z = zps[0]
            for k in range(C):
                os[k] = _fq(P, T, V, xs[k] * inv[k], z) * scales[k]
        else:
            z = zps[0]
            for k in range(C):
                os[k] = _fq(P, T, V, xs[k] / scales[k], z) * scales[k]
        if count:
            for k in range(C):
                nb += xs[k] != xs[k]
        bad += nb
    return bad


# ---------------------------------------------------------------------------------------------
# Block scales (MX: E8M0 power-of-two; FP8-scaled blocks: NVFP4 and friends)
# ---------------------------------------------------------------------------------------------
FLOOR, CEIL, EVEN, RCEIL = 0, 1, 2, 3  # shared-exponent rules (mx.py documents them)


@njit
def _floor_log2_bits(b):
    """floor(log2 A) of the positive finite float32 with pattern b (subnormals included)."""
    E = b >> 23
    if E > 0:
        return E - 127
    f = b & MAN32
    k = 0
    while (f >> (k + 1)) > 0:
        k += 1
    return k - 149


@njit
def _ceil_log2_bits(b):
    """ceil(log2 A) of the positive finite float32 with pattern b."""
    fl = _floor_log2_bits(b)
    E = b >> 23
    exact = (b & MAN32) == 0 if E > 0 else ((b & MAN32) & ((b & MAN32) - 1)) == 0
    return fl if exact else fl + 1


@njit
def mx_shared_exp(amax_bits, rule, emax, mbits, elem_max):
    """Unbiased E8M0 exponent e (clamped to [-127, 127]) for a block whose finite max |x| has the
    float32 pattern amax_bits (0 for an all-zero block, which gives -127).

    FLOOR  floor(log2 A) - emax                       (OCP MX v1.0)
    CEIL   ceil(log2 A) - emax
    EVEN   floor(log2 A') - emax, A' = A rounded half-up to mbits mantissa bits on its pattern:
           (amax_bits + 2**(22 - mbits)) >> 23 gives A''s exponent field
    RCEIL  ceil(log2 D), D = fl32(A / elem_max)
    """
    if amax_bits == 0:
        return -127
    if rule == FLOOR:
        e = _floor_log2_bits(amax_bits) - emax
    elif rule == CEIL:
        e = _ceil_log2_bits(amax_bits) - emax
    elif rule == EVEN:
        rb = amax_bits + (1 << (22 - mbits))
        rb = rb & ~((1 << 23) - 1) if (rb >> 23) > 0 else rb
        e = _floor_log2_bits(rb) - emax
    else:
        d = bits_f32(amax_bits) / elem_max
        db = f32_bits(d)
        e = -127 if db == 0 else _ceil_log2_bits(db)
    return min(max(e, -127), 127)


@njit
def _pow2_f32(k):
    """2**k as a float32 for -149 <= k <= 127, from its pattern: normal |0|k+127|0..0|, subnormal
    a single mantissa bit 1 << (k + 149)."""
    return bits_f32(((k + 127) << 23) if k >= -126 else (1 << (k + 149)))


@njit
def _absmax_bits(xs):
    """max |x| of a float32 slice as a float32 pattern compared as an integer (NaN and Inf give
    patterns >= 0x7F800000, so one comparison flags a non-finite block)."""
    amax = 0
    for t in range(xs.shape[0]):
        amax = max(amax, f32_bits(xs[t]) & ABS32)
    return amax


@njit
def _elems_scaled(P, T, V, xs, os, K, iXs, Xs):
    """Phase 2 of the block kernels: os = fl32(v(xs * iX) * X) block by block, loops of literal
    length for K = 32 and 16 (LLVM unrolls and vectorizes those; a runtime-length loop per block
    spends more on bookkeeping than on elements). iX is 1 / X (MX, exact) or NaN-free filler."""
    z32 = np.float32(0.0)
    for b in range(iXs.shape[0]):
        o = b * K
        iX = iXs[b]
        X = Xs[b]
        if K == 32:
            for u in range(32):
                os[o + u] = _fq(P, T, V, xs[o + u] * iX, z32) * X
        elif K == 16:
            for u in range(16):
                os[o + u] = _fq(P, T, V, xs[o + u] * iX, z32) * X
        else:
            for u in range(K):
                os[o + u] = _fq(P, T, V, xs[o + u] * iX, z32) * X


@njit(cache=True, parallel=True)
def mx_fq(P, T, V, x, out, K, rule, emax, mbits, elem_max, eoff, want_codes, codes, sexp):
    """Fused MX fake-quant of flat float32 x in blocks of K: per block the shared exponent e
    (``mx_shared_exp``), element scale X = 2**(e + eoff) (eoff = -(bits-2) for INT elements, the
    MXINT8 1.6 fixed point), out = fl32(v(x / X) * X). A block holding NaN or Inf gets the NaN
    scale: sexp = 255 and every output NaN. sexp receives the biased E8M0 codes (e + 127);
    with want_codes, codes receives the element codes (0 in NaN blocks).

    Each task first computes all its block scales (phase 1), then the elements (phase 2, see
    ``_elems_scaled``): keeping the scale arithmetic out of the element loops' dependency chains
    is worth ~1.4x. Blocks whose 1/X is beyond float32 (e + eoff < -126) are redone after phase 2,
    scaled in float64 (exact) and rounded once to float32.
    """
    nb = x.shape[0] // K
    bpt = max(1, CHUNK // K)  # blocks per parallel task
    z32 = np.float32(0.0)
    for t in prange((nb + bpt - 1) // bpt):
        b0 = np.int64(t) * bpt
        b1 = min(nb, b0 + bpt)
        xs = x[b0 * K:b1 * K]
        os = out[b0 * K:b1 * K]
        iXs = np.empty(b1 - b0, np.float32)
        Xs = np.empty(b1 - b0, np.float32)
        special = 0
        for b in range(b1 - b0):
            amax = _absmax_bits(xs[b * K:(b + 1) * K])
            if amax >= INF32:
                sexp[b0 + b] = 255
                iXs[b] = 0.0
                Xs[b] = np.nan
                special += 1
                continue
            e = mx_shared_exp(amax, rule, emax, mbits, elem_max)
            sexp[b0 + b] = e + 127
            ee = e + eoff
            Xs[b] = _pow2_f32(ee)
            iXs[b] = _pow2_f32(-ee) if ee >= -126 else np.float32(0.0)
            special += ee < -126
        if not want_codes:
            _elems_scaled(P, T, V, xs, os, K, iXs, Xs)
            if special == 0:
                continue
        for b in range(b1 - b0):
            ee = np.int64(sexp[b0 + b]) - 127 + eoff
            if not want_codes and sexp[b0 + b] != 255 and ee >= -126:
                continue
            o = b * K
            if sexp[b0 + b] == 255:
                for u in range(K):
                    os[o + u] = np.nan
                    if want_codes:
                        codes[(b0 + b) * K + u] = 0
                continue
            iX64 = bits_f64((1023 - ee) << 52)
            X = Xs[b]
            for u in range(K):
                y = np.float32(np.float64(xs[o + u]) * iX64)
                if want_codes:
                    codes[(b0 + b) * K + u] = max(_code(P, T, np.float64(y), 0.0, 0.0), 0)
                os[o + u] = _fq(P, T, V, y, z32) * X
    return 0


@njit
def _fp8_scale(S8, amax, g, elem_max):
    """(FP8 code, effective float32 scale S) of a finite block whose max |x| has pattern amax:
    s_rel = fl32(fl32(A / elem_max) / g), code = min(max(RNE(s_rel), 1), max code),
    S = fl32(g * value(code))."""
    s_rel = (bits_f32(amax) / elem_max) / g
    c8 = _mf_mag32(f32_bits(s_rel), NEAREST_EVEN, S8.m, S8.emin32, S8.ftz)
    c8 = min(max(c8, 1), S8.maxmag)
    return c8, g * np.float32(_mf_val64(c8, S8.m, S8.emin64, S8.sub64))


@njit
def _elems_div(P, T, V, xs, os, K, Ss):
    """``_elems_scaled`` for non-power-of-two scales: os = fl32(v(fl32(xs / S)) * S)."""
    z32 = np.float32(0.0)
    for b in range(Ss.shape[0]):
        o = b * K
        S = Ss[b]
        if K == 16:
            for u in range(16):
                os[o + u] = _fq(P, T, V, xs[o + u] / S, z32) * S
        else:
            for u in range(K):
                os[o + u] = _fq(P, T, V, xs[o + u] / S, z32) * S


@njit(cache=True, parallel=True)
def fp8scale_fq(P, T, V, S8, x, out, K, g, elem_max, want_codes, codes, scodes, seff):
    """Fused fake-quant with an FP8 (E4M3-like, parameters S8: an MF tuple, RNE, saturating) block
    scale and a float32 tensor scale g (NVFP4: K = 16, E2M1 elements, elem_max = 6):

        A = max |x| of the block (float32); s_rel = fl32(fl32(A / elem_max) / g)
        scode = min(max(E4M3_RNE(s_rel), 1), max code)  (never the zero scale: 2**-9 at least)
        S = fl32(g * e4m3(scode)); out = fl32(v(fl32(x / S)) * S)
    A block holding NaN or Inf: scode = the E4M3 NaN code, S = NaN, outputs NaN (codes 0).
    scodes / seff receive the E4M3 codes and the effective float32 scales S. Two phases per task,
    as ``mx_fq``.
    """
    nb = x.shape[0] // K
    bpt = max(1, CHUNK // K)
    z32 = np.float32(0.0)
    for t in prange((nb + bpt - 1) // bpt):
        b0 = np.int64(t) * bpt
        b1 = min(nb, b0 + bpt)
        xs = x[b0 * K:b1 * K]
        os = out[b0 * K:b1 * K]
        Ss = np.empty(b1 - b0, np.float32)
        for b in range(b1 - b0):
            amax = _absmax_bits(xs[b * K:(b + 1) * K])
            if amax >= INF32:
                scodes[b0 + b] = S8.nan_p
                S = np.float32(np.nan)
            else:
                c8, S = _fp8_scale(S8, amax, g, elem_max)
                scodes[b0 + b] = c8
            seff[b0 + b] = S
            Ss[b] = S
        if not want_codes:
            _elems_div(P, T, V, xs, os, K, Ss)
            continue
        for b in range(b1 - b0):
            o = b * K
            S = Ss[b]
            for u in range(K):
                y = xs[o + u] / S
                codes[(b0 + b) * K + u] = max(_code(P, T, np.float64(y), 0.0, 0.0), 0) if S == S else 0
                os[o + u] = _fq(P, T, V, y, z32) * S
    return 0


@njit(cache=True, parallel=True)
def sse_rows(P, T, V, x, Q, C, scales, inv, zps, pow2, out):
    """Per-row sum of squared errors (float64) of the fused fake-quant (RNE/RNA/TZ), for MSE
    clip search: out[r] = sum_i (fq(x_i) - x_i)**2 over row r, with scale slot r % C."""
    nrows = x.shape[0] // Q
    nz = zps.shape[0]
    for row in prange(nrows):
        k = np.int64(row) % C
        s = scales[k]
        iv = inv[k]
        z = zps[k] if nz == C else zps[0]
        xs = x[np.int64(row) * Q:(np.int64(row) + 1) * Q]
        acc = 0.0
        for i in range(Q):
            y = xs[i] * iv if pow2 else xs[i] / s
            d = np.float64(_fq(P, T, V, y, z) * s) - np.float64(xs[i])
            acc += d * d
        out[row] = acc
    return 0


@njit(cache=True)
def mx_exps(amax_bits, rule, emax, mbits, elem_max, out):
    """out[b] = biased E8M0 code (e + 127) of each block from its max |x| pattern; 255 for
    non-finite blocks (pattern >= 0x7F800000)."""
    for b in range(amax_bits.shape[0]):
        a = amax_bits[b]
        out[b] = 255 if a >= INF32 else mx_shared_exp(a, rule, emax, mbits, elem_max) + 127
    return 0


@njit(cache=True)
def fp8_scales(S8, amax_bits, g, elem_max, scodes, seff):
    """FP8 block scales as ``fp8scale_fq`` computes them (``_fp8_scale``): scodes[b] (the FP8 code)
    and seff[b] (the effective float32 scale; NaN code and NaN for non-finite blocks)."""
    for b in range(amax_bits.shape[0]):
        a = amax_bits[b]
        if a >= INF32:
            scodes[b] = S8.nan_p
            seff[b] = np.nan
        else:
            scodes[b], seff[b] = _fp8_scale(S8, a, g, elem_max)
    return 0


@njit(cache=True, parallel=True)
def finite_absmax_rows(x, Q, amax, flags):
    """Per row of Q float32 elements: amax[r] = max |x| over finite elements (as the float32 value)
    and flags[r] = 1 if the row holds NaN, + 2 if it holds Inf."""
    nrows = x.shape[0] // Q
    for r in prange(nrows):
        xs = x[np.int64(r) * Q:(np.int64(r) + 1) * Q]
        m = 0
        nan = 0
        inf = 0
        for i in range(Q):
            b = f32_bits(xs[i]) & ABS32
            nan |= b > INF32
            inf |= b == INF32
            m = max(m, b if b < INF32 else 0)
        amax[r] = bits_f32(m)
        flags[r] = nan + 2 * inf
    return 0
