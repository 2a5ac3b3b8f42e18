"""Stochastic rounding in block formats, as the NVFP4 pre-training recipe uses it (NVIDIA, arXiv
2509.25149: stochastic rounding of the *gradient* elements to FP4, "for unbiased gradient
estimation"; the block scales stay round-to-nearest E4M3 and the tensor scale FP32). fmtlab's
``rounding="stochastic"`` on a block quantizer is exactly that: the scales come from the block
max as usual (no randomness), each element rounds up with probability (y - L) / (U - L).

Checked statistically: a block repeated R times in one tensor gets R independent draws under the
same scales, so the mean of the R fake-quant results estimates E[q(x)], which must equal x for every
element inside the element range (|x / S| <= elem_max); elements beyond it saturate exactly.
Bound: each draw lies in [L * S, U * S], variance <= ((U - L) S)**2 / 4; the test allows 6 standard
errors, plus the float64 error of the mean.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.formats import get_format, get_quantizer

F32 = np.float32
R = 4000


@pytest.mark.parametrize("name, K", [("nvfp4", 16), ("mxfp4", 32), ("mxfp8_e4m3", 32),
                                     ("mixfp4", 16)])
def test_block_stochastic_rounding_is_unbiased(name, K):
    rng = np.random.default_rng(21)
    block = (rng.standard_normal(K) * 3).astype(F32)
    x = np.tile(block, (R, 1))
    q = get_quantizer(name, rounding="stochastic", seed=7)
    qt = q.quantize(x)
    S = qt.scales.reshape(-1)
    assert np.all(S == S[0])  # the same scale for every copy: the scale is not random
    sc = qt.scale_codes.reshape(-1)
    assert np.all(sc == sc[0])
    fq = q.fake_quantize(x).astype(np.float64)
    np.testing.assert_array_equal(fq, q.dequantize(qt))
    mean = fq.mean(axis=0)
    fmt = get_format("fp4_e1m2" if int(sc[0]) >= 0x80 and name == "mixfp4" else q.format.name)
    vals = np.unique(np.abs(fmt.values()[np.isfinite(fmt.values())]))
    y = np.abs(block.astype(np.float64)) / float(S[0])
    inside = y <= vals[-1]
    # grid step around each |y|: the stochastic spread
    hi = np.searchsorted(vals, np.minimum(y, vals[-1]), side="left")
    step = (vals[np.clip(hi, 1, len(vals) - 1)] - vals[np.clip(hi - 1, 0, len(vals) - 2)]) * float(S[0])
    tol = 6 * step / 2 / np.sqrt(R) + 1e-12 * np.abs(block)
    dev = np.abs(mean - block.astype(np.float64))
    assert np.all(dev[inside] <= tol[inside]), (dev[inside] / tol[inside]).max()
    # beyond the range: saturated to +/- elem_max * S on every draw
    out = ~inside
    np.testing.assert_array_equal(fq[:, out], np.tile(np.sign(block[out]) * vals[-1] * float(S[0]), (R, 1)))
    # and the draws really vary (not round-to-nearest in disguise)
    assert np.any(fq.std(axis=0)[inside] > 0)


def test_stochastic_scale_rounding_is_not_defined():
    """No scale rule takes random draws: the recipe's scales are deterministic."""
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(F32)
    a = get_quantizer("nvfp4", rounding="stochastic", seed=1).quantize(x)
    b = get_quantizer("nvfp4", rounding="stochastic", seed=2).quantize(x)
    np.testing.assert_array_equal(a.scale_codes, b.scale_codes)
    assert not np.array_equal(a.codes, b.codes)
