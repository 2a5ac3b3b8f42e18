"""MixFP4: NVFP4 blocks that each choose E2M1 or E1M2 elements (Zou et al., arXiv 2605.31035).

From the paper (its abstract): MixFP4 keeps NVFP4's scale hierarchy (FP32 tensor scale,
one E4M3 scale per 16 elements) and lets every block store its 4-bit elements either as E2M1
(+/-{0, 0.5, 1, 1.5, 2, 3, 4, 6}) or as E1M2 (+/-{0, 0.25, ..., 1.75}, uniform: INT4-like); the
choice costs no extra bits: it is the sign bit of the block's E4M3 scale (a block scale is
never negative). Hardware decodes both to one E2M2 internal value.

fmtlab's encoding (``QTensor.scale_codes``): bit 7 of a block's E4M3 scale code is the element
type, 0 = E2M1, 1 = E1M2; bits 6..0 are the E4M3 magnitude code (1..0x7E; the E4M3 NaN code 0x7F
marks a non-finite block, flag 0). ``QTensor.codes`` are 4-bit element codes of the block's
type; ``Quantizer.dequantize`` reads each block's type from the flag, so dequantize is exact.

The selection rule used here is OURS: the paper's exact rule was not available to us. Per block,
both candidates are computed with the same tensor scale g = fl32(A_tensor / fl32(448 * 6)) (NVFP4's)
- E2M1: the NVFP4 rule of ``mx.fp8_blocks`` (block max maps to 6),
- E1M2: the same rule with the block max mapping to 1.75 (E1M2's max): block scale = E4M3 RNE of
  fl32(fl32(amax / 1.75) / g) (saturating at 448, at least code 1), elements RNE of
  fl32(x / fl32(g * s)) onto E1M2 (saturating),
and E1M2 is kept iff its block error (float64, summed in element order; ``metric`` "mse" (default),
"l1" or "abs_max", as Four Over Six) is strictly lower: ties go to E2M1. STOCHASTIC rounding
draws one uniform per element, shared by both candidates. The torch twin is
``fmtlab.pytorch.blocks`` (same scales, same choice, same bits).
"""

from __future__ import annotations

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import mx as _mx
from fmtlab.formats.base import Format
from fmtlab.formats.four_over_six import _block_error
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import Overflow, Rounding

__all__ = ["E1M2_FLAG", "ALT_ELEMENT", "mixfp4_blocks", "block_is_e1m2", "element_values", "clip_bounds"]

#: bit of the E4M3 block-scale code that marks an E1M2 block
E1M2_FLAG = 0x80
#: the second element format of a MixFP4 block
ALT_ELEMENT = "fp4_e1m2"


def check_element(fmt: Format) -> None:
    """MixFP4's primary element must be E2M1."""
    if fmt.name != "fp4_e2m1":
        raise FmtlabError(f"the mixfp4 rule chooses between fp4_e2m1 and fp4_e1m2 per block; "
                          f"its element format must be fp4_e2m1, got {fmt.name}")


def block_is_e1m2(scale_codes: np.ndarray) -> np.ndarray:
    """Per block: True where the scale code's flag bit says E1M2 (NaN blocks say E2M1)."""
    sc = np.asarray(scale_codes).astype(np.int64)
    return ((sc & E1M2_FLAG) != 0) & ((sc & 0x7F) != 0x7F)


def element_values(codes: np.ndarray, e1m2_rows: np.ndarray) -> np.ndarray:
    """float64 element values of MixFP4 codes: E1M2 where ``e1m2_rows`` (broadcast per
    element), else E2M1."""
    c = np.asarray(codes).astype(np.intp)
    v2 = get_format("fp4_e2m1").values()[c]
    v1 = get_format(ALT_ELEMENT).values()[c]
    return np.where(e1m2_rows, v1, v2)


def clip_bounds(e1m2_rows: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) clip boundaries per element row: E1M2's where ``e1m2_rows``, else the given
    (E2M1's) ones (the QuantReport's and the replay's clip test)."""
    g = get_format(ALT_ELEMENT).grid
    return np.where(e1m2_rows, g.bounds[0], lo), np.where(e1m2_rows, g.bounds[-1], hi)


def mixfp4_blocks(fmt: Format, flat: np.ndarray, K_: int, tensor_scale: "bool | float",
                  rounding: Rounding, overflow: Overflow, seed=None, want_out: bool = True,
                  want_codes: bool = False, metric: str = "mse") -> _mx.BlockResult:
    """MixFP4 block quantization of the flat working data (module docstring); scale codes carry
    the E1M2 flag in bit 7."""
    check_element(fmt)
    alt = get_format(ALT_ELEMENT)
    kw = dict(seed=seed, want_out=True, want_codes=True)
    r2 = _mx.fp8_blocks(fmt, flat, K_, tensor_scale, rounding, overflow, **kw)
    g = r2.tensor_scale if tensor_scale is not False else False
    r1 = _mx.fp8_blocks(alt, flat, K_, g, rounding, overflow, **kw)
    e2, e1 = _block_error(r2.out, flat, K_, metric), _block_error(r1.out, flat, K_, metric)
    pick1 = np.isfinite(r1.scales) & (e1 < e2)
    rows = np.repeat(pick1, K_)
    out = np.where(rows, r1.out, r2.out) if want_out else None
    codes = np.where(rows, r1.codes, r2.codes).astype(r2.codes.dtype) if want_codes else None
    scodes = np.where(pick1, r1.scale_codes.astype(np.int64) | E1M2_FLAG,
                      r2.scale_codes).astype(r2.scale_codes.dtype)
    scales = np.where(pick1, r1.scales, r2.scales).astype(np.float32)
    return _mx.BlockResult(out, codes, scodes, scales, r2.tensor_scale)
