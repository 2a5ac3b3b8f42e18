"""2-D block scaling (16 x 16 NVFP4 weights, DeepSeek-V3 128 x 128 FP8 weights) held to a
direct per-tile restatement."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.tiles2d import Tiled2D, from_tiles, to_tiles

F32 = np.float32


def test_tiles_round_trip():
    x = np.arange(32 * 48).reshape(32, 48)
    t = to_tiles(x, 16, 16)
    assert t.shape == (6, 256) and np.array_equal(t[1], x[:16, 16:32].reshape(-1))
    assert np.array_equal(from_tiles(t, 32, 48, 16, 16), x)


def test_deepseek_128x128_fp32_and_ue8m0_scales():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 384)) * np.exp2(rng.integers(-4, 4, (256, 1)))).astype(F32)
    e4m3 = get_format("fp8_e4m3")
    for pow2 in (False, True):
        q = Tiled2D(get_quantizer("fp8_e4m3_g16384", pow2=pow2), (128, 128))
        qt = q.quantize(w)
        assert qt.scales.shape == (2, 3)
        for i in range(2):
            for j in range(3):
                tile = w[128 * i:128 * (i + 1), 128 * j:128 * (j + 1)]
                s = F32(F32(np.abs(tile).max()) / F32(448.0))
                if pow2:
                    s = F32(2.0 ** np.ceil(np.log2(np.float64(s))))
                assert qt.scales[i, j] == s
                y = (tile / s).astype(F32)
                np.testing.assert_array_equal(
                    qt.codes[128 * i:128 * (i + 1), 128 * j:128 * (j + 1)],
                    oracle_encode(e4m3, y, "nearest_even", "saturate"))
        np.testing.assert_array_equal(q.fake_quantize(w), qt.values)


def test_nvfp4_16x16_weight_blocks_are_transpose_consistent():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 32)).astype(F32)
    q = Tiled2D(get_quantizer("nvfp4", block_size=256), (16, 16))
    a, b = q.fake_quantize(w), q.fake_quantize(np.ascontiguousarray(w.T))
    np.testing.assert_array_equal(a.T.view(np.uint32), b.view(np.uint32))  # W and W^T agree
    assert q.quantize(w).scale_codes.shape == (4, 2)


def test_refusals():
    with pytest.raises(FmtlabError):
        Tiled2D(get_quantizer("nvfp4"), (16, 16))  # block 16 is not 16 x 16
    q = Tiled2D(get_quantizer("fp8_e4m3_g16384"), (128, 128))
    with pytest.raises(FmtlabError):
        q.fake_quantize(np.zeros((100, 128), F32))
