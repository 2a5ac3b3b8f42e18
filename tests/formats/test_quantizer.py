"""Quantizer: granularities, scale rules, QTensor round trips, reports, presets, bad input.

Invariants (each test's docstring says which it checks):
  I1  fake_quantize(x) == dequantize(quantize(x)), bit for bit;
  I2  codes == oracle(x / s [+ z]) with x / s in x's precision, values == fl(fl64(v - z) * s);
  I3  the scales follow the rule's formula exactly (scaling.py / quantizer.py docstrings).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import (
    MSE, AbsMax, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer,
    QTensor, Static, get_quantizer, list_quantizers,
)
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.scaling import parse_granularity, parse_scale_rule, pow2_ceil


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ui = np.uint32 if a.dtype == np.float32 else np.uint64
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(ui), b[~nb].view(ui)))


def _data(shape, seed=0, dtype=np.float32, heavy=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10
    if heavy:
        x = x * np.exp(rng.standard_normal(shape) * 2)
    return x.astype(dtype)


def _scales_bcast(q: Quantizer, s: np.ndarray, shape) -> np.ndarray:
    """Scales broadcast against x in its own layout (independent of the kernels' layouts)."""
    g = q.granularity
    nd = len(shape)
    if isinstance(g, PerTensor):
        return s.reshape((1,) * nd)
    if isinstance(g, PerChannel):
        a = g.axis % nd
        return s.reshape(tuple(shape[a] if i == a else 1 for i in range(nd)))
    if isinstance(g, PerToken):
        return s.reshape(shape[:-1] + (1,))
    a = g.axis % nd
    rep = np.repeat(np.moveaxis(s, -1, a), g.size, axis=a) if a != nd - 1 else np.repeat(s, g.size, axis=-1)
    return rep


CASES = [
    ("int8", PerChannel(0), AbsMax(), (16, 64)),
    ("int8", PerChannel(1), AbsMax(), (16, 64)),
    ("int8", PerChannel(1), AbsMax(), (4, 6, 8)),
    ("int4", PerGroup(32), AbsMax(), (8, 128)),
    ("int4", PerGroup(8, axis=0), AbsMax(), (16, 12)),
    ("uint8", PerToken(), MinMax(), (3, 5, 40)),
    ("int4", PerGroup(16), MinMax(), (6, 64)),
    ("dint4", PerChannel(0), AbsMax(), (12, 40)),
    ("log4", PerGroup(16), AbsMax(), (4, 64)),
    ("log4_b1.4142135623730951", PerToken(), Percentile(99.0), (10, 50)),
    ("fp8_e4m3", PerTensor(), AbsMax(), (7, 33)),
    ("fp8_e5m2", PerToken(), MSE(grid=20, min_ratio=0.5), (9, 40)),
    ("fp6_e2m3", PerGroup(32), Percentile(99.5), (5, 64)),
    ("fp4_e2m1", PerChannel(0), MSE(grid=10), (6, 48)),
    ("int8", PerTensor(), Static(0.25), (5, 7)),
    ("int8", PerChannel(0), Static((0.1, 0.2, 0.3), (0, 3, -5)), (3, 10)),
]


@pytest.mark.parametrize("fmt,gran,rule,shape", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_codes_are_the_oracle_of_x_over_s(fmt, gran, rule, shape, dtype):
    """I1 and I2 against the pure-Python oracle (fractions, no shared code with the kernels)."""
    q = Quantizer(fmt, gran, rule)
    x = _data(shape, seed=len(shape) + shape[-1], dtype=dtype, heavy=True)
    qt = q.quantize(x)
    assert isinstance(qt, QTensor) and qt.codes.shape == x.shape and qt.codes.dtype == q.format.code_dtype
    sb = _scales_bcast(q, qt.scales.astype(dtype), x.shape)
    y = x / sb
    if qt.zero_points is None:
        want = oracle_encode(q.format, y, boundaries="format")
        v = q.format.decode(want)
        vals = v * sb.astype(np.float64)
    else:
        z = _scales_bcast(q, qt.zero_points, x.shape)
        r = np.clip(np.rint(y), q.format.min - z, q.format.max - z) + z
        want = oracle_encode(q.format, r, boundaries="format")
        vals = (q.format.decode(want) - z) * sb.astype(np.float64)
    np.testing.assert_array_equal(qt.codes, want)
    assert _same(q.dequantize(qt), vals.astype(dtype))
    assert _same(q.fake_quantize(x), vals.astype(dtype))


@pytest.mark.parametrize("scale", [2.0 ** -149, 2.0 ** -130, 3e-45, 2.0 ** 120])
def test_extreme_static_scales(scale):
    """I2 where 1/s is beyond float32 (2**-149: no reciprocal) or s is subnormal / huge."""
    x = np.array([[0.0, 1e-45, -3e-44, 1e-40, 5e-39, -1.0, 2.0 ** 126, 1e38]], np.float32)
    for name in ("int8", "fp8_e4m3", "log4", "dint4"):
        q = Quantizer(name, PerTensor(), Static(scale))
        s = np.float32(scale)
        want = oracle_encode(q.format, x / s, overflow="saturate", boundaries="format")
        qt = q.quantize(x)
        np.testing.assert_array_equal(qt.codes, want)
        assert _same(q.fake_quantize(x), (q.format.decode(want) * np.float64(s)).astype(np.float32))


def test_absmax_scale_formula():
    """I3: s = fl32(fl32(max |x|) / fl32(max)); zero slices get 1; pow2 rounds up exactly."""
    x = _data((6, 50), 1)
    x[2] = 0
    q = Quantizer("int8", PerChannel(0))
    s, z = q.compute_scales(x)
    amax = np.abs(x).max(axis=1).astype(np.float32)
    want = np.where(amax == 0, np.float32(1), amax / np.float32(127))
    assert z is None and _same(s, want.astype(np.float32))
    s2, _ = Quantizer("int8", PerChannel(0), pow2=True).compute_scales(x)
    for raw, p in zip(want, s2):
        m, e = math.frexp(float(p))
        assert m == 0.5 and p >= raw and (p / 2 < raw or raw == p)


def test_percentile_formula():
    """I3: linear interpolation on the sorted |x| with h = (n - 1) * p / 100 (float64)."""
    x = _data((4, 37), 2)
    q = Quantizer("fp8_e4m3", PerToken(), Percentile(97.5))
    s, _ = q.compute_scales(x)
    for row, si in zip(x, s):
        v = np.sort(np.abs(row)).astype(np.float64)
        h = (len(v) - 1) * (97.5 / 100.0)
        i = int(math.floor(h))
        c = np.float32(v[i] + (v[i + 1] - v[i]) * (h - i))
        assert si == np.float32(c / np.float32(448.0))


def test_mse_picks_the_least_error_ratio():
    """I3: the chosen scale is the candidate with the least float64 SSE (ties: larger clip)."""
    x = _data((3, 64), 3, heavy=True)
    rule = MSE(grid=40, min_ratio=0.3)
    q = Quantizer("int4", PerToken(), rule)
    s, _ = q.compute_scales(x)
    for row, si in zip(x, s):
        amax = np.float32(np.abs(row).max())
        best, best_s = np.inf, None
        for r in rule.ratios:
            cand = np.float32(np.float32(amax * r) / np.float32(7))
            fq = Quantizer("int4", PerTensor(), Static(float(cand))).fake_quantize(row)
            e = float(np.sum((fq.astype(np.float64) - row.astype(np.float64)) ** 2))
            if e < best:
                best, best_s = e, cand
        assert si == best_s


def test_minmax_zero_point_formula():
    """I3: s = fl32((hi - lo) / (qmax - qmin)), z = clip(rint(qmin - lo / s)) in float64."""
    x = _data((5, 30), 4) + np.float32(7)
    q = Quantizer("uint8", PerToken(), MinMax())
    s, z = q.compute_scales(x)
    lo = np.minimum(x.min(axis=1), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1), 0).astype(np.float32)
    ws = (hi - lo) / np.float32(255)
    assert _same(s, ws.astype(np.float32))
    np.testing.assert_array_equal(z, np.clip(np.rint(0 - lo.astype(np.float64) / ws.astype(np.float64)), 0, 255))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arr=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                      elements=st.floats(-1e6, 1e6, width=32)),
       name=st.sampled_from(["int8", "int4", "fp8_e4m3", "dint4", "log4", "fp4_e2m1"]),
       kind=st.sampled_from(["tensor", "token", "ch0", "ch_last"]))
def test_roundtrip_property(arr, name, kind):
    """I1 on random shapes and values; per-slot scales are finite and positive."""
    gran = {"tensor": PerTensor(), "token": PerToken(), "ch0": PerChannel(0),
            "ch_last": PerChannel(-1)}[kind]
    q = Quantizer(name, gran)
    qt = q.quantize(arr)
    assert np.all(np.isfinite(qt.scales)) and np.all(qt.scales > 0)
    assert _same(q.fake_quantize(arr), q.dequantize(qt))
    assert qt.scales.shape == q.layout(arr.shape).scale_shape


def test_group_layout_round_trip_and_axis():
    """Groups along axis 0 equal groups along the last axis of the transpose; scales shape."""
    x = _data((64, 10), 5)
    q0 = Quantizer("int4", PerGroup(16, axis=0))
    q1 = Quantizer("int4", PerGroup(16))
    a, b = q0.quantize(x), q1.quantize(np.ascontiguousarray(x.T))
    assert a.scales.shape == (10, 4) and b.scales.shape == (10, 4)
    np.testing.assert_array_equal(a.codes, b.codes.T)
    assert _same(q0.fake_quantize(x), q1.fake_quantize(np.ascontiguousarray(x.T)).T.copy())


def test_stochastic_is_reproducible_and_unbiased():
    x = np.full(20000, 0.25, np.float32)  # 2.5 steps of 0.1: rounds to 2 or 3
    q = Quantizer("int8", PerTensor(), Static(0.1), rounding="stochastic", seed=11)
    a, b = q.fake_quantize(x), q.fake_quantize(x)
    assert _same(a, b)
    assert abs(float(a.mean()) - 0.25) < 0.003  # E = 0.25 (unbiased); sd of the mean ~ 0.00035
    c = Quantizer("int8", PerTensor(), Static(0.1), rounding="stochastic", seed=12).fake_quantize(x)
    assert not _same(a, c)
    assert _same(q.dequantize(q.quantize(x)), a)


def test_report_counts():
    x = np.array([[0.0, 1e-6, 1.0, -1.0, 100.0, 3.0]], np.float32)
    q = Quantizer("int8", PerTensor(), Static(0.5))
    qt = q.quantize(x)
    r = qt.report
    assert (r.n, r.nonzero, r.clipped, r.flushed) == (6, 5, 1, 1)  # 100/0.5 = 200 > 127.5; 1e-6 -> 0
    assert r.frac_clipped == pytest.approx(1 / 6) and r.frac_flushed == pytest.approx(1 / 5)
    y, rep = q.fake_quantize_report(x)
    assert rep == r and _same(y, q.fake_quantize(x))


def test_presets_all_run():
    x = _data((8, 128), 6)
    for name in list_quantizers():
        q = get_quantizer(name)
        assert str(q) == name
        assert _same(q.fake_quantize(x), q.dequantize(q.quantize(x))), name


def test_preset_overrides_and_generic_names():
    q = get_quantizer("int8_per_channel", axis=1)
    assert q.granularity == PerChannel(1)
    assert get_quantizer("int4_g128", group_size=64).granularity == PerGroup(64)
    assert get_quantizer("mxfp8_e4m3", scale_rule="ceil").scale_rule.mode == "ceil"
    assert get_quantizer("fp8_e5m2_per_token_mse").scale_rule == MSE()
    assert get_quantizer("int4_g32_p99.5").scale_rule == Percentile(99.5)
    assert get_quantizer("fp6_e3m2_per_tensor_pow2").pow2
    assert get_quantizer("int8_per_token", rounding="stochastic", seed=1).seed == 1
    assert parse_granularity("group:64") == PerGroup(64) and parse_granularity("channel:1") == PerChannel(1)
    assert parse_scale_rule("percentile(99.9)") == Percentile(99.9) and parse_scale_rule(0.5) == Static(0.5)


def test_pow2_ceil_exact():
    s = np.array([1.0, 1.5, 0.75, 2.0 ** -140, 3e-39, 2.0 ** 100 + 2.0 ** 80], np.float32)
    np.testing.assert_array_equal(pow2_ceil(s), np.float32([1, 2, 1, 2.0 ** -140, 2.0 ** -127, 2.0 ** 101]))


BAD = [
    (lambda: Quantizer("int8", PerChannel(2)).quantize(np.zeros((3, 4), np.float32)), "axis=2 is out of range"),
    (lambda: Quantizer("int4", PerGroup(128)).quantize(np.zeros((3, 100), np.float32)), "does not divide"),
    (lambda: Quantizer("int8").quantize(np.zeros((0, 4), np.float32)), "empty"),
    (lambda: Quantizer("int8", scale_rule=Static(float("inf"))), "finite"),
    (lambda: Quantizer("int8", scale_rule=Static(-1.0)), "finite and > 0"),
    (lambda: Quantizer("int8").quantize(np.array([1.0, np.inf], np.float32)), "Inf"),
    (lambda: Quantizer("int8").fake_quantize(np.array([1.0, np.nan], np.float32)), "NaN"),
    (lambda: Quantizer("fp8_e4m3", scale_rule="minmax"), "INT format"),
    (lambda: Quantizer("int8", PerTensor(), "floor"), "PerBlock"),
    (lambda: Quantizer("fp8_e4m3", PerBlock(32), "absmax"), "shared-exponent"),
    (lambda: Quantizer("int8", rounding="stochastic"), "seed"),
    (lambda: Quantizer("e8m0"), "scale format"),
    (lambda: Quantizer("fp8_e4m3", overflow="inf"), "no Inf"),
    (lambda: get_quantizer("nosuch_thing"), "unknown quantizer"),
    (lambda: get_quantizer("int8_per_tensor", axis=1), "no axis"),
    (lambda: get_quantizer("int8_per_token", colour="red"), "unknown override"),
    (lambda: Quantizer("int8", "group:0"), "positive int"),
    (lambda: Quantizer("int8", PerChannel(0), Static((1.0, 2.0))).quantize(np.ones((3, 2), np.float32)), "static scale has 2"),
    (lambda: Quantizer("int8").quantize(np.array(["a"])), "dtype"),
]


@pytest.mark.parametrize("fn,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_clearly(fn, msg):
    with pytest.raises((FmtlabError, FormatError), match=msg):
        fn()


def test_nan_input_with_nan_format_and_nan_zero():
    x = np.array([[1.0, np.nan, -3.0, 0.5]], np.float32)
    y = Quantizer("fp8_e4m3", PerToken()).fake_quantize(x)
    assert np.isnan(y[0, 1]) and y[0, 2] == -3.0
    y = Quantizer("int8", PerToken(), nan="zero").fake_quantize(x)
    assert y[0, 1] == 0.0 and y[0, 2] == -3.0


def test_float64_and_other_dtypes():
    x = _data((4, 32), 7, dtype=np.float64)
    q = get_quantizer("fp8_e4m3_per_token")
    y = q.fake_quantize(x)
    assert y.dtype == np.float64 and _same(y, q.dequantize(q.quantize(x)))
    assert q.fake_quantize(x.astype(np.float16)).dtype == np.float32
    assert q.fake_quantize(np.arange(8).reshape(2, 4)).dtype == np.float64
    assert Quantizer("int8").fake_quantize(np.float32(3.0)).shape == ()


def test_int64_input_beyond_float64_precision_raises():
    """A quantizer rounds an int64 input once: values float64 cannot hold exactly raise."""
    from fmtlab.errors import FormatError

    q = Quantizer("int8")
    with pytest.raises(FormatError, match="not exactly representable in float64"):
        q.fake_quantize(np.array([1, 2 ** 53 + 1], np.int64))
    np.testing.assert_array_equal(q.fake_quantize(np.array([1, 2 ** 53], np.int64)),
                                  q.fake_quantize(np.array([1.0, 2.0 ** 53])))


@pytest.mark.parametrize("name", ["int8", "fp8_e4m3", "int4", "dint4", "fp4_e2m1"])
@pytest.mark.parametrize("gran", ["tensor", "token"])
def test_pow2_scale_near_float32_max_raises_instead_of_inf(name, gran):
    """x = 3.4e38 with pow2 scales: s = 2**ceil(log2(x / qmax)) makes the nearest grid point
    2**128, beyond float32: a clear error, never a silent +-Inf (the same check catches
    x = float32 max under absmax, where 127 * fl(max / 127) rounds beyond max). Without pow2 the
    first row is finite, and with pow2 moderately large inputs still work."""
    x = np.float32([[3.4e38, -3.4e38, 1.0, 3.3e38], [np.finfo(np.float32).max, 2e38, -1, 0]])
    q = Quantizer(name, gran, pow2=True)
    with pytest.raises(FmtlabError, match="beyond the float32 range"):
        q.fake_quantize(x)
    with pytest.raises(FmtlabError, match="beyond the float32 range"):
        q.quantize(x)
    assert np.isfinite(Quantizer(name, gran).fake_quantize(x[:1])).all()
    y = np.float32([[3e30, -1.0], [2.0, 5.0]])
    assert np.isfinite(q.fake_quantize(y)).all() and np.isfinite(q.dequantize(q.quantize(y))).all()


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxint8", "nvfp4"])
def test_block_nan_policy(name):
    """Block quantizers: by default (nan=None) a NaN makes its whole block NaN (OCP MX: scale code
    0xFF); nan='raise' raises FormatError (it used to be ignored); nan='zero' reads NaN as 0, so
    the block equals the same block with a 0 in the NaN's place."""
    x = np.ones((2, 32), np.float32)
    x[0, 3] = np.nan
    base = get_quantizer(name)
    k = base.granularity.size  # 32 (MX) or 16 (NVFP4)
    y = base.fake_quantize(x)
    assert np.isnan(y[0, :k]).all() and np.isfinite(y[0, k:]).all() and np.isfinite(y[1]).all()
    with pytest.raises(FormatError, match="NaN"):
        get_quantizer(name, nan="raise").fake_quantize(x)
    with pytest.raises(FormatError, match="NaN"):
        get_quantizer(name, nan="raise").quantize(x)
    z = get_quantizer(name, nan="zero")
    x0 = np.nan_to_num(x, nan=0.0)
    np.testing.assert_array_equal(z.fake_quantize(x).view(np.uint32), base.fake_quantize(x0).view(np.uint32))
    np.testing.assert_array_equal(z.quantize(x).codes, base.quantize(x0).codes)
