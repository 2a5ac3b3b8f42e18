"""NVFP4 "Four Over Six" (4/6) adaptive block scaling (Cook et al., arXiv 2512.02010; reference
implementation mit-han-lab/fouroversix, ``quantize/reference.py``).

FP4 E2M1 has its coarsest step (4 -> 6) next to the block maximum, where NVFP4's usual scale
puts the largest inputs. 4/6 evaluates two block scales and keeps, per block, the one with the
lower quantization error:

- tensor scale g = fl32(A / fl32(256 * elem_max)) (A = max finite |x| of the tensor; 0 -> 1):
  256 in place of E4M3's 448, so that the 1.5x larger "4" scale still fits E4M3
  (the reference's ``E4M3_MAX_FOUROVERSIX``); ``tensor_scale=False``: g = 1; a float: static g;
- candidate "6": the NVFP4 rule of ``mx.fp8_blocks`` (block scale = E4M3 RNE of
  fl32(fl32(amax / 6) / g), at least code 1), elements RNE of fl32(x / fl32(g * s));
- candidate "4": the same with amax / 4 (the block max maps to the element value 4);
- per block, error of the dequantized values against x in float64 (summed in element order):
  "mse" sum of squares (the reference's default), "l1" sum of absolute values, "abs_max" the
  largest; candidate 4 is kept iff its error is strictly smaller (ties keep 6).
Non-finite blocks get the E4M3 NaN scale as in NVFP4. STOCHASTIC rounding draws one uniform
per element (``default_rng(seed).random(n)``), shared by both candidates. The torch twin is
``fmtlab.pytorch.blocks`` (same scales, same choice, same bits).
For elements other than E2M1, the second candidate maps the block max to 2/3 of the element's
max (4 of 6 for E2M1).
"""

from __future__ import annotations

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import mx as _mx
from fmtlab.formats.base import Format
from fmtlab.formats.rounding import Overflow, Rounding

__all__ = ["four_over_six_blocks", "E4M3_MAX_FOUR_OVER_SIX", "tensor_scale_4o6"]

#: the E4M3 value the tensor scale maps the tensor max to (reference.py E4M3_MAX_FOUROVERSIX)
E4M3_MAX_FOUR_OVER_SIX = 256.0


def tensor_scale_4o6(amax_tensor: float, elem_max: float) -> np.float32:
    """g = fl32(A / fl32(256 * elem_max)); A = 0 gives 1, an underflow 2**-149."""
    a = np.float32(amax_tensor)
    if not np.isfinite(a):
        raise FmtlabError("the tensor scale needs a finite max |x|")
    if a == 0:
        return np.float32(1.0)
    g = a / np.float32(np.float32(E4M3_MAX_FOUR_OVER_SIX) * np.float32(elem_max))
    return g if g > 0 else np.float32(2.0 ** -149)


def _block_error(out: np.ndarray, x: np.ndarray, K_: int, metric: str) -> np.ndarray:
    """Per block error in float64, summed element by element in order (the torch twin sums the
    same way, so both pick the same candidate)."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = out.astype(np.float64).reshape(-1, K_) - x.astype(np.float64).reshape(-1, K_)
        e = np.abs(d) if metric != "mse" else d * d
        if metric == "abs_max":
            return np.max(e, axis=1)
        acc = e[:, 0].copy()
        for j in range(1, K_):
            acc = acc + e[:, j]
        return acc


def four_over_six_blocks(fmt: Format, flat: np.ndarray, K_: int, tensor_scale: "bool | float",
                         rounding: Rounding, overflow: Overflow, seed=None, want_out: bool = True,
                         want_codes: bool = False, metric: str = "mse") -> _mx.BlockResult:
    """4/6 block quantization of the flat working data (module docstring); returns the
    ``mx.BlockResult`` of the chosen candidate per block."""
    elem_max = float(_mx.fp8_block_elem(fmt).elem_max)
    if tensor_scale is True:
        fin = np.abs(flat[np.isfinite(flat)])
        g = tensor_scale_4o6(float(fin.max()) if fin.size else 0.0, elem_max)
    elif tensor_scale is False:
        g = np.float32(1.0)
    else:
        g = np.float32(tensor_scale)
    kw = dict(seed=seed, want_out=True, want_codes=True)
    r6 = _mx.fp8_blocks(fmt, flat, K_, float(g) if tensor_scale is not False else False,
                        rounding, overflow, **kw)
    r4 = _mx.fp8_blocks(fmt, flat, K_, float(g) if tensor_scale is not False else False,
                        rounding, overflow, block_max=np.float32(elem_max * 2.0 / 3.0), **kw)
    e6, e4 = _block_error(r6.out, flat, K_, metric), _block_error(r4.out, flat, K_, metric)
    pick4 = np.isfinite(r4.scales) & (e4 < e6)
    rows = np.repeat(pick4, K_)
    out = np.where(rows, r4.out, r6.out) if want_out else None
    codes = np.where(rows, r4.codes, r6.codes).astype(r6.codes.dtype) if want_codes else None
    scodes = np.where(pick4, r4.scale_codes, r6.scale_codes).astype(r6.scale_codes.dtype)
    scales = np.where(pick4, r4.scales, r6.scales).astype(np.float32)
    return _mx.BlockResult(out, codes, scodes, scales,
                           float(g) if tensor_scale is not False else None)
