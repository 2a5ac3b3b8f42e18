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


# ---- the tile granularity: PerBlock / PerGroup(tile=(r, c)) and its names -----------------------
TILE_NAMES = {  # name -> the wrapper it must equal bit for bit
    "nvfp4_16x16": lambda: Tiled2D(get_quantizer("nvfp4", block_size=256), (16, 16)),
    "fp8_e4m3_b128x128": lambda: Tiled2D(get_quantizer("fp8_e4m3_g16384"), (128, 128)),
    "fp8_e4m3_b128x128_ue8m0": lambda: Tiled2D(get_quantizer("fp8_e4m3_g16384", pow2=True), (128, 128)),
    "mxfp8_32x32": lambda: Tiled2D(get_quantizer("mxfp8", block_size=1024), (32, 32)),
    "nvfp4_4over6_16x16": lambda: Tiled2D(get_quantizer("nvfp4_4over6", block_size=256), (16, 16)),
    "mixfp4_16x16": lambda: Tiled2D(get_quantizer("mixfp4", block_size=256), (16, 16)),
}


def _w(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp2(rng.integers(-4, 4, shape[:-1] + (1,)))).astype(F32)


@pytest.mark.parametrize("name", list(TILE_NAMES))
def test_tile_names_equal_the_wrapper_numpy_and_torch(name):
    from fmtlab.formats import parse_quantizer

    q = get_quantizer(name)
    assert q.granularity.tile is not None and str(parse_quantizer(name)) in (name, name.replace("ue8m0", "pow2"))
    ref = TILE_NAMES[name]()
    w = _w((256, 384))
    got, want = q.fake_quantize(w), ref.fake_quantize(w)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    qt, rt = q.quantize(w), ref.quantize(w)
    np.testing.assert_array_equal(qt.codes, rt.codes)
    assert qt.scales.shape == rt.scales.shape == (256 // ref.tile[0], 384 // ref.tile[1])
    np.testing.assert_array_equal(qt.scales, rt.scales)
    if rt.scale_codes is not None:
        np.testing.assert_array_equal(qt.scale_codes, rt.scale_codes)
    np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), got.view(np.uint32))
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize
    from fmtlab.pytorch.quantizers import TorchQuantizer

    t = fake_quantize(torch.from_numpy(w.copy()), q).numpy()
    np.testing.assert_array_equal(t.view(np.uint32), got.view(np.uint32))
    tq = TorchQuantizer(q)
    tqt = tq.quantize(torch.from_numpy(w))
    np.testing.assert_array_equal(tqt.codes.numpy(), qt.codes)
    np.testing.assert_array_equal(tq.dequantize(tqt).numpy().view(np.uint32), got.view(np.uint32))


def test_tile_granularity_leading_axes_transpose_and_refusals():
    from fmtlab.formats.quantizer import Quantizer
    from fmtlab.formats.scaling import PerBlock, PerGroup

    q = get_quantizer("nvfp4_16x16")
    w = _w((3, 32, 48), 1)  # leading axes: each [32, 48] matrix tiled on its own
    got = q.fake_quantize(w)
    assert q.quantize(w).scales.shape == (3, 2, 3)
    g = F32(F32(np.abs(w).max()) / F32(2688.0))
    ref = Tiled2D(get_quantizer("nvfp4", block_size=256), (16, 16))
    flat = ref.fake_quantize(w.reshape(96, 48))  # the same tiles stacked: same tensor scale
    np.testing.assert_array_equal(got.reshape(96, 48).view(np.uint32), flat.view(np.uint32))
    assert F32(q.quantize(w).tensor_scale) == g
    # 16 x 16 tiles: W and W^T quantize to transposed values (the recipe's reason for them)
    w2 = _w((64, 64), 2)
    np.testing.assert_array_equal(q.fake_quantize(w2.T).view(np.uint32),
                                  q.fake_quantize(w2).T.view(np.uint32))
    with pytest.raises(FmtlabError, match="multiples"):
        q.fake_quantize(_w((20, 32)))
    with pytest.raises(FmtlabError, match="holds 256 elements"):
        PerBlock(128, tile=(16, 16))
    with pytest.raises(FmtlabError, match="axis must be -1"):
        PerGroup(256, axis=0, tile=(16, 16))
    with pytest.raises(FmtlabError, match="two positive ints"):
        Quantizer("fp8_e4m3", PerGroup(256, tile=(16, 0)))
    with pytest.raises(FmtlabError, match="holds 256 elements"):
        get_quantizer("nvfp4_16x16", block_size=128)


def test_tile_names_in_replay_quantize_model_and_explore():
    torch = pytest.importorskip("torch")
    from fmtlab.explore.space import Family, SideSpace, quantizer_spec
    from fmtlab.errors import SpaceError
    from fmtlab.pytorch import quantize_model
    from fmtlab.sim.quant import _mask_from_scales, resolve
    from fmtlab.sim.replay import make_config

    # replay: a config string names the tiles; the clip mask comes from the tile scales
    c = make_config("t:w=nvfp4_16x16;a=fp8_e4m3_per_token")
    fn = resolve(c.weight)
    w = _w((64, 96), 3)
    out, clip = fn.with_clip(w)
    q = get_quantizer("nvfp4_16x16")
    np.testing.assert_array_equal(out.view(np.uint32), q.fake_quantize(w).view(np.uint32))
    _, s, _ = q.fake_quantize_scaled(w)
    np.testing.assert_array_equal(clip, _mask_from_scales(q, w, s, None))
    # quantize_model: weights named by tile
    lin = torch.nn.Sequential(torch.nn.Linear(96, 64, bias=False))
    lin[0].weight.data = torch.from_numpy(w.copy())
    qm, summary = quantize_model(lin, weights="fp8_e4m3_b32x32_ue8m0", activations=None, skip=())
    layer = qm[0]
    x = torch.randn(5, 96)
    want = torch.from_numpy(get_quantizer("fp8_e4m3_b32x32_ue8m0").fake_quantize(w))
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, want))
    # explore: tile:RxC on weights, 4over6 / mixfp4 rules
    assert quantizer_spec("fp4_e2m1", "tile:16x16", "fp8_e4m3") == "nvfp4_16x16"
    assert quantizer_spec("fp8_e4m3", "tile:128x128", "fp32") == "fp8_e4m3_b128x128"
    assert quantizer_spec("fp4_e2m1", "block:16", "fp8_e4m3", "4over6") == "nvfp4_4over6"
    assert quantizer_spec("fp4_e2m1", "tile:16x16", "fp8_e4m3", "mixfp4") == "mixfp4_16x16"
    assert quantizer_spec("fp8_e4m3", "block:16", "fp8_e4m3", "mixfp4") is None
    fam = Family("table", {"names": ["fp4_e2m1"]})
    side = SideSpace((fam,), ("tile:16x16",), ("fp8_e4m3",), ("absmax", "4over6", "mixfp4"))
    side.check("weights")
    names = [s for s, _, _ in side.quantizers("weights")]
    assert names == ["nvfp4_16x16", "nvfp4_4over6_16x16", "mixfp4_16x16"]
    assert all(get_quantizer(n) == resolve(n).obj for n in names)
    with pytest.raises(SpaceError, match="weight granularity"):
        side.check("activations")


def test_tile_layout_laws():
    """For random tile sizes and shapes: the tile quantizer equals the per-tile wrapper bit for bit,
    its scales are [..., M / r, N / c], and dequantize(quantize) == fake_quantize."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fmtlab.formats.quantizer import Quantizer
    from fmtlab.formats.scaling import PerBlock, PerGroup

    @settings(max_examples=30, deadline=None)
    @given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 4), st.integers(1, 4),
           st.sampled_from(["group", "mx", "nv"]), st.integers(0, 2 ** 31))
    def check(r, c, mi, ni, kind, seed):
        if r * c < 2:
            return
        g = {"group": PerGroup(r * c, tile=(r, c)),
             "mx": PerBlock(r * c, tile=(r, c)),
             "nv": PerBlock(r * c, scale_format="fp8_e4m3", tensor_scale=True, tile=(r, c))}[kind]
        fmt = "fp8_e4m3" if kind != "nv" else "fp4_e2m1"
        q = Quantizer(fmt, g)
        w = _w((mi * r, ni * c), seed)
        ref = Tiled2D(Quantizer(fmt, dataclasses.replace(g, tile=None)), (r, c))
        np.testing.assert_array_equal(q.fake_quantize(w).view(np.uint32), ref.fake_quantize(w).view(np.uint32))
        qt = q.quantize(w)
        assert qt.scales.shape == (mi, ni)
        np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), q.fake_quantize(w).view(np.uint32))

    import dataclasses
    check()
