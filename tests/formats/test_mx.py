"""MX (OCP Microscaling v1.0) and NVFP4 block formats against direct transcriptions.

The transcriptions below are written from the specs' algorithms in plain Python (math.frexp,
float32 rounding through numpy scalars, elements through the pure-Python oracle) and share no code
with fmtlab.formats.mx or the numba kernels. Invariants:
  M1  E8M0 exponents follow the rule (FLOOR/CEIL/EVEN/RCEIL) computed directly;
  M2  element codes == oracle(fl32(x / X)) with saturation, values == fl32(v * X);
  M3  the fused float32 kernel, the two-pass path (float64 input, stochastic) and
      dequantize(quantize(x)) agree bit for bit.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtlab.formats import PerBlock, Quantizer, get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode

MX = {  # preset -> (element format, emax_elem, mantissa bits, element value offset 2**eoff)
    "mxfp8_e4m3": ("fp8_e4m3", 8, 3, 0),
    "mxfp8_e5m2": ("fp8_e5m2", 15, 2, 0),
    "mxfp6_e3m2": ("fp6_e3m2", 4, 2, 0),
    "mxfp6_e2m3": ("fp6_e2m3", 2, 3, 0),
    "mxfp4": ("fp4_e2m1", 2, 1, 0),
    "mxint8": ("int8_sym", 0, 6, -6),
}
RULES = ("floor", "ceil", "even", "rceil")


def _f32(v: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(v))


def _bits(a: float) -> int:
    return struct.unpack("<I", struct.pack("<f", a))[0]


def _floor_log2(a: float) -> int:
    return math.frexp(a)[1] - 1  # exact: a is a float32 value held in a double


def ocp_exponent(amax: float, rule: str, emax: int, mbits: int, elem_max: float) -> int:
    """The shared exponent, transcribed from the rule definitions."""
    if amax == 0:
        return -127
    if rule == "floor":
        e = _floor_log2(amax) - emax
    elif rule == "ceil":
        f = _floor_log2(amax)
        e = f + (amax != 2.0 ** f) - emax
    elif rule == "even":  # round half up to mbits mantissa bits on the float32 pattern
        b = _bits(amax) + (1 << (22 - mbits))
        if b >> 23:  # normal (or rounded up to 2**128): the exponent field is floor(log2 A')
            e = (b >> 23) - 127 - emax
        else:
            e = _floor_log2(struct.unpack("<f", struct.pack("<I", b))[0]) - emax
    else:  # rceil
        d = _f32(np.float32(amax) / np.float32(elem_max))
        if d == 0:
            e = -127
        else:
            f = _floor_log2(d)
            e = f + (d != 2.0 ** f)
    return max(-127, min(127, e))


def ocp_mx(x: np.ndarray, preset: str, rule: str):
    """Direct transcription of OCP MX v1.0 section 6.3 over blocks of 32 of the last axis:
    (element codes, E8M0 codes, values)."""
    name, emax, mbits, eoff = MX[preset]
    fmt = get_format(name)
    elem_max = fmt.max * 2.0 ** eoff
    blocks = x.reshape(-1, 32)
    codes, scodes, vals = [], [], []
    for blk in blocks:
        if not np.all(np.isfinite(blk)):
            scodes.append(255)
            codes.append(np.zeros(32, fmt.code_dtype))
            vals.append(np.full(32, np.nan, np.float32))
            continue
        amax = float(np.max(np.abs(blk)))
        e = ocp_exponent(amax, rule, emax, mbits, elem_max)
        scodes.append(e + 127)
        X = 2.0 ** (e + eoff)
        y = np.array([_f32(float(v) / X) for v in blk], np.float32)
        c = oracle_encode(fmt, y, overflow="saturate")
        codes.append(c)
        with np.errstate(over="ignore"):
            vals.append((fmt.decode(c) * X).astype(np.float32))
    return (np.concatenate(codes).reshape(x.shape), np.array(scodes, np.uint8),
            np.concatenate(vals).reshape(x.shape))


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    ui = np.uint32 if a.dtype == np.float32 else np.uint64
    na, nb = np.isnan(a), np.isnan(b)
    return bool(a.shape == b.shape and np.array_equal(na, nb)
                and np.array_equal(a[~na].view(ui), b[~nb].view(ui)))


def adversarial_blocks() -> np.ndarray:
    """One block per row: zeros, a huge value among small ones, float32 subnormals only, NaN, Inf,
    the spec's 957 example, exact powers of two, values just below powers of two, float32 max,
    mixed signs with -0, the element max exactly and one ulp above."""
    rng = np.random.default_rng(0)
    rows = [
        np.zeros(32),
        np.r_[1e30, rng.standard_normal(31) * 1e-3],
        rng.uniform(-1, 1, 32) * 1e-40,
        np.r_[np.nan, rng.standard_normal(31)],
        np.r_[rng.standard_normal(31), -np.inf],
        np.r_[957.0, rng.standard_normal(31) * 100],
        2.0 ** rng.integers(-20, 20, 32),
        np.r_[np.nextafter(np.float32(2.0 ** 10), np.float32(0)), rng.standard_normal(31)],
        np.r_[np.finfo(np.float32).max, -np.finfo(np.float32).max, np.zeros(30)],
        np.r_[-0.0, 1.5, -1.75, rng.standard_normal(29) * 1e-6],
        np.r_[448.0, 6.0, 7.5, 28.0, 57344.0, rng.standard_normal(27)],
        np.r_[np.float32(1.9999999), rng.uniform(-1, 1, 31)],
        np.r_[1e-38, 3e-39, np.zeros(30)],
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("preset", list(MX))
@pytest.mark.parametrize("rule", RULES)
def test_mx_matches_ocp_transcription(preset, rule):
    """M1, M2 on adversarial blocks and random blocks of several magnitudes."""
    rng = np.random.default_rng(hash((preset, rule)) % 2 ** 32)
    rand = (rng.standard_normal((6, 64)) * 10.0 ** rng.integers(-8, 8, (6, 1))).astype(np.float32)
    for x in (adversarial_blocks(), rand):
        q = get_quantizer(preset, scale_rule=rule)
        codes, scodes, vals = ocp_mx(x, preset, rule)
        qt = q.quantize(x)
        np.testing.assert_array_equal(qt.scale_codes.reshape(-1), scodes, err_msg=f"{preset} {rule}")
        np.testing.assert_array_equal(qt.codes, codes, err_msg=f"{preset} {rule}")
        assert _same(q.fake_quantize(x), vals)
        assert _same(q.dequantize(qt), vals)


def test_spec_example_957():
    """FLOOR clips the block max: 957 -> 896 in MXFP8 E4M3 (X = 2, 478.5 saturates to 448);
    CEIL keeps it (X = 4: 239.25 -> 240 -> 960)."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 957
    assert get_quantizer("mxfp8_e4m3").fake_quantize(x)[0, 0] == 896
    assert get_quantizer("mxfp8_e4m3").quantize(x).scale_codes[0, 0] == 128  # e = 1
    assert get_quantizer("mxfp8_e4m3", scale_rule="ceil").fake_quantize(x)[0, 0] == 960
    r = get_quantizer("mxfp8_e4m3").quantize(x).report
    assert r.clipped == 1 and r.nonfinite_blocks == 0


def test_zero_and_nan_blocks_defined():
    x = np.zeros((2, 32), np.float32)
    x[1, 5] = np.nan
    qt = get_quantizer("mxfp4").quantize(x)
    assert qt.scale_codes.reshape(-1).tolist() == [0, 255]  # zero block: 2**-127; NaN block: NaN
    y = qt.dequantize()
    assert np.all(y[0] == 0) and np.all(np.isnan(y[1])) and np.all(qt.codes[1] == 0)
    assert qt.report.nonfinite_blocks == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-45, 448.0, 464.0]),
                min_size=32, max_size=32),
       st.sampled_from(list(MX)), st.sampled_from(RULES))
def test_mx_hypothesis_blocks(vals, preset, rule):
    """M1, M2 on hypothesis-drawn blocks (any float32, including subnormals and ties)."""
    x = np.array(vals, np.float32).reshape(1, 32)
    codes, scodes, v = ocp_mx(x, preset, rule)
    qt = get_quantizer(preset, scale_rule=rule).quantize(x)
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.scale_codes.reshape(-1), scodes)
    assert _same(qt.dequantize(), v)


@pytest.mark.parametrize("preset", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"])
def test_fused_two_pass_and_float64_agree(preset):
    """M3: float32 fused kernel == float64 input (two-pass path) on the same values."""
    x = np.concatenate([adversarial_blocks().reshape(-1, 32),
                        np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)]).reshape(-1, 64)
    q = get_quantizer(preset)
    y32 = q.fake_quantize(x)
    y64 = q.fake_quantize(x.astype(np.float64))
    a, b = q.quantize(x), q.quantize(x.astype(np.float64))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scale_codes, b.scale_codes)
    assert _same(y32.astype(np.float64), y64) and _same(q.dequantize(a), y32)


def test_stochastic_blocks_reproducible():
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    q = get_quantizer("mxfp4", rounding="stochastic", seed=3)
    a = q.fake_quantize(x)
    assert _same(a, q.fake_quantize(x)) and _same(a, q.dequantize(q.quantize(x)))
    e8 = get_quantizer("mxfp4").quantize(x).scale_codes
    np.testing.assert_array_equal(q.quantize(x).scale_codes, e8)  # scales do not depend on rounding


def nvfp4_transcription(x: np.ndarray, tensor_scale: bool = True):
    """NVFP4: g = fl32(A / fl32(448 * 6)); per 16-block s = E4M3_RNE(fl32(fl32(A_b / 6) / g)),
    at least 2**-9; S = fl32(g * s); elements E2M1(fl32(x / S)) saturating; values fl32(v * S)."""
    e4m3, e2m1 = get_format("fp8_e4m3"), get_format("fp4_e2m1")
    fin = np.abs(x[np.isfinite(x)])
    A = float(fin.max()) if fin.size else 0.0
    g = np.float32(1.0)
    if tensor_scale and A > 0:
        g = np.float32(np.float32(A) / np.float32(2688.0))
    codes, scodes, vals = [], [], []
    for blk in x.reshape(-1, 16):
        if not np.all(np.isfinite(blk)):
            scodes.append(0x7F)
            codes.append(np.zeros(16, np.uint8))
            vals.append(np.full(16, np.nan, np.float32))
            continue
        ab = np.float32(np.max(np.abs(blk)))
        s_rel = np.float32(np.float32(ab / np.float32(6.0)) / g)
        c8 = int(oracle_encode(e4m3, np.array([s_rel]), overflow="saturate")[0])
        c8 = max(c8, 1)
        S = np.float32(g * np.float32(e4m3.decode(np.array([c8]))[0]))
        y = (blk / S).astype(np.float32)
        c = oracle_encode(e2m1, y, overflow="saturate")
        scodes.append(c8)
        codes.append(c)
        vals.append((e2m1.decode(c) * np.float64(S)).astype(np.float32))
    return (np.concatenate(codes).reshape(x.shape), np.array(scodes, np.uint8),
            np.concatenate(vals).reshape(x.shape), g)


@pytest.mark.parametrize("tensor_scale", [True, False])
def test_nvfp4_matches_transcription(tensor_scale):
    rng = np.random.default_rng(4)
    xs = [adversarial_blocks().reshape(-1, 32)[[0, 1, 2, 5, 6, 7, 9, 10, 11]],
          (rng.standard_normal((4, 64)) * np.exp(rng.standard_normal((4, 64)) * 2)).astype(np.float32),
          np.r_[adversarial_blocks()[3], np.ones(32)].astype(np.float32).reshape(2, 32)]
    q = Quantizer("fp4_e2m1", PerBlock(16, scale_format="fp8_e4m3", tensor_scale=tensor_scale))
    for x in xs:
        codes, scodes, vals, g = nvfp4_transcription(x, tensor_scale)
        qt = q.quantize(x)
        np.testing.assert_array_equal(qt.scale_codes.reshape(-1), scodes)
        np.testing.assert_array_equal(qt.codes, codes)
        assert _same(q.fake_quantize(x), vals) and _same(qt.dequantize(), vals)
        assert (qt.tensor_scale == float(g)) if tensor_scale else qt.tensor_scale is None


def test_block_axis_and_bad_blocks():
    x = np.random.default_rng(5).standard_normal((64, 3)).astype(np.float32)
    q0 = get_quantizer("mxfp8_e4m3", axis=0)
    q1 = get_quantizer("mxfp8_e4m3")
    assert _same(q0.fake_quantize(x), q1.fake_quantize(np.ascontiguousarray(x.T)).T.copy())
    with pytest.raises(Exception, match="does not divide"):
        q1.quantize(np.zeros((2, 48), np.float32))
    with pytest.raises(Exception, match="EVEN"):
        Quantizer("log4", PerBlock(32), "even").quantize(np.ones((1, 32), np.float32))
