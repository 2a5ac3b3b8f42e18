"""numba kernels of the bit-accurate MAC datapath (used through :mod:`fmtlab.hw.datapath`).

Numeric conventions
-------------------
- Fixed-point products (INT/dINT/log2) are exact int64 integers (units 2**-(frac_w + frac_a)).
  An int accumulator of W bits adds each product exactly and then, if the sum leaves
  [-2^(W-1), 2^(W-1)), counts one overflow and wraps (mod 2^W) or saturates.
- Float products (minifloat x minifloat) are exact in float64 (<= 11-bit significands).
  A float accumulator computes round(acc + p) with ONE rounding (an FMA when p is exact):
  ``_ro_add`` returns acc + p rounded to odd at 53 bits, and ``round_fmt`` rounds that to the
  target (p_t = man_bits + 1 <= 51 bits, so round-to-odd then round is exact:
  Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
  rounding to odd", IEEE TC 2008). Subnormals are kept; overflow gives Inf (nearest-even) or
  the largest finite value (toward zero); any NaN gives NaN; Inf - Inf gives NaN.
- Exact sums use limbs: an int64 array, limb i holding bits [30 i, 30 i + 30) of a
  two's-complement integer (carries are deferred, then propagated by ``_normalise``).

Round to odd, drawn for a 5-bit target (x = exact, | = target grid, o = odd 6-bit point):
    |----o----|----o----|      x between two grid points -> the odd point between them
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

LIMB = 30
LMASK = (1 << LIMB) - 1
MX_OFFSET = 256  # bias added to E8M0 scale sums (>= -254) in the exact MX reference


# ------------------------------------------------------------------------------------------
# scalar cores
# ------------------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _is_odd53(s: float) -> bool:
    m, e = math.frexp(abs(s))
    return (np.int64(math.ldexp(m, 53)) & 1) == 1


@nb.njit(cache=True)
def _ro_add(a: float, b: float) -> float:
    """a + b rounded to odd at float64 precision (a, b finite, |a + b| far from overflow)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    if err != 0.0 and not _is_odd53(s):
        s = np.nextafter(s, np.inf if err > 0.0 else -np.inf)
    return s


@nb.njit(cache=True)
def round_fmt(x: float, man_bits: int, emin: int, emax: int, rtz: bool) -> float:
    """Round finite float64 ``x`` to binary with ``man_bits`` fraction bits, normal exponents
    [emin, emax], subnormals; nearest-even (overflow -> Inf) or toward zero (-> max finite)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    ax = abs(x)
    m, e = math.frexp(ax)  # ax = m 2^e, m in [0.5, 1)
    t = e - 1
    q = max(t, emin) - man_bits
    y = math.ldexp(ax, -q)
    r = math.floor(y) if rtz else np.rint(y)
    res = math.ldexp(r, q)
    maxf = math.ldexp(2.0 - math.ldexp(1.0, -man_bits), emax)
    if res > maxf:
        res = maxf if rtz else np.inf
    return math.copysign(res, x)


@nb.njit(cache=True)
def fp_step(acc: float, p: float, man_bits: int, emin: int, emax: int, rtz: bool,
             is_f64: bool) -> float:
    """One accumulation acc <- round(acc + p) (see module doc)."""
    if math.isnan(acc) or math.isnan(p):
        return np.nan
    if math.isinf(acc) or math.isinf(p):
        return acc + p  # Inf - Inf -> NaN
    if is_f64:
        return acc + p
    return round_fmt(_ro_add(acc, p), man_bits, emin, emax, rtz)


@nb.njit(cache=True)
def _int_step(acc: np.int64, p: np.int64, width: int, saturate: bool):
    """acc + p into a ``width``-bit two's-complement register; returns (new, overflowed)."""
    if width == 64:
        s = acc + p  # wraps in int64
        ovf = (acc >= 0 and p >= 0 and s < 0) or (acc < 0 and p < 0 and s >= 0)
        if ovf and saturate:
            s = np.int64(-(2 ** 63)) if p < 0 else np.int64(2 ** 63 - 1)
        return s, ovf
    hi = np.int64(1) << (width - 1)
    s = acc + p
    if s >= hi or s < -hi:
        if saturate:
            return (hi - 1) if s > 0 else -hi, True
        m = np.int64(1) << width
        s = ((s + hi) & (m - 1)) - hi
        return s, True
    return s, False


# ------------------------------------------------------------------------------------------
# limbs
# ------------------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _limb_add(L, mag: np.int64, shift: np.int64, neg: bool) -> None:
    """L += (-1)^neg * mag * 2^shift   (0 <= mag < 2^24)."""
    k = shift // LIMB
    r = shift - k * LIMB
    v = mag << r
    lo = v & LMASK
    hi = v >> LIMB
    if neg:
        L[k] -= lo
        L[k + 1] -= hi
    else:
        L[k] += lo
        L[k + 1] += hi


@nb.njit(cache=True)
def _normalise(L) -> None:
    """Propagate carries: limbs 0..n-2 in [0, 2^30), the top limb keeps the sign."""
    n = L.shape[0]
    for i in range(n - 1):
        c = L[i] >> LIMB  # floor division by 2^30
        L[i] -= c << LIMB
        L[i + 1] += c


@nb.njit(cache=True)
def _limbs_ro61(L):
    """Normalised limbs -> (negative, m, e): |value| = m * 2^e rounded to odd at 61 bits
    (m = 0 for zero). Leaves L unchanged."""
    n = L.shape[0]
    neg = L[n - 1] < 0
    M = L.copy()
    if neg:
        for i in range(n):
            M[i] = -M[i]
        _normalise(M)
    t = -1
    for i in range(n - 1, -1, -1):
        if M[i] != 0:
            t = i
            break
    if t < 0:
        return neg, np.int64(0), 0
    acc = M[t]
    e = LIMB * t
    i = t - 1
    sticky = False
    while i >= 0:
        bl = 0
        v = acc
        while v > 0:
            bl += 1
            v >>= 1
        room = 61 - bl
        if room <= 0:
            break
        if room >= LIMB:
            acc = (acc << LIMB) | M[i]
            e -= LIMB
        else:
            acc = (acc << room) | (M[i] >> (LIMB - room))
            if M[i] & ((np.int64(1) << (LIMB - room)) - 1):
                sticky = True
            e -= room
            i -= 1
            break
        i -= 1
    while i >= 0:
        if M[i] != 0:
            sticky = True
        i -= 1
    bl = 0
    v = acc
    while v > 0:
        bl += 1
        v >>= 1
    if bl > 61:
        d = bl - 61
        if acc & ((np.int64(1) << d) - 1):
            sticky = True
        acc >>= d
        e += d
    if sticky:
        acc |= 1
    return neg, acc, e


@nb.njit(cache=True)
def _limbs_to_f64(L, base_exp: int) -> float:
    """value * 2^base_exp correctly rounded (nearest even) to float64."""
    neg, m, e = _limbs_ro61(L)
    if m == 0:
        return 0.0
    v = math.ldexp(float(m), e + base_exp)  # int64 -> float64 rounds to nearest even
    return -v if neg else v


@nb.njit(cache=True)
def _limbs_to_ro53(L, base_exp: int) -> float:
    """value * 2^base_exp rounded to odd at 53 bits (exact in float64)."""
    neg, m, e = _limbs_ro61(L)
    if m == 0:
        return 0.0
    bl = 0
    v = m
    while v > 0:
        bl += 1
        v >>= 1
    if bl > 53:
        d = bl - 53
        st = (m & ((np.int64(1) << d) - 1)) != 0
        m >>= d
        e += d
        if st:
            m |= 1
    r = math.ldexp(float(m), e + base_exp)
    return -r if neg else r


@nb.njit(cache=True)
def _limbs_wrap(L, width: int) -> bool:
    """Reduce normalised limbs to a ``width``-bit two's-complement value in place; return True
    if the value was outside [-2^(width-1), 2^(width-1))."""
    n = L.shape[0]
    k = width // LIMB
    r = width - k * LIMB
    # is it in range? value >> (width - 1) must be 0 or -1
    # compute the limbs of value >> (width-1) lazily: check bits >= width-1 all equal
    top = L[n - 1]
    sign_fill = np.int64(-1) if top < 0 else np.int64(0)
    in_range = True
    b = width - 1
    kb = b // LIMB
    rb = b - kb * LIMB
    for i in range(kb, n):
        v = L[i]
        if i == n - 1:
            # top limb is signed: all its bits above rb (if i == kb) must be the sign
            hi = v >> rb if i == kb else v
            if hi != sign_fill:
                in_range = False
        else:
            want = LMASK if sign_fill == -1 else 0
            if i == kb:
                mask = LMASK & ~((np.int64(1) << rb) - 1)
                if (v & mask) != (want & mask):
                    in_range = False
            elif v != want:
                in_range = False
    if in_range:
        return False
    # keep the low `width` bits, then sign-extend from bit width-1
    for i in range(n):
        if i > k or (i == k and r == 0):
            L[i] = 0
        elif i == k:
            L[i] &= (np.int64(1) << r) - 1
    # now 0 <= value < 2^width (limbs below k are in [0, 2^30))
    if width - 1 >= 0:
        kb2 = (width - 1) // LIMB
        rb2 = (width - 1) - kb2 * LIMB
        if (L[kb2] >> rb2) & 1:
            # subtract 2^width
            kw = width // LIMB
            rw = width - kw * LIMB
            L[kw] -= np.int64(1) << rw
            _normalise(L)
    return True


# ------------------------------------------------------------------------------------------
# row kernels: W (M, K) codes against X (Mx, K) codes, Mx in {1, M} (broadcast)
# ------------------------------------------------------------------------------------------


@nb.njit(cache=True, parallel=True)
def dot_fixed(W, X, lut_w, lut_x, width, saturate, acc0, out_acc, out_exact, out_ovf):
    """Integer products into a ``width``-bit accumulator (sequential, k = 0..K-1)."""
    M, K = W.shape
    bx = X.shape[0] == 1
    for i in nb.prange(M):
        xi = np.int64(0) if bx else np.int64(i)
        acc = acc0[i]
        ex = np.int64(0)
        n_ovf = 0
        for k in range(K):
            p = lut_w[W[i, k]] * lut_x[X[xi, k]]
            ex += p
            acc, o = _int_step(acc, p, width, saturate)
            if o:
                n_ovf += 1
        out_acc[i] = acc
        out_exact[i] = ex
        out_ovf[i] = n_ovf


@nb.njit(cache=True, parallel=True)
def dot_float(W, X, val_w, val_x, man_bits, emin, emax, rtz, is_f64, acc0, out_acc, out_ovf):
    """Float products accumulated with one rounding per step into a float format."""
    M, K = W.shape
    bx = X.shape[0] == 1
    for i in nb.prange(M):
        xi = np.int64(0) if bx else np.int64(i)
        acc = acc0[i]
        n_ovf = 0
        for k in range(K):
            p = val_w[W[i, k]] * val_x[X[xi, k]]
            new = fp_step(acc, p, man_bits, emin, emax, rtz, is_f64)
            if math.isinf(new) and math.isfinite(acc) and math.isfinite(p):
                n_ovf += 1
            acc = new
        out_acc[i] = acc
        out_ovf[i] = n_ovf


@nb.njit(cache=True, parallel=True)
def dot_float32(W, X, val_w, val_x, acc0, out_acc, out_ovf):
    """Fast path of ``dot_float`` for an fp32 nearest-even accumulator when every product is
    exact in float32: then round(acc + p) is IEEE float32 addition (no FMA contraction)."""
    M, K = W.shape
    bx = X.shape[0] == 1
    for i in nb.prange(M):
        xi = np.int64(0) if bx else np.int64(i)
        acc = np.float32(acc0[i])
        n_ovf = 0
        for k in range(K):
            p = val_w[W[i, k]] * val_x[X[xi, k]]
            new = acc + p
            if math.isinf(new) and math.isfinite(acc) and math.isfinite(p):
                n_ovf += 1
            acc = new
        out_acc[i] = acc
        out_ovf[i] = n_ovf


@nb.njit(cache=True, parallel=True)
def dot_exact_float(W, X, sig_w, sh_w, sig_x, sh_x, val_w, val_x, base_exp, nlimbs, width,
                    out_exact, out_wrapped, out_ovf, out_special):
    """Exact sum of float products with limbs (units 2**base_exp).

    out_exact: the exact sum rounded once to float64; out_wrapped: the same sum reduced to a
    ``width``-bit two's-complement Kulisch register (width <= 0: no reduction);
    out_ovf: 1 if the reduction changed the value; out_special: NaN/Inf result where products
    were NaN or infinite (0 otherwise, NaN-free finite marker = 0.0 and flag in out_ovf sign).
    """
    M, K = W.shape
    bx = X.shape[0] == 1
    for i in nb.prange(M):
        xi = np.int64(0) if bx else np.int64(i)
        L = np.zeros(nlimbs, dtype=np.int64)
        nan = False
        pinf = False
        ninf = False
        cnt = 0
        for k in range(K):
            cw = W[i, k]
            cx = X[xi, k]
            vw = val_w[cw]
            vx = val_x[cx]
            if not (math.isfinite(vw) and math.isfinite(vx)):
                p = vw * vx
                if math.isnan(p):
                    nan = True
                elif p > 0:
                    pinf = True
                else:
                    ninf = True
                continue
            mag = sig_w[cw] * sig_x[cx]
            if mag == 0:
                continue
            neg = (vw < 0) != (vx < 0)
            _limb_add(L, mag, sh_w[cw] + sh_x[cx], neg)
            cnt += 1
            if cnt >= (1 << 20):
                _normalise(L)
                cnt = 0
        _normalise(L)
        out_exact[i] = _limbs_to_f64(L, base_exp)
        if width > 0:
            out_ovf[i] = 1 if _limbs_wrap(L, width) else 0
            out_wrapped[i] = _limbs_to_f64(L, base_exp)
        else:
            out_ovf[i] = 0
            out_wrapped[i] = out_exact[i]
        if nan or (pinf and ninf):
            out_special[i] = np.nan
        elif pinf:
            out_special[i] = np.inf
        elif ninf:
            out_special[i] = -np.inf
        else:
            out_special[i] = 0.0


@nb.njit(cache=True, parallel=True)
def dot_mx(W, X, SW, SX, block, sig_w, sh_w, sig_x, sh_x, val_w, val_x, base_exp, nlimbs,
           nlimbs_all, man_bits, emin, emax, rtz, acc0, out_acc, out_exact, out_ovf):
    """MX dot products: per block an exact sum of element products, scaled by
    2^(SW + SX - 254) (E8M0 codes; 255 = NaN), rounded once to the accumulator format, then
    added to the accumulator with one rounding."""
    M, K = W.shape
    bx = X.shape[0] == 1
    nb_ = K // block
    for i in nb.prange(M):
        xi = np.int64(0) if bx else np.int64(i)
        acc = acc0[i]
        Lall = np.zeros(nlimbs_all, dtype=np.int64)  # exact sum over all blocks (scaled)
        ex_nan = False
        ex_pinf = False
        ex_ninf = False
        n_ovf = 0
        L = np.zeros(nlimbs, dtype=np.int64)
        for b in range(nb_):
            L[:] = 0
            nan = False
            pinf = False
            ninf = False
            for j in range(block):
                k = b * block + j
                cw = W[i, k]
                cx = X[xi, k]
                vw = val_w[cw]
                vx = val_x[cx]
                if not (math.isfinite(vw) and math.isfinite(vx)):
                    p = vw * vx
                    if math.isnan(p):
                        nan = True
                    elif p > 0:
                        pinf = True
                    else:
                        ninf = True
                    continue
                mag = sig_w[cw] * sig_x[cx]
                if mag != 0:
                    _limb_add(L, mag, sh_w[cw] + sh_x[cx], (vw < 0) != (vx < 0))
            _normalise(L)
            sw = SW[i, b]
            sx = SX[xi, b]
            if sw == 255 or sx == 255 or nan or (pinf and ninf):
                bv = np.nan
            elif pinf:
                bv = np.inf
            elif ninf:
                bv = -np.inf
            else:
                sc = np.int64(sw) + np.int64(sx) - 254
                bv = round_fmt(_limbs_to_ro53(L, base_exp + sc), man_bits, emin, emax, rtz)
                # exact reference: add the block's limbs shifted by the scale
                off = sc + MX_OFFSET  # keep shifts non-negative (scale >= -254)
                for q in range(nlimbs):
                    v = L[q]
                    if v != 0:
                        neg = v < 0
                        mag = -v if neg else v
                        # split mag (< 2^31) into two parts below 2^24
                        lo = mag & 0xFFF
                        hi = mag >> 12
                        _limb_add(Lall, lo, off + LIMB * q, neg)
                        if hi != 0:
                            _limb_add(Lall, hi, off + LIMB * q + 12, neg)
                _normalise(Lall)
            if math.isnan(bv):
                ex_nan = True
            elif math.isinf(bv):
                if bv > 0:
                    ex_pinf = True
                else:
                    ex_ninf = True
            new = fp_step(acc, bv, man_bits, emin, emax, rtz, False)
            if math.isinf(new) and math.isfinite(acc) and math.isfinite(bv):
                n_ovf += 1
            acc = new
        out_acc[i] = acc
        out_ovf[i] = n_ovf
        if ex_nan or (ex_pinf and ex_ninf):
            out_exact[i] = np.nan
        elif ex_pinf:
            out_exact[i] = np.inf
        elif ex_ninf:
            out_exact[i] = -np.inf
        else:
            out_exact[i] = _limbs_to_f64(Lall, base_exp - MX_OFFSET) + acc0[i]
