"""Cached numba layout kernels: encode and fused fake-quant of scaled arrays (row and column
layouts), the per-row SSE of the MSE clip search, and the finite absmax of rows.

Numeric convention: see ``_fast_kernels``; the element cores come from ``_kernel_dispatch``.
CORE_DIGEST: numba's cache only checks this file, so it records the digest of the core sources it
compiles in (``_kernel_params.core_digest``); the import refuses a stale digest.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fmtlab.formats._fast_bits import bits_f32, f32_bits
from fmtlab.formats._kernel_dispatch import elem_code, elem_fq
from fmtlab.formats._kernel_params import ABS32, CHUNK, INF32, STOCHASTIC, check_core_digest

__all__ = ["encode_rows", "encode_cols", "fq_rows", "fq_cols", "fq_vec", "sse_rows", "finite_absmax_rows"]

CORE_DIGEST = "5e7e1c41125c01d8"
check_core_digest(CORE_DIGEST, "_layout_kernels.py")


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
            c = elem_code(P, T, np.float64(y), rs[i] if stoch else 0.0, np.float64(z))
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
            c = elem_code(P, T, np.float64(y), rand[i] if stoch else 0.0, np.float64(z))
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
                os[i] = elem_fq(P, T, V, xs[i] * iv, z) * s
        else:
            for i in range(m):
                os[i] = elem_fq(P, T, V, xs[i] / s, z) * s
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
                os[k] = elem_fq(P, T, V, xs[k] / scales[k], zps[k]) * scales[k]
        elif pow2:
            z = zps[0]
            for k in range(C):
                os[k] = elem_fq(P, T, V, xs[k] * inv[k], z) * scales[k]
        else:
            z = zps[0]
            for k in range(C):
                os[k] = elem_fq(P, T, V, xs[k] / scales[k], z) * scales[k]
        if count:
            for k in range(C):
                nb += xs[k] != xs[k]
        bad += nb
    return bad


@njit(cache=True)
def fq_vec(P, T, V, x, out, scales, zps):
    """Serial fused fake-quant of a short vector with one scale (and zero point) per element
    (RNE/RNA/TZ): out[k] = fl(v(x[k] / s[k]) * s[k]); the per-column step of GPTQ, where a
    parallel launch costs more than the work. Returns the number of NaN inputs."""
    nz = zps.shape[0]
    bad = 0
    for k in range(x.shape[0]):
        z = zps[k] if nz == x.shape[0] else zps[0]
        out[k] = elem_fq(P, T, V, x[k] / scales[k], z) * scales[k]
        bad += x[k] != x[k]
    return bad


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
            d = np.float64(elem_fq(P, T, V, y, z) * s) - np.float64(xs[i])
            acc += d * d
        out[row] = acc
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
