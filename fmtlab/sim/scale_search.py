"""Scale searches for block formats, usable alone or under GPTQ (``gptq(..., scale_search=...)``).

A search picks, per block of a block quantizer (PerBlock along the input axis of W [out, in]),
the effective scale among candidates by the least block sum of squared errors (float64) of the
quantizer's own element rounding (``fq_scaled``, the block element pass of ``mx.py``):

* ``"mse"`` on FP8-scaled blocks (NVFP4; NVIDIA ModelOpt's MSE calibration of block scales): the
  E4M3 scale codes c0 - 8 .. c0 + 2 around the absmax code c0 (codes 1..126);
* ``"mse"`` on E8M0 blocks (MX): the shared exponent e - 1, e, e + 1 around the rule's e.

Ties keep the quantizer's own scale (the absmax / rule one). The FP32 tensor scale of NVFP4 is the
quantizer's (from the whole tensor). "Four Over Six" (each NVFP4 block's max maps to 6 or to 4) is
a scale rule of the formats (``scale_rule="four_over_six"``, :mod:`fmtlab.formats.four_over_six`):
GPTQ uses it as any rule, and it is not repeated here.
"""

from __future__ import annotations

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import mx as _mx
from fmtlab.formats.kernels import Rows, fq_scaled
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import NanInput
from fmtlab.formats.scaling import FourOverSix, MixFP4, PerBlock

__all__ = ["SEARCHES", "block_scale_search", "searched_fake_quantize"]

SEARCHES = ("mse",)
_E4M3 = get_format("fp8_e4m3")


def _check(q: Quantizer, search: str) -> PerBlock:
    if search not in SEARCHES:
        raise FmtlabError(f"unknown scale search {search!r}; use one of {SEARCHES}")
    g = q.granularity
    if not isinstance(g, PerBlock) or g.axis % 2 != 1 or g.tile is not None:
        raise FmtlabError(f"scale search {search!r} needs a block quantizer along the input axis, got {q}")
    if isinstance(q.scale_rule, (FourOverSix, MixFP4)):
        who = "Four Over Six" if isinstance(q.scale_rule, FourOverSix) else "MixFP4"
        raise FmtlabError(f"{q} already searches its block scales ({who}); no scale search on top")
    return g


def block_scale_search(A: np.ndarray, q: Quantizer, search: str = "mse",
                       tensor_scale: float | None = None) -> np.ndarray:
    """Per-block effective float32 scales of ``A`` [R, k * block] under ``q``, chosen by ``search``
    (see the module docstring); slot order = the quantizer's layout (row-major blocks).
    ``tensor_scale``: NVFP4's g (default: from A itself, as the quantizer does)."""
    g = _check(q, search)
    A = np.ascontiguousarray(A)
    flat = A.reshape(-1)
    K = g.size
    if A.shape[-1] % K:
        raise FmtlabError(f"block size {K} does not divide {A.shape[-1]}")
    fmt = q.format
    if g.scale_format == "e8m0":
        base = _mx.mx_blocks(fmt, flat, K, q.scale_rule.mode, q.rounding, q.overflow, None, False, False).scales
        cands = [base, base * np.float32(0.5), base * np.float32(2.0)]
    else:
        if tensor_scale is None:
            ts = bool(g.tensor_scale)
        else:
            ts = float(tensor_scale)
        res = _mx.fp8_blocks(fmt, flat, K, ts, q.rounding, q.overflow, None, False, False)
        base = res.scales
        gv = np.float32(res.tensor_scale if res.tensor_scale is not None else 1.0)
        c0 = np.asarray(res.scale_codes, np.int64) & 0x7F
        vals = _E4M3.values().astype(np.float32)
        cands = [base] + [(gv * vals[np.clip(c0 + d, 1, 126)]).astype(np.float32)
                          for d in range(-8, 3) if d != 0]
    x = flat.reshape(-1, K).astype(np.float64)
    best = base.astype(np.float32).copy()
    best_err = None
    nb = x.shape[0]
    for s in cands:
        s = np.where(np.isfinite(s) & (s > 0), s, base).astype(np.float32)
        out = fq_scaled(fmt, flat, Rows(K, nb), s, rounding=q.rounding, overflow=q.overflow,
                        nan=NanInput.RAISE).reshape(-1, K).astype(np.float64)
        err = np.sum((out - x) ** 2, axis=1)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best = np.where(better, s, best)
        best_err = np.where(better, err, best_err)
    return best


def searched_fake_quantize(W, q: Quantizer, search: str = "mse") -> np.ndarray:
    """``q``'s fake-quant of W [R, C] (float32) at the searched block scales."""
    W = np.ascontiguousarray(W, np.float32)
    s = block_scale_search(W, q, search)
    K = q.granularity.size
    return fq_scaled(q.format, W.reshape(-1), Rows(K, s.size), s, rounding=q.rounding, overflow=q.overflow,
                     nan=NanInput.RAISE).reshape(W.shape)
