"""Generic numba encode kernel driven by a format's sorted value table.

Numeric convention: inputs are float64 (float32 inputs are widened first, which is exact). The
grid is the sorted array ``vals`` of the format's finite values extended by one *virtual* value at
each end (the value the format would have next if its range went on; choosing it means overflow).
``bounds[i]`` is the rounding boundary between ``vals[i]`` and ``vals[i+1]`` (the arithmetic mean
for linear rounding, the geometric mean for log-domain rounding). Ties (x == bound) go to the
neighbour flagged ``even``; when both or neither are even, to the smaller magnitude.

Codes of the virtual ends are -1 (below) and -2 (above); they are replaced by the overflow codes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = 0, 1, 2, 3


@njit(cache=True, inline="always")
def _encode_one(x, r, vals, codes, bounds, even, mode, specials):
    """Encode one float64 ``x``; ``r`` is its uniform [0, 1) draw (stochastic mode only).

    specials = [nan_pos, nan_neg, pos_inf_in, neg_inf_in, pos_ovf, neg_ovf, sat_max, sat_min,
                zero, neg_zero]  (codes; -1 where the format has none).
    Returns the code, or -1 if the input is NaN and the format has no NaN code.
    """
    if x != x:
        # sign of a NaN: read the sign bit through a comparison-free route is not possible here,
        # so callers pass negative NaNs pre-split (see encode_table); default positive.
        return specials[0]
    if x == np.inf:
        return specials[2]
    if x == -np.inf:
        return specials[3]
    n = vals.shape[0]
    # largest i with vals[i] <= x (vals[0] is the virtual low end)
    if x < vals[0]:
        if mode == TOWARD_ZERO:  # truncation never overflows a finite input
            return specials[7]
        return specials[5]
    if x >= vals[n - 1]:
        if mode == TOWARD_ZERO:
            return specials[6]
        return specials[4]
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if vals[mid] <= x:
            lo = mid
        else:
            hi = mid
    L = vals[lo]
    if x == L:
        j = lo
    else:
        U = vals[lo + 1]
        if mode == TOWARD_ZERO:
            # the neighbour of smaller magnitude (also across L < 0 < U, formats without zero)
            j = lo if abs(L) < abs(U) else lo + 1
        elif mode == STOCHASTIC:
            p = (x - L) / (U - L)
            j = lo + 1 if r < p else lo
        else:
            m = bounds[lo]
            if x < m:
                j = lo
            elif x > m:
                j = lo + 1
            else:
                if mode == NEAREST_EVEN and even[lo] != even[lo + 1]:
                    j = lo if even[lo] else lo + 1
                else:
                    smaller = lo if abs(L) < abs(U) else lo + 1
                    if mode == NEAREST_AWAY:
                        j = (2 * lo + 1) - smaller
                    else:
                        j = smaller
    c = codes[j]
    if c == -2:
        return specials[6] if mode == TOWARD_ZERO else specials[4]
    if c == -1:
        return specials[7] if mode == TOWARD_ZERO else specials[5]
    if c == specials[8] and specials[9] >= 0 and (x < 0):
        return specials[9]
    return c


@njit(cache=True, parallel=True)
def encode_table(x, neg_sign, r, vals, codes, bounds, even, mode, specials, out):
    """Encode flat float64 ``x`` into ``out`` (int64). ``neg_sign[i]`` is True where x has its
    sign bit set (needed for -0.0 and negative NaN). Returns the number of NaN inputs that had no
    NaN code (the caller raises)."""
    bad = 0
    for i in prange(x.shape[0]):
        xi = x[i]
        ri = r[i] if r.shape[0] == x.shape[0] else 0.0  # r is a 1-element dummy unless stochastic
        c = _encode_one(xi, ri, vals, codes, bounds, even, mode, specials)
        if xi != xi:
            c = specials[1] if neg_sign[i] else specials[0]
        elif xi == 0.0 and neg_sign[i] and specials[9] >= 0:
            c = specials[9]
        if c < 0:
            bad += 1
        out[i] = c
    return bad
