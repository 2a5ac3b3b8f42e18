"""Two-level ("promoted") float accumulation, as FP8 tensor-core GEMMs with software promotion do it.

Model (exact, bit for bit): the K products of a dot product are split into consecutive chunks of
``interval`` products along K (the last chunk may be shorter). Each chunk is accumulated from zero
in the ``inner`` float accumulator, one rounding per step in the inner rounding mode (products
are exact, as in :func:`fmtlab.hw.datapath.dot`); the chunk's partial sum is then added into the
``outer`` accumulator with one rounding in the outer mode (the "promotion"). ``interval >= K`` is
one inner accumulation followed by one rounding into ``outer``; ``inner == outer`` with
``interval = 1`` is a plain ``outer`` accumulation. This module holds the accumulator (its presets
and the outer-rounding kernel); :func:`fmtlab.hw.datapath.promoted_dot` (and ``dot`` with a
promoted accumulator) computes with it.

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
from fmtlab.hw.accumulators import AccRounding, FloatAcc, parse_accumulator


@dataclasses.dataclass(frozen=True)
class PromotedAcc:
    """``inner`` float accumulator promoted into ``outer`` every ``interval`` products."""

    inner: FloatAcc
    outer: FloatAcc
    interval: int
    label: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for what in ("inner", "outer"):
            acc = getattr(self, what)
            if isinstance(acc, str):
                acc = parse_accumulator(acc)
                object.__setattr__(self, what, acc)
            if not isinstance(acc, FloatAcc):
                raise FmtlabError(f"a promoted accumulator's {what} must be a float accumulator "
                                  f"(e.g. fp32, e8m13_rtz), got {getattr(acc, 'name', acc)!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise FmtlabError(f"promotion interval must be an int >= 1, got interval={self.interval!r}")

    @property
    def name(self) -> str:
        return self.label or f"{self.inner.name}->{self.outer.name}@{self.interval}"


#: named accumulator presets of real accelerators (see the module docstring for the sources)
PRESETS: dict[str, PromotedAcc] = {
    "hopper_fp8_mma": PromotedAcc(FloatAcc(8, 13, AccRounding.TOWARD_ZERO), FloatAcc(8, 23), 128,
                                  label="hopper_fp8_mma"),
    "hopper_fp8_mma_nopromo": PromotedAcc(FloatAcc(8, 13, AccRounding.TOWARD_ZERO), FloatAcc(8, 23), 1 << 62,
                                          label="hopper_fp8_mma_nopromo"),
}


def parse_promoted(spec: "str | PromotedAcc") -> PromotedAcc | None:
    """The PromotedAcc for a preset name or a PromotedAcc; None for any other accumulator spec."""
    if isinstance(spec, PromotedAcc):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in PRESETS:
        return PRESETS[spec.strip().lower()]
    return None


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
