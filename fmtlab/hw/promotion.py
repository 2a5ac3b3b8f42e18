"""Two-level ("promoted") float accumulation, as FP8 tensor-core GEMMs with software promotion do it.

Model (exact, bit for bit): the K products of a dot product are split into consecutive chunks of
``interval`` products along K (the last chunk may be shorter). Each chunk is accumulated from zero
in the ``inner`` float accumulator, one rounding per step in the inner rounding mode (products
are exact, as in :func:`fmtlab.hw.datapath.dot`); the chunk's partial sum is then added into the
``outer`` accumulator with one rounding in the outer mode (the "promotion"). ``interval >= K`` is
one inner accumulation followed by one rounding into ``outer``; ``inner == outer`` with
``interval = 1`` is a plain ``outer`` accumulation. The accumulator and its presets live in
:mod:`fmtlab.hw.promoted_acc`, this module holds the outer-rounding kernel;
:func:`fmtlab.hw.datapath.promoted_dot` (and ``dot`` with a promoted accumulator) computes with them.

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

import numba as nb
import numpy as np

from fmtlab.hw import dp_kernels as K
from fmtlab.hw.promoted_acc import PRESETS, PromotedAcc, parse_promoted  # noqa: F401 - their home before the move

__all__ = ["promote_partials"]


@nb.njit(cache=True)
def promote_partials(partials, acc0, man_bits, emin, emax, rtz, is_f64, out_acc, out_ovf):
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
