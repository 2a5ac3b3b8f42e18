"""The integer block formats and the E1M2 element, held to independent restatements of their
published definitions (OCP MX v1.0 section 6 for MXINT8; arXiv 2510.25602 for MXINT4/6 and
NVINT4; MixFP4 arXiv 2605.31035 for E1M2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode

F32 = np.float32


def _data(n_blocks, K, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(n_blocks, K)) * np.exp2(rng.integers(-8, 8, (n_blocks, 1)))
    x[0] = 0.0
    x[1, 3] = -np.abs(x[1]).max() * 1.5  # a negative block maximum
    return x.astype(F32)


def test_e1m2_values_and_block_use():
    f = get_format("fp4_e1m2")
    assert get_format("e1m2") == f and get_format("e1m2_fin_b1") == f
    np.testing.assert_array_equal(f.values()[:8], np.arange(8) * 0.25)
    np.testing.assert_array_equal(f.values()[8:], -np.arange(8) * 0.25)
    assert get_quantizer("mxfp4_e1m2").format == f


@pytest.mark.parametrize("name, bits", [("mxint8", 8), ("mxint6", 6), ("mxint4", 4)])
def test_mxint_matches_the_fixed_point_definition(name, bits):
    """MXINT<n>: 32 elements share X = 2**e, e = floor(log2 amax) - 0 (the element's 1.(n-2)
    fixed point has emax 0); element = symmetric INT<n> code of RNE(x / (X * 2**-(n-2))),
    clamped to +/-(2**(n-1) - 1)."""
    q = get_quantizer(name)
    el = get_format(f"int{bits}_sym")
    assert q.format == el and q.granularity.size == 32
    x = _data(64, 32)
    qt = q.quantize(x)
    lim = 2 ** (bits - 1) - 1
    for xi, ci, si, sc in zip(x, qt.codes, qt.scales.reshape(-1), qt.scale_codes.reshape(-1)):
        amax = float(np.abs(xi).max())
        e = -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax))))
        assert sc == e + 127 and si == 2.0 ** (e - (bits - 2))
        y = (xi.astype(np.float64) / 2.0 ** (e - (bits - 2))).astype(F32)
        want = oracle_encode(el, y, "nearest_even", "saturate")
        np.testing.assert_array_equal(ci, want)
        assert np.all(np.abs(el.values()[ci]) <= lim)


def test_nvint4_matches_the_two_level_definition():
    """NVINT4: 16 INT4 elements in [-7, 7] per E4M3 scale, FP32 tensor scale as NVFP4 with 7 in
    place of 6: g = A / (448 * 7), s = E4M3(fl32(fl32(amax / 7) / g)) (at least code 1),
    element = RNE(fl32(x / fl32(g * s))) clamped to +/-7."""
    q = get_quantizer("nvint4")
    el, e4m3 = get_format("int4_sym"), get_format("fp8_e4m3")
    x = _data(64, 16, seed=1)
    qt = q.quantize(x)
    g = F32(F32(np.abs(x).max()) / F32(F32(448.0) * F32(7.0)))
    assert F32(qt.tensor_scale) == g
    for xi, ci, sc in zip(x, qt.codes, qt.scale_codes.reshape(-1)):
        s_rel = F32(F32(F32(np.abs(xi).max()) / F32(7.0)) / g)
        want_sc = max(1, int(oracle_encode(e4m3, np.array([s_rel]), "nearest_even", "saturate")[0]))
        assert sc == want_sc
        S = F32(g * F32(e4m3.values()[sc]))
        y = (xi / S).astype(F32)
        np.testing.assert_array_equal(ci, oracle_encode(el, y, "nearest_even", "saturate"))


def test_int_block_vectors(tmp_path):
    from fmtlab.formats.vectors import write_vectors

    paths = write_vectors("nvint4", tmp_path, n=64)
    assert any(p.name == "nvint4.blocks.hex" for p in paths)


@pytest.mark.parametrize("name", ["nvint4", "mxint4", "mxint6", "mxfp4_e1m2"])
def test_torch_block_path_is_bit_exact(name):
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize

    q = get_quantizer(name)
    x = _data(32, 32, seed=4)
    want = q.fake_quantize(x)
    got = fake_quantize(torch.from_numpy(x.copy()), name).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name, emax", [("mxfp8_e4m3", 8), ("mxfp4", 2)])
def test_neuron_scale_is_twice_the_ocp_scale(name, emax):
    """AWS Neuron nki.isa.quantize_mx: X = 2**(floor(log2 amax) - emax + 1), elements as MX."""
    from fmtlab.formats import get_block_format

    q = get_quantizer(name, scale_rule="neuron")
    assert get_block_format(name.replace("_e4m3", "") + "_neuron").shared_exp == "neuron"
    x = _data(64, 32, seed=2)
    qt = q.quantize(x)
    q0 = get_quantizer(name).quantize(x)
    for xi, ci, sc, sc0 in zip(x, qt.codes, qt.scale_codes.reshape(-1), q0.scale_codes.reshape(-1)):
        amax = float(np.abs(xi).max())
        e = -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax)) - emax + 1))
        assert sc == e + 127 and (amax == 0 or sc == sc0 + 1)
        y = (xi.astype(np.float64) / 2.0 ** e).astype(F32)
        np.testing.assert_array_equal(ci, oracle_encode(q.format, y, "nearest_even", "saturate"))
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize

    got = fake_quantize(torch.from_numpy(x.copy()), q).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), q.fake_quantize(x).view(np.uint32))
