"""Two-level ("promoted") float accumulation, as FP8 tensor-core GEMMs with software promotion do it.

Model (exact, bit for bit): the K products of a dot product are split into consecutive chunks of
``interval`` products along K (the last chunk may be shorter). Each chunk is accumulated from zero
in the ``inner`` float accumulator, one rounding per step in the inner rounding mode (products
are exact, as in :func:`fmtlab.hw.datapath.dot`); the chunk's partial sum is then added into the
``outer`` accumulator with one rounding in the outer mode (the "promotion"). ``interval >= K`` is
one inner accumulation followed by one rounding into ``outer``; ``inner == outer`` with
``interval = 1`` is a plain ``outer`` accumulation.

Presets (cited; what is inferred is said so):

- ``hopper_fp8_mma``: FP8 x FP8 on NVIDIA Hopper tensor cores with DeepGEMM-style promotion.
  DeepSeek-V3 Technical Report (DeepSeek-AI, arXiv:2412.19437, 2024), section 3.3.2: the
  accumulation of FP8 GEMM on H800 "is limited to retaining around 14 bits", and partial results
  are promoted to FP32 CUDA-core registers "at an interval of N_C = 128 elements". We model
  that as an inner accumulator with 8 exponent bits (fp32's range) and 13 fraction bits (14
  significant bits, 1/8/13 = 22 bits), rounding toward zero, promoted every 128 products into an
  fp32 nearest-even accumulator. Inferred: the truncating rounding mode (Fasi, Higham, Mikaitis and
  Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021, measured round-toward-zero
  accumulation in earlier tensor cores) and per-step rounding (the hardware may align a group of
  products to their largest exponent before adding; this model rounds after every product).
- ``hopper_fp8_mma_nopromo``: the same inner accumulator over the whole K (no promotion), the
  behaviour the DeepSeek-V3 report warns about for large K.
"""

from __future__ import annotations

import dataclasses

import numba as nb
import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.hw import dp_kernels as K
from fmtlab.hw.promoted_acc import PRESETS, PromotedAcc, parse_promoted

__all__ = ["PromotedAcc", "PRESETS", "parse_promoted", "promoted_dot"]


@nb.njit(cache=True)
def _promote(partials, acc0, man_bits, emin, emax, rtz, is_f64, out_acc, out_ovf):
    """out_acc[i] = partials[i, :] added one by one into acc0[i], one outer rounding per add."""
    M, C = partials.shape
    for i in range(M):
        acc = acc0[i]
        n = 0
        for c in range(C):
            p = partials[i, c]
            new = K.fp_step(acc, p, man_bits, emin, emax, rtz, is_f64)
            if np.isinf(new) and np.isfinite(acc) and np.isfinite(p):
                n += 1
            acc = new
        out_acc[i] = acc
        out_ovf[i] = n


def promoted_dot(w_codes, a_codes, weight, activation, accumulator: "str | PromotedAcc",
                 *, init=None):
    """Dot products over the last axis as a promoted accumulator computes them (module docstring).

    Same arguments and result as :func:`fmtlab.hw.datapath.dot` (floating-point operands only);
    ``overflows`` counts inner and outer steps that overflowed; ``raw`` holds outer bit patterns.
    """
    from fmtlab.hw.datapath import DotResult, dot, float_params, float_to_bits

    acc = parse_promoted(accumulator)
    if acc is None:
        raise FmtlabError(f"unknown promoted accumulator {accumulator!r}; presets: {', '.join(PRESETS)}")
    w = np.asarray(w_codes)
    x = np.asarray(a_codes)
    if w.ndim == 0 or x.ndim == 0:
        raise FmtlabError("promoted_dot needs arrays with a K axis (last axis)")
    k = w.shape[-1]
    if x.shape[-1] != k:
        raise FmtlabError(f"w_codes and a_codes disagree on K: {w.shape} vs {x.shape}")
    full = dot(w, x, weight, activation, acc.outer, init=init)  # exact reference and the init rounding
    lead = full.value.shape
    if k == 0:
        return dataclasses.replace(full, accumulator=acc.name)
    starts = range(0, k, acc.interval)
    parts = []
    ovf = np.zeros(int(np.prod(lead, dtype=np.int64)), np.int64)
    for s in starts:
        r = dot(w[..., s:s + acc.interval], x[..., s:s + acc.interval], weight, activation, acc.inner)
        parts.append(r.value.reshape(-1))
        ovf += r.overflows.reshape(-1)
    partials = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float64)
    man, emin, emax, rtz, f64 = float_params(acc.outer)
    init_arr = np.zeros(partials.shape[0]) if init is None else \
        np.broadcast_to(np.asarray(init, np.float64), lead).reshape(-1)
    acc0 = np.array([v if f64 else K.round_fmt(float(v), man, emin, emax, rtz) for v in init_arr])
    out = np.empty(partials.shape[0])
    out_ovf = np.empty(partials.shape[0], np.int64)
    _promote(partials, acc0, man, emin, emax, rtz, f64, out, out_ovf)
    return DotResult(out.reshape(lead), full.exact, (ovf + out_ovf).reshape(lead),
                     float_to_bits(out, acc.outer).reshape(lead), 1.0, acc.name)
