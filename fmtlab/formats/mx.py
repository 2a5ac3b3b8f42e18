"""Block formats: OCP Microscaling (E8M0 shared exponent) and FP8-scaled blocks (NVFP4).

MX (OCP Microscaling Formats v1.0): K = 32 consecutive elements along the reduction axis share
X = 2**e, stored as E8M0 (code e + 127). From the block's largest finite magnitude A (a float32):
  FLOOR  e = floor(log2 A) - emax_elem         (the spec; the block max may clip: 957 -> 896 in
                                                 MXFP8 E4M3, since 957 / 2 = 478.5 saturates to 448)
  CEIL   e = ceil(log2 A) - emax_elem          (never clips)
  EVEN   e = floor(log2 A') - emax_elem, A' = A rounded half-up to the element's mantissa bits on
         its float32 pattern (pattern + 2**(22 - mbits), exponent field read off; torchao "EVEN")
  RCEIL  e = ceil(log2 D), D = fl32(A / elem_max)   (cuBLAS/torchao "RCEIL"; log2 taken exactly
         from D's bits, where torch's float32 log2 can round a D just above 2**k down to k)
  NEURON e = floor(log2 A) - emax_elem + 1        (AWS Neuron nki.isa.quantize_mx: a scale twice
         the OCP sample algorithm's, so the block max never clips)
  MIDMAX e = FLOOR's e, plus 1 where A > 2**e * midmax, midmax = (2**(emax_elem + 1) + elem_max) / 2
         (the midpoint between the element max and the next power of two: 7 for E2M1, 480 for
         E4M3, 61440 for E5M2, 30 for E3M2, 7.75 for E2M3). Brevitas' "midmax" scale rounding
         (Xilinx/brevitas PR 1409; its reference quantizer ``MXFP.quantize(select=True)`` in
         tests/brevitas/core/test_quant_mx.py): the block max rounds to the nearer of elem_max * X
         (saturating) and 2**(emax_elem + 1) * X, at the cost of the smallest elements.
e is clamped to [-127, 127]; an all-zero block gets e = -127 (code 0). emax_elem = floor(log2 of
the element's max) (E4M3 8, E5M2 15, E3M2 4, E2M3 2, E2M1 2); mbits = its mantissa bits.
Elements: y = fl32(x / 2**e) (exact unless below float32's range), rounded to the element format
with overflow saturating (the spec clamps to the largest normal), value fl32(v * 2**e).
MXINT8: INT8 elements with an implicit 2**-6 (1.6 fixed point, |v| <= 127/64 = 1.984375,
emax_elem = 0, mbits = 6); like the reference implementation (microxcaling) we clamp to +/-127, so
code 0x80 (-2.0) is never produced. Other INTn elements follow the same 1.(n-2) convention.
A block holding NaN or Inf gets the NaN scale (E8M0 code 255): every element decodes to NaN and its
element codes are 0 (the spec: a NaN scale makes the whole block NaN).

FP8-scaled blocks (NVFP4: K = 16, E2M1 elements, E4M3 block scales, FP32 tensor scale):
  g = fl32(A_tensor / fl32(448 * elem_max))   (A_tensor = max finite |x|; 0 -> g = 1;
      an underflow to 0 -> 2**-149); without tensor_scale g = 1
  per block: s_rel = fl32(fl32(A / elem_max) / g); code = E4M3 round-to-nearest-even of s_rel,
  saturating, at least code 1 (2**-9: a block never gets the zero scale); S = fl32(g * e4m3(code))
  elements: y = fl32(x / S), E2M1 RNE (saturating), value fl32(v * S).
  INT elements (NVINT4, arXiv 2510.25602: INT4 in [-7, 7], E4M3 scale per 16) are plain
  integers here (elem_max = 7, no 1.(n-2) fixed-point offset).
Non-finite blocks: E4M3 NaN code, S = NaN, outputs NaN, element codes 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import _fast_kernels as K
from fmtlab.formats.base import Format, make_rng
from fmtlab.formats.kernels import Rows, encode_scaled, fq_scaled, kernel_plan, params
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding

__all__ = ["BlockElem", "block_elem", "fp8_block_elem", "BlockResult", "mx_blocks", "fp8_blocks", "RULE_ID"]

NEURON = 4  # _block_kernels.NEURON
MIDMAX = 5  # _block_kernels.MIDMAX
RULE_ID = {"floor": K.FLOOR, "ceil": K.CEIL, "even": K.EVEN, "rceil": K.RCEIL, "neuron": NEURON,
           "midmax": MIDMAX}


class BlockElem(NamedTuple):
    """What the block rules need to know about the element format."""

    emax: int  # floor(log2 of the element's largest value), after the fixed-point offset
    mbits: int  # mantissa bits (EVEN rule); -1 where undefined
    elem_max: np.float32  # largest element value (fixed-point offset applied)
    eoff: int  # element value = grid value * 2**eoff (INT: -(bits - 2)), else 0


def block_elem(fmt: Format) -> BlockElem:
    """Block-rule facts of an element format (see the module docstring)."""
    if fmt.family == "int":
        if not fmt.signed:
            raise FmtlabError(f"block formats need a signed element format, got {fmt.name}")
        eoff = -(fmt.bits - 2)
        return BlockElem(0, fmt.bits - 2, np.float32(fmt.max * 2.0 ** eoff), eoff)
    if fmt.family == "e8m0" or not fmt.signed:
        raise FmtlabError(f"{fmt.name} cannot be a block element format")
    emax = math.frexp(fmt.max)[1] - 1
    mbits = fmt.man_bits if fmt.family == "minifloat" else -1
    return BlockElem(emax, mbits, np.float32(fmt.max), 0)


def fp8_block_elem(fmt: Format) -> BlockElem:
    """``block_elem`` for FP8-scaled blocks: INT elements are plain integers there (NVINT4,
    arXiv 2510.25602: s = amax / 7, no 1.(n-2) fixed-point offset)."""
    be = block_elem(fmt)
    return BlockElem(0, be.mbits, np.float32(fmt.max), 0) if be.eoff else be


class BlockResult(NamedTuple):
    out: np.ndarray | None  # fake-quant values (working layout, flat)
    codes: np.ndarray | None  # element codes (flat)
    scale_codes: np.ndarray  # E8M0 codes or FP8 codes, one per block
    scales: np.ndarray  # effective float32 scale per block (NaN for non-finite blocks)
    tensor_scale: float | None


def _finite_amax(flat: np.ndarray, K_: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: (max finite |x| as a float32, flags: 1 NaN, 2 Inf)."""
    nb = flat.size // K_
    if flat.dtype == np.float32:
        amax = np.empty(nb, np.float32)
        flags = np.empty(nb, np.int64)
        K.finite_absmax_rows(flat, K_, amax, flags)
        return amax, flags
    b = np.abs(flat.reshape(nb, K_))
    fin = np.isfinite(b)
    flags = np.any(np.isnan(b), axis=1).astype(np.int64) + 2 * np.any(np.isinf(b), axis=1)
    amax = np.where(fin, b, 0.0).max(axis=1).astype(np.float32)
    return amax, flags


def _elements(fmt, flat, K_, scales, want_out, want_codes, rounding, overflow, rand, bad_blocks):
    """Element pass of the two-pass path: encode / fake-quant with one scale per block."""
    s = np.where(bad_blocks, np.float32(1.0), scales).astype(np.float32)
    w = flat
    if bad_blocks.any():
        w = flat.copy()
        w.reshape(-1, K_)[bad_blocks] = 0
    out = codes = None
    kw = dict(pow2=False, rounding=rounding, overflow=overflow, nan=NanInput.RAISE, rand=rand)
    if want_out:
        out = fq_scaled(fmt, w, Rows(K_, s.size), s, **kw)
        out.reshape(-1, K_)[bad_blocks] = np.nan
    if want_codes:
        codes = encode_scaled(fmt, w, Rows(K_, s.size), s, **kw)
        codes.reshape(-1, K_)[bad_blocks] = 0
    return out, codes


def mx_blocks(fmt: Format, flat: np.ndarray, K_: int, rule: str, rounding: Rounding,
              overflow: Overflow, seed=None, want_out: bool = True,
              want_codes: bool = False) -> BlockResult:
    """MX block quantization of the flat working data (blocks of K_ consecutive elements)."""
    be = block_elem(fmt)
    rid = RULE_ID[rule]
    if rid == K.EVEN and be.mbits < 0:
        raise FmtlabError(f"the EVEN shared-exponent rule needs a minifloat or INT element, not {fmt.name}")
    nb = flat.size // K_
    sexp = np.empty(nb, np.uint8)
    plan = params(fmt, rounding, overflow, NanInput.RAISE)  # None: the two-pass table path
    if plan is not None and flat.dtype == np.float32 and rounding is not Rounding.STOCHASTIC:
        out = np.empty_like(flat)
        codes = np.empty(flat.size if want_codes else 1, fmt.code_dtype)
        K.mx_fq(*plan, flat, out, K_, rid, be.emax, be.mbits, be.elem_max, be.eoff,
                want_codes, codes, sexp)
        scales = _mx_scale_values(sexp, be.eoff)
        return BlockResult(out if want_out else None, codes if want_codes else None, sexp, scales, None)
    amax, flags = _finite_amax(flat, K_)
    bits = amax.view(np.uint32).astype(np.int64)
    bits[flags != 0] = 0x7F800000
    e = np.empty(nb, np.int64)
    K.mx_exps(bits, rid, be.emax, be.mbits, be.elem_max, e)
    sexp[:] = e
    scales = _mx_scale_values(sexp, be.eoff)
    rand = make_rng(seed).random(flat.size) if rounding is Rounding.STOCHASTIC else None
    out, codes = _elements(fmt, flat, K_, scales, want_out, want_codes, rounding, overflow, rand,
                           sexp == 255)
    return BlockResult(out, codes, sexp, scales, None)


def _mx_scale_values(sexp: np.ndarray, eoff: int) -> np.ndarray:
    """float32 2**(code - 127 + eoff), NaN for code 255."""
    e = sexp.astype(np.int64) - 127 + eoff
    with np.errstate(over="ignore"):  # code 255 (2**128) becomes NaN below
        v = np.ldexp(1.0, e).astype(np.float32)
    v[sexp == 255] = np.nan
    return v


_E4M3 = get_format("fp8_e4m3")


def tensor_scale_of(amax_tensor: float, elem_max: np.float32, scale_fmt: Format = _E4M3) -> np.float32:
    """g = fl32(A / fl32(scale_max * elem_max)); A = 0 gives 1, an underflow gives 2**-149."""
    a = np.float32(amax_tensor)
    if not np.isfinite(a):
        raise FmtlabError("the tensor scale needs a finite max |x|")
    if a == 0:
        return np.float32(1.0)
    g = a / np.float32(np.float32(scale_fmt.max) * elem_max)
    return g if g > 0 else np.float32(2.0 ** -149)


def fp8_blocks(fmt: Format, flat: np.ndarray, K_: int, tensor_scale: bool | float, rounding: Rounding,
               overflow: Overflow, seed=None, want_out: bool = True, want_codes: bool = False,
               scale_fmt: Format = _E4M3, block_max: float | None = None) -> BlockResult:
    """FP8-scaled block quantization (NVFP4 with K_=16, fp4_e2m1, tensor_scale=True).

    tensor_scale: True computes g from the data, a float uses it as a static g, False uses g = 1.
    block_max: the element value a block's max |x| maps to (default the element's max; Four
    Over Six's second candidate maps it to 4).
    """
    be = fp8_block_elem(fmt)
    if block_max is not None:
        be = be._replace(elem_max=np.float32(block_max))
    S8 = kernel_plan(scale_fmt, Rounding.NEAREST_EVEN, Overflow.SATURATE, NanInput.RAISE).P
    plan = params(fmt, rounding, overflow, NanInput.RAISE)  # None: the two-pass table path
    nb = flat.size // K_
    fused = plan is not None and flat.dtype == np.float32 and rounding is not Rounding.STOCHASTIC
    if tensor_scale is True:
        ch = 8192 if flat.size % 8192 == 0 else K_  # tensor amax in large rows: fewer tasks
        a_t = _finite_amax(flat, ch)[0]
        g = tensor_scale_of(float(a_t.max()) if a_t.size else 0.0, be.elem_max, scale_fmt)
    elif tensor_scale is False:
        g = np.float32(1.0)
    else:
        g = np.float32(tensor_scale)
        if not (np.isfinite(g) and g > 0):
            raise FmtlabError(f"tensor scale must be finite and > 0, got {tensor_scale!r}")
    scodes = np.empty(nb, scale_fmt.code_dtype)
    seff = np.empty(nb, np.float32)
    if fused:
        out = np.empty_like(flat)
        codes = np.empty(flat.size if want_codes else 1, fmt.code_dtype)
        K.fp8scale_fq(*plan, S8, flat, out, K_, g, be.elem_max, want_codes, codes, scodes, seff)
        return BlockResult(out if want_out else None, codes if want_codes else None, scodes, seff,
                           float(g) if tensor_scale is not False else None)
    amax, flags = _finite_amax(flat, K_)
    bits = amax.view(np.uint32).astype(np.int64)
    bits[flags != 0] = 0x7F800000
    K.fp8_scales(S8, bits, g, be.elem_max, scodes, seff)
    rand = make_rng(seed).random(flat.size) if rounding is Rounding.STOCHASTIC else None
    out, codes = _elements(fmt, flat, K_, seff, want_out, want_codes, rounding, overflow, rand,
                           ~np.isfinite(seff))
    return BlockResult(out, codes, scodes, seff, float(g) if tensor_scale is not False else None)
