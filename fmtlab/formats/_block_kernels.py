"""Cached numba block-scale kernels: MX (E8M0 shared exponent) and FP8-scaled blocks (NVFP4 and
friends), fused with the element rounding; the scale-only passes of the two-pass path.

Numeric convention: see ``_fast_kernels`` and ``mx.py`` (the block rules); the element cores come
from ``_kernel_dispatch``. CORE_DIGEST: as in ``_layout_kernels``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from fmtlab.formats._fast_bits import bits_f32, bits_f64, f32_bits
from fmtlab.formats._kernel_dispatch import elem_code, elem_fq
from fmtlab.formats._kernel_params import (
    ABS32, CEIL, CHUNK, EVEN, FLOOR, INF32, MAN32, NEAREST_EVEN, check_core_digest,
)
from fmtlab.formats._mf_cores import mf_mag32, mf_val64

__all__ = ["mx_shared_exp", "mx_fq", "fp8scale_fq", "mx_exps", "fp8_scales"]

CORE_DIGEST = "5e7e1c41125c01d8"
NEURON = 4  # shared-exponent rule id beyond _kernel_params' FLOOR..RCEIL (mx.RULE_ID["neuron"])
MIDMAX = 5  # Brevitas "midmax" (mx.RULE_ID["midmax"])
check_core_digest(CORE_DIGEST, "_block_kernels.py")


# ---------------------------------------------------------------------------------------------
# Block scales (MX: E8M0 power-of-two; FP8-scaled blocks: NVFP4 and friends)
# ---------------------------------------------------------------------------------------------
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
    NEURON floor(log2 A) - emax + 1: twice the FLOOR scale (AWS Neuron ``nki.isa.quantize_mx``)
    MIDMAX FLOOR's e, plus 1 where A > 2**e * (2**(emax + 1) + elem_max) / 2, i.e. where A's
           significand A / 2**floor(log2 A) exceeds 1 + elem_max / 2**(emax + 1) (Brevitas)
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
    elif rule == NEURON:
        e = _floor_log2_bits(amax_bits) - emax + 1
    elif rule == MIDMAX:
        fl = _floor_log2_bits(amax_bits)
        sig = math.ldexp(np.float64(bits_f32(amax_bits)), -fl)  # exact, in [1, 2)
        e = fl - emax + (1 if sig > 1.0 + math.ldexp(np.float64(elem_max), -(emax + 1)) else 0)
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
                os[o + u] = elem_fq(P, T, V, xs[o + u] * iX, z32) * X
        elif K == 16:
            for u in range(16):
                os[o + u] = elem_fq(P, T, V, xs[o + u] * iX, z32) * X
        else:
            for u in range(K):
                os[o + u] = elem_fq(P, T, V, xs[o + u] * iX, z32) * X


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
                    codes[(b0 + b) * K + u] = max(elem_code(P, T, np.float64(y), 0.0, 0.0), 0)
                os[o + u] = elem_fq(P, T, V, y, z32) * X
    return 0


@njit
def _fp8_scale(S8, amax, g, elem_max):
    """(FP8 code, effective float32 scale S) of a finite block whose max |x| has pattern amax:
    s_rel = fl32(fl32(A / elem_max) / g), code = min(max(RNE(s_rel), 1), max code),
    S = fl32(g * value(code))."""
    s_rel = (bits_f32(amax) / elem_max) / g
    c8 = mf_mag32(f32_bits(s_rel), NEAREST_EVEN, S8.m, S8.emin32, S8.ftz)
    c8 = min(max(c8, 1), S8.maxmag)
    return c8, g * np.float32(mf_val64(c8, S8.m, S8.emin64, S8.sub64))


@njit
def _elems_div(P, T, V, xs, os, K, Ss):
    """``_elems_scaled`` for non-power-of-two scales: os = fl32(v(fl32(xs / S)) * S)."""
    z32 = np.float32(0.0)
    for b in range(Ss.shape[0]):
        o = b * K
        S = Ss[b]
        if K == 16:
            for u in range(16):
                os[o + u] = elem_fq(P, T, V, xs[o + u] / S, z32) * S
        else:
            for u in range(K):
                os[o + u] = elem_fq(P, T, V, xs[o + u] / S, z32) * S


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
                codes[(b0 + b) * K + u] = max(elem_code(P, T, np.float64(y), 0.0, 0.0), 0) if S == S else 0
                os[o + u] = elem_fq(P, T, V, y, z32) * S
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
