"""Brevitas' "midmax" MX shared-exponent rule (Xilinx/brevitas PR 1409) held to a restatement of
Brevitas' reference MX quantizer (``MXFP.quantize(select=True)``, tests/brevitas/core/test_quant_mx.py):

    shared = max over the block of floor(log2 |x_i|)          (0 counts as -126)
    midmax = (2**(emax + 1) - maxval) / 2 + maxval            (element units)
    shared += 1 where max |x_i| > midmax * 2**(shared - emax)
    X = 2**(shared - emax); value = clamp(RNE(x / X on the element's grid) * X, +/-maxval * X)

Brevitas' element step rounds x * 2**(mbits - exp_i) (less precision below the element's normal
range) half-to-even and clamps to +/-maxval * X: that is the element format's RNE with saturation,
restated below with its own per-element exponent arithmetic (independent of fmtlab's oracle).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.formats import get_block_format, get_format, get_quantizer

F32 = np.float32
# fmtlab name -> (ebits, mbits, bias, emax, maxval) as Brevitas' MXFP.CONFIG derives them
ELEMS = {
    "mxfp8_e4m3": (4, 3, 7, 8, 448.0),
    "mxfp8_e5m2": (5, 2, 15, 15, 57344.0),
    "mxfp6_e3m2": (3, 2, 3, 4, 28.0),
    "mxfp6_e2m3": (2, 3, 1, 2, 7.5),
    "mxfp4": (2, 1, 1, 2, 6.0),
}


def _brevitas_midmax(x: np.ndarray, ebits, mbits, bias, emax, maxval):
    """(shared exponent - emax per block, fake-quant values) of the restated reference."""
    xd = x.astype(np.float64)
    _, ex = np.frexp(xd)
    exp = np.where(xd == 0, -126, ex - 1)
    shared = exp.max(axis=1, keepdims=True)
    midmax = (2.0 ** (emax + 1) - maxval) / 2 + maxval
    amax = np.abs(xd).max(axis=1, keepdims=True)
    shared = shared + (amax > midmax * np.exp2((shared - emax).astype(np.float64)))
    emin = 1 - bias
    offset = np.maximum(shared - exp - (emax - emin), 0)
    scale = np.exp2((mbits - offset - exp).astype(np.float64))
    v = np.round(xd * scale) / scale  # numpy rounds half to even, as torch.round
    lim = maxval * np.exp2((shared - emax).astype(np.float64))
    return (shared - emax)[:, 0], np.clip(v, -lim, lim)


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, (256, 32)) * np.exp2(rng.integers(-40, 40, (256, 1)))
    x[::7, 5] = 0.0
    return x.astype(F32)


@pytest.mark.parametrize("name", list(ELEMS))
def test_midmax_matches_brevitas_reference(name):
    q = get_quantizer(name, scale_rule="midmax")
    up = 0
    for seed in range(3):
        x = _data(seed)
        e_ref, v_ref = _brevitas_midmax(x, *ELEMS[name])
        qt = q.quantize(x)
        np.testing.assert_array_equal(qt.scale_codes.reshape(-1).astype(np.int64), e_ref + 127)
        out = q.fake_quantize(x)
        np.testing.assert_array_equal(out.view(np.uint32), v_ref.astype(F32).view(np.uint32))
        np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), out.view(np.uint32))
        floor = get_quantizer(name).quantize(x).scale_codes.reshape(-1).astype(np.int64)
        d = qt.scale_codes.reshape(-1).astype(np.int64) - floor
        assert set(np.unique(d)) <= {0, 1}
        up += int(d.sum())
    assert up > 0  # the rule fires on this data


@pytest.mark.parametrize("name", list(ELEMS))
def test_midmax_threshold_is_strict(name):
    """A block max exactly at midmax * 2**e keeps FLOOR's exponent; one float32 ulp above goes up."""
    _, _, _, emax, maxval = ELEMS[name]
    midmax = (2.0 ** (emax + 1) + maxval) / 2
    q = get_quantizer(name, scale_rule="midmax")
    for e in (-20, 0, 7):
        at = F32(midmax * 2.0 ** e)
        above = np.nextafter(at, F32(np.inf))
        below = np.nextafter(at, F32(0))
        x = np.zeros((3, 32), F32)
        x[:, 0] = [below, at, above]
        x[:, 1] = F32(2.0 ** (e - 3))
        sc = q.quantize(x).scale_codes.reshape(-1).astype(int) - 127
        assert list(sc) == [e, e, e + 1]


def test_midmax_mxint8_and_names():
    """MXINT8 (1.6 fixed point: emax 0, max 127/64): midmax = (2 + 127/64) / 2 = 255/128."""
    assert get_block_format("mxfp4_midmax").shared_exp == "midmax"
    q = get_quantizer("mxint8", scale_rule="midmax")
    x = np.zeros((2, 32), F32)
    x[0, 0] = F32(255 / 128)
    x[1, 0] = np.nextafter(F32(255 / 128), F32(4))
    assert list(q.quantize(x).scale_codes.reshape(-1).astype(int) - 127) == [0, 1]
    with pytest.raises(Exception, match="midmax"):
        get_quantizer("nvfp4", scale_rule="midmax")


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxint8"])
def test_midmax_torch_bit_identical(name):
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize

    q = get_quantizer(name, scale_rule="midmax")
    x = _data(9)
    got = fake_quantize(torch.from_numpy(x.copy()), q).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), q.fake_quantize(x).view(np.uint32))
    x64 = x.astype(np.float64)  # the two-pass (table / float64) path too
    got64 = fake_quantize(torch.from_numpy(x64.copy()), q).numpy()
    np.testing.assert_array_equal(got64.view(np.uint64), q.fake_quantize(x64).view(np.uint64))


def test_midmax_lowers_block_max_error():
    """What the rule is for: the block max's error never grows (FLOOR may saturate it)."""
    x = _data(4)
    for name in ELEMS:
        a = get_quantizer(name).fake_quantize(x)
        b = get_quantizer(name, scale_rule="midmax").fake_quantize(x)
        i = np.abs(x).argmax(axis=1)
        r = np.arange(len(x))
        ea = np.abs(a[r, i].astype(np.float64) - x[r, i])
        eb = np.abs(b[r, i].astype(np.float64) - x[r, i])
        assert np.all(eb <= ea), name
    assert math.isclose(get_format("fp4_e2m1").max, 6.0)


@pytest.mark.parametrize("name", list(ELEMS) + ["mxint8"])
def test_midmax_exhaustive_over_significands(name):
    """Every float32 significand pattern with its low 7 bits 0 or 1..1 (2 x 2**16 block maxima at
    three exponents), blocks of 2: the scale code is FLOOR's plus (A / 2**floor(log2 A) >
    1 + elem_max / 2**(emax + 1))."""
    from fmtlab.formats.mx import block_elem

    be = block_elem(get_quantizer(name).format)
    q = get_quantizer(name, scale_rule="midmax", block_size=2)
    hi = np.arange(1 << 16, dtype=np.uint32) << 7
    man = np.concatenate([hi, hi | 0x7F])
    for e in (-100, 0, 90):
        bits = ((e + 127) << 23) | man
        a = bits.view(F32)
        x = np.stack([a, -a / 3], axis=1).astype(F32)
        sc = q.quantize(x).scale_codes.reshape(-1).astype(np.int64) - 127
        sig = a.astype(np.float64) / 2.0 ** e
        want = e - be.emax + (sig > 1 + float(be.elem_max) / 2.0 ** (be.emax + 1))
        np.testing.assert_array_equal(sc, np.clip(want, -127, 127))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(-60, 60), st.sampled_from(sorted(ELEMS)))
def test_midmax_laws(seed, e, name):
    """Scale code = FLOOR's or one more; the block max's error never exceeds FLOOR's;
    dequantize(quantize) == fake_quantize; sign symmetry."""
    x = (np.random.default_rng(seed).standard_normal((4, 32)) * 2.0 ** e).astype(F32)
    q, q0 = get_quantizer(name, scale_rule="midmax"), get_quantizer(name)
    qt = q.quantize(x)
    d = qt.scale_codes.reshape(-1).astype(int) - q0.quantize(x).scale_codes.reshape(-1).astype(int)
    assert set(d.tolist()) <= {0, 1}
    fq, f0 = q.fake_quantize(x), q0.fake_quantize(x)
    np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), fq.view(np.uint32))
    np.testing.assert_array_equal((-q.fake_quantize(-x)).view(np.uint32), fq.view(np.uint32))
    i = np.abs(x).argmax(axis=1)
    r = np.arange(4)
    assert np.all(np.abs(fq[r, i].astype(np.float64) - x[r, i]) <= np.abs(f0[r, i].astype(np.float64) - x[r, i]))
