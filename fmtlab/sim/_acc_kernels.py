"""numba kernel of the chunked float accumulator emulation (:mod:`fmtlab.sim.accumulate`).

One pass per output row (``prange``), eight dot products at a time (independent chains, the
weight operand transposed to [K, N] so that the eight products of one k are adjacent): for each
chunk of ``chunk`` products (k ascending) the products are summed in float64 in that order, then
added to the accumulator with ONE rounding (:func:`_step`: the sum rounded to odd by its TwoSum
error term, then rounded to the format on the float64 bit pattern; the scalar twin of
``accumulate._fp_steps`` and of :func:`fmtlab.hw.dp_kernels.fp_step`, whose frexp path it takes
deep in the subnormals). Where a chunk's float64 sum is exact (INT8 / FP8 element products: a few
dozen products of <= 8-bit significands whose exponent span fits 53 bits) it is the same number in
any order, so the result equals the former float64-GEMM-per-chunk implementation and, for
chunk = 1, :func:`fmtlab.hw.datapath.dot` bit for bit (tests).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from fmtlab.hw.dp_kernels import round_fmt

_MAG = np.int64(0x7FFF_FFFF_FFFF_FFFF)


@intrinsic
def _f2i(typingctx, x):
    """The bit pattern of a float64 as int64 (an LLVM bitcast: no memory round trip)."""
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(64))
        return types.int64(x), codegen
    return None


@intrinsic
def _i2f(typingctx, x):
    """The float64 whose bit pattern is the int64 ``x``."""
    if isinstance(x, types.Integer) and x.bitwidth == 64:
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())
        return types.float64(x), codegen
    return None


@nb.njit(cache=True, inline="always")
def _step(a: float, b: float, man: int, emin: int, emax: int, rtz: bool, f64: bool,
          maxf: float) -> tuple[float, bool]:  # pragma: no cover - compiled
    """(round(a + b) with one rounding, overflowed: Inf from finite a and b)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return a + b, False
    s = a + b
    if f64 or s == 0.0 or not math.isfinite(s):
        return s, math.isinf(s)
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    bits = _f2i(s)
    if err != 0.0 and (bits & 1) == 0:  # round to odd
        bits += 1 if (err > 0.0) == (s > 0.0) else -1
    mag = bits & _MAG
    e = (mag >> 52) - 1023
    shift = (52 - man) + max(emin - e, 0)
    if shift > 51:  # deep in the format's subnormals: the frexp path
        res = round_fmt(_i2f(bits), man, emin, emax, rtz)
        return res, math.isinf(res)
    mask = (np.int64(1) << shift) - 1
    if rtz:
        r = mag & ~mask
    else:
        r = (mag + (mask >> 1) + ((mag >> shift) & 1)) & ~mask
    res = _i2f(r)
    if res > maxf:
        res = maxf if rtz else np.inf
    res = -res if s < 0.0 else res
    return res, math.isinf(res)


@nb.njit(cache=True, parallel=True, nogil=True)
def float_acc_rows(vx: np.ndarray, wt: np.ndarray, chunk: int, lo: int, hi: int, man: int, emin: int, emax: int,
                   rtz: bool, f64: bool, out: np.ndarray, ovf: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i, j] = the accumulator after products lo..hi-1 of row i of ``vx`` [M, K] and column j
    of ``wt`` [K, N] (float64), chunk by chunk from zero; ovf[i, j]: a step gave Inf from finite inputs."""
    M = vx.shape[0]
    N = wt.shape[1]
    maxf = math.ldexp(2.0 - math.ldexp(1.0, -man), emax)
    for i in nb.prange(M):
        x = vx[i]
        j = 0
        while j < N:
            if j + 8 <= N:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
                o0 = o1 = o2 = o3 = o4 = o5 = o6 = o7 = False
                a = lo
                while a < hi:
                    b = min(a + chunk, hi)
                    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
                    for k in range(a, b):
                        xv = x[k]
                        w = wt[k]
                        s0 += xv * w[j]
                        s1 += xv * w[j + 1]
                        s2 += xv * w[j + 2]
                        s3 += xv * w[j + 3]
                        s4 += xv * w[j + 4]
                        s5 += xv * w[j + 5]
                        s6 += xv * w[j + 6]
                        s7 += xv * w[j + 7]
                    a0, f = _step(a0, s0, man, emin, emax, rtz, f64, maxf)
                    o0 |= f
                    a1, f = _step(a1, s1, man, emin, emax, rtz, f64, maxf)
                    o1 |= f
                    a2, f = _step(a2, s2, man, emin, emax, rtz, f64, maxf)
                    o2 |= f
                    a3, f = _step(a3, s3, man, emin, emax, rtz, f64, maxf)
                    o3 |= f
                    a4, f = _step(a4, s4, man, emin, emax, rtz, f64, maxf)
                    o4 |= f
                    a5, f = _step(a5, s5, man, emin, emax, rtz, f64, maxf)
                    o5 |= f
                    a6, f = _step(a6, s6, man, emin, emax, rtz, f64, maxf)
                    o6 |= f
                    a7, f = _step(a7, s7, man, emin, emax, rtz, f64, maxf)
                    o7 |= f
                    a = b
                out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = a0, a1, a2, a3
                out[i, j + 4], out[i, j + 5], out[i, j + 6], out[i, j + 7] = a4, a5, a6, a7
                ovf[i, j], ovf[i, j + 1], ovf[i, j + 2], ovf[i, j + 3] = o0, o1, o2, o3
                ovf[i, j + 4], ovf[i, j + 5], ovf[i, j + 6], ovf[i, j + 7] = o4, o5, o6, o7
                j += 8
            else:
                a0 = 0.0
                o0 = False
                a = lo
                while a < hi:
                    b = min(a + chunk, hi)
                    s0 = 0.0
                    for k in range(a, b):
                        s0 += x[k] * wt[k, j]
                    a0, f = _step(a0, s0, man, emin, emax, rtz, f64, maxf)
                    o0 |= f
                    a = b
                out[i, j] = a0
                ovf[i, j] = o0
                j += 1


@nb.njit(cache=True, parallel=True, nogil=True)
def float_acc_partials(parts: np.ndarray, man: int, emin: int, emax: int, rtz: bool, f64: bool,
                       out: np.ndarray, ovf: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i, j] <- round(out[i, j] + parts[c, i, j]) for c = 0, 1, ... in order (one rounding
    each); ovf[i, j] |= a step gave Inf from finite inputs. ``parts`` [chunks, M, N] float64.

    Per (chunk, row) one branch-free pass over the row (SIMD-friendly; the same arithmetic as
    :func:`_step`), then the rare elements deep in the format's subnormals again through
    :func:`_step` (its frexp path)."""
    C, M, N = parts.shape
    maxf = math.ldexp(2.0 - math.ldexp(1.0, -man), emax)
    big = maxf if rtz else np.inf
    for i in nb.prange(M):
        acc = out[i]
        o = ovf[i]
        prev = np.empty(N, np.float64)
        for c in range(C):
            p = parts[c, i]
            if f64:
                for j in range(N):
                    a = acc[j]
                    s = a + p[j]
                    o[j] |= math.isinf(s) and math.isfinite(a) and math.isfinite(p[j])
                    acc[j] = s
                continue
            nslow = 0
            for j in range(N):
                a = acc[j]
                b = p[j]
                prev[j] = a
                s = a + b
                bb = s - a
                err = (a - (s - bb)) + (b - bb)
                bits = _f2i(s)
                up = (err > 0.0) == (s > 0.0)
                bump = (err != 0.0) & ((bits & 1) == 0)
                bits = bits + (np.int64(1) if up else np.int64(-1)) * np.int64(bump)
                mag = bits & _MAG
                e = (mag >> 52) - 1023
                shift = (52 - man) + max(emin - e, 0)
                sh = min(shift, 51)
                mask = (np.int64(1) << sh) - 1
                if rtz:
                    r = mag & ~mask
                else:
                    r = (mag + (mask >> 1) + ((mag >> sh) & 1)) & ~mask
                res = _i2f(r)
                res = big if res > maxf else res
                res = -res if s < 0.0 else res
                fin = math.isfinite(a) & math.isfinite(b)
                ok = fin & math.isfinite(s) & (s != 0.0)
                nslow += ok & (shift > 51)
                new = res if ok else s
                acc[j] = new
                o[j] |= math.isinf(new) & fin
            if nslow:
                for j in range(N):
                    a = prev[j]
                    s = a + p[j]
                    if math.isfinite(a) and math.isfinite(p[j]) and math.isfinite(s) and s != 0.0:
                        e = ((_f2i(s) & _MAG) >> 52) - 1023
                        if (52 - man) + max(emin - e, 0) > 50:  # near or past the frexp threshold
                            acc[j], f = _step(a, p[j], man, emin, emax, rtz, f64, maxf)
