"""Which block routine quantizes a block quantizer's flat working data: OCP MX (E8M0 shared
exponents, ``mx.mx_blocks``), FP8-scaled blocks (NVFP4, ``mx.fp8_blocks``), NVFP4 Four Over Six
(``four_over_six``) or MixFP4 (``mixfp4``); each returns an ``mx.BlockResult``."""

from __future__ import annotations

import numpy as np

from fmtlab.formats import mx as _mx
from fmtlab.formats.four_over_six import four_over_six_blocks
from fmtlab.formats.mixfp4 import mixfp4_blocks
from fmtlab.formats.scaling import FourOverSix, MixFP4

__all__ = ["run_block_rule"]


def run_block_rule(q, flat: np.ndarray, want_out: bool, want_codes: bool) -> _mx.BlockResult:
    """The block result of Quantizer ``q`` (a PerBlock granularity) on ``flat`` (NaN policy
    already applied by the caller)."""
    g, rule = q.granularity, q.scale_rule
    args = (q.format, flat, g.size)
    if g.scale_format == "e8m0":
        return _mx.mx_blocks(*args, rule.mode, q.rounding, q.overflow, q.seed, want_out, want_codes)
    conv = (g.tensor_scale, q.rounding, q.overflow, q.seed, want_out, want_codes)
    if isinstance(rule, FourOverSix):
        return four_over_six_blocks(*args, *conv, metric=rule.metric)
    if isinstance(rule, MixFP4):
        return mixfp4_blocks(*args, *conv, metric=rule.metric)
    return _mx.fp8_blocks(*args, *conv)
