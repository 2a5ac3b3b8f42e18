"""Fast element kernels (fmtlab.formats.kernels / _fast_kernels) against the table kernel.

The table kernel ``fmt.encode_table`` is the reference (itself held to the pure-Python oracle and to
ml_dtypes/torch by test_formats_*). Invariant of every test here: same inputs, same conventions
(and, for STOCHASTIC, the same draws) give the same codes, compared as integers, and the fused
fake-quant gives exactly decode(codes) * s (float bit patterns, NaN compared as NaN).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtlab.errors import FormatError
from fmtlab.formats import NanInput, Overflow, Rounding, get_format
from fmtlab.formats import _fast_kernels as K
from fmtlab.formats import kernels as KK
from fmtlab.formats import strategies as fst

ROUNDINGS = list(Rounding)
NAMED = ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1",
         "fp16", "bf16", "int8", "int4", "int4_sym", "uint8", "int16", "dint4", "dint8", "log4",
         "log4_b1.4142135623730951", "log8", "log4_lin"]
EXOTIC = ["e4m3_fn_ftz", "e8m7_ieee_b100", "e8m3_fn", "e8m1_fin", "e8m7_ieee_ftz", "e3m0_ieee", "e5m2_fnuz_b3", "e2m3_fin_ftz",
          "dint4_d0.25_0.5", "dint5_d", "dint6_d0.125_0.25_0.5", "dint4_d0.3", "log5_b1.1",
          "log3_u0.1", "log4_nz", "log4_u0.0123", "log3_b1.3_lin", "dint4_nz", "uint3", "int2"]


def _nan_policy(fmt) -> NanInput:
    return NanInput.RAISE if fmt.has_nan else NanInput.ZERO


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, except that any NaN equals any NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    ui = np.uint32 if a.dtype == np.float32 else np.uint64
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(ui), b[~nb].view(ui)))


def _check(fmt, x, rounding, overflow=None, seed=0):
    overflow = fmt.default_overflow if overflow is None else Overflow.parse(overflow)
    nan = _nan_policy(fmt)
    rand = np.random.default_rng(seed).random(x.size) if rounding is Rounding.STOCHASTIC else None
    ref = fmt.encode_table(x, rounding, overflow, nan, rand).reshape(x.shape)
    got = KK.encode_fast(fmt, x, rounding, overflow, nan, rand).reshape(x.shape)
    bad = np.flatnonzero(ref != got)
    assert bad.size == 0, (f"{fmt.name} {rounding.value} {x.dtype}: x={x.reshape(-1)[bad[:4]]!r} "
                           f"table={ref[bad[:4]]} fast={got[bad[:4]]}")
    q = KK.fq_scaled(fmt, x, KK.Rows(x.size, 1), np.ones(1), pow2=True, rounding=rounding,
                     overflow=overflow, nan=nan, rand=rand)
    assert _same_floats(q, fmt.decode(ref, dtype=x.dtype)), f"{fmt.name} {rounding.value} fused"


def _structured_f32(exp_lo: int = 0, exp_hi: int = 255) -> np.ndarray:
    """Every float32 with exponent field in [exp_lo, exp_hi], both signs, the top 9 mantissa bits
    exhaustive and the low 14 bits in {0, 1, half-1, half, half+1, all-ones}: every tie, its
    neighbours and every sticky pattern of formats with <= 9 mantissa bits."""
    e = np.arange(exp_lo, exp_hi + 1, dtype=np.uint32)
    top = np.arange(1 << 9, dtype=np.uint32) << 14
    low = np.array([0, 1, 0x1FFF, 0x2000, 0x2001, 0x3FFF], dtype=np.uint32)
    bits = (e[:, None, None] << 23) | top[None, :, None] | low[None, None, :]
    bits = bits.reshape(-1)
    return np.concatenate([bits, bits | 0x80000000]).view(np.float32)


@pytest.mark.parametrize("name", NAMED + EXOTIC)
def test_boundary_points_all_roundings(name):
    """Every value, midpoint and their float32/float64 neighbours of each format (the strategies'
    boundary set), every rounding mode, both input precisions."""
    fmt = get_format(name)
    for dt in (np.float32, np.float64):
        x = fst.boundary_points(fmt, dt)
        if not fmt.has_nan:
            x = x[~np.isnan(x)]
        for r in ROUNDINGS:
            _check(fmt, x, r)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp4_e2m1", "bf16", "int8",
                                  "dint4", "log4", "log8", "e4m3_fn_ftz"])
def test_structured_exhaustive_float32(name):
    """~1.5M float32 patterns over the whole exponent range (structured exhaustive, see
    _structured_f32), NEAREST_EVEN/AWAY/TOWARD_ZERO."""
    fmt = get_format(name)
    x = _structured_f32()
    if not fmt.has_nan:
        x = x[~np.isnan(x)]
    for r in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.TOWARD_ZERO):
        _check(fmt, x, r)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"])
def test_every_float32_near_the_top(name):
    """Exhaustive: every float32 from max/2 to the overflow threshold's binade (both signs), where
    saturation, Inf and NaN policies meet."""
    fmt = get_format(name)
    e_hi = int(np.frexp(fmt.max)[1]) + 127  # exponent field of the binade above max
    lo = np.uint32((e_hi - 2) << 23)
    hi = np.uint32((e_hi + 1) << 23)
    bits = np.arange(lo, hi, 7, dtype=np.uint32)
    x = np.concatenate([bits, bits | 0x80000000]).view(np.float32)
    for r in (Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO):
        for ov in {None, Overflow.SATURATE}:
            _check(fmt, x, r, ov)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "bf16", "fp16"])
def test_overflow_policies(name):
    fmt = get_format(name)
    x = fst.boundary_points(fmt, np.float32)
    for ov in (Overflow.SATURATE, Overflow.NAN if fmt.has_nan else None, Overflow.INF if fmt.has_inf else None):
        if ov is not None:
            for r in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.STOCHASTIC):
                _check(fmt, x, r, ov)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=fst.formats(families=["minifloat", "int", "dint", "log"], max_bits=12),
       rounding=fst.roundings(), seed=fst.seeds(), data=st.data())
def test_hypothesis_random_formats(fmt, rounding, seed, data):
    """Random members of every family, random boundary-heavy inputs, every rounding mode."""
    x = data.draw(fst.input_arrays(fmt, 32 if data.draw(st.booleans()) else 64))
    if not fmt.has_nan:
        x = x[~np.isnan(x)]
    if x.size:
        _check(fmt, np.ascontiguousarray(x), rounding, seed=seed)


def test_stochastic_same_draws_same_result():
    fmt = get_format("fp8_e4m3")
    x = (np.random.default_rng(1).standard_normal(4096) * 3).astype(np.float32)
    a = fmt.quantize(x, "stochastic", seed=7)
    b = fmt.quantize(x, "stochastic", seed=7)
    c = fmt.quantize(x, "stochastic", seed=8)
    assert _same_floats(a, b) and not _same_floats(a, c)


def test_nan_without_nan_code_raises_or_zeroes():
    for name in ("int8", "dint4", "log4", "fp4_e2m1"):
        fmt = get_format(name)
        x = np.array([1.0, np.nan, -2.0], np.float32)
        with pytest.raises(FormatError, match="NaN"):
            fmt.quantize(x)
        with pytest.raises(FormatError, match="NaN"):
            fmt.encode(x)
        assert fmt.quantize(x, nan="zero")[1] == 0.0


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8", "dint4", "log4", "fp6_e2m3", "log8", "bf16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaled_layouts_match_table_of_x_over_s(name, dtype):
    """Row and column layouts: codes == table(x / s) with x / s in x's precision, fused ==
    decode(codes) * s (float64 product rounded once), for power-of-two and other scales."""
    fmt = get_format(name)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((24, 40)) * rng.choice([0.01, 1, 100], size=(24, 1))).astype(dtype)
    x[0, :3] = [0.0, -0.0, fmt.max]
    nan = _nan_policy(fmt)
    ov = fmt.default_overflow
    for pow2 in (False, True):
        s_rows = np.abs(rng.standard_normal(24)).astype(np.float32) + np.float32(0.01)
        s_cols = np.abs(rng.standard_normal(40)).astype(np.float32) + np.float32(0.01)
        if pow2:
            s_rows = np.ldexp(1.0, np.round(np.log2(s_rows)).astype(int)).astype(np.float32)
            s_cols = np.ldexp(1.0, np.round(np.log2(s_cols)).astype(int)).astype(np.float32)
        for layout, s, sb in ((KK.Rows(40, 24), s_rows, s_rows[:, None]),
                              (KK.Cols(40), s_cols, s_cols[None, :]),
                              (KK.Rows(8, 5), s_rows[:5], np.tile(s_rows[:5], 24)[:, None])):
            xx = x.reshape(-1, 8) if layout == KK.Rows(8, 5) else x
            y = (xx / sb.astype(dtype)).astype(dtype)
            ref = fmt.encode_table(y, Rounding.NEAREST_EVEN, ov, nan, None).reshape(xx.shape)
            got = KK.encode_scaled(fmt, xx, layout, s, pow2=pow2, overflow=ov, nan=nan)
            np.testing.assert_array_equal(got, ref)
            fq = KK.fq_scaled(fmt, xx, layout, s, pow2=pow2, overflow=ov, nan=nan)
            want = (fmt.decode(ref) * sb.astype(np.float64)).astype(dtype)
            assert _same_floats(fq, want), (name, layout, pow2)


def test_zero_points_shift_the_int_grid():
    """INT with zero points: code = clip(rint(x / s), qmin - z, qmax - z) + z; value (q - z) * s."""
    fmt = get_format("uint8")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 50)).astype(np.float32) * 3
    s = np.float32([0.02, 0.05, 0.1, 0.01, 0.2, 0.03])
    z = np.array([128, 10, 255, 0, 77, 128], np.float32)
    y = x / s[:, None]
    q = np.clip(np.rint(y), 0 - z[:, None], 255 - z[:, None]) + z[:, None]
    got = KK.encode_scaled(fmt, x, KK.Rows(50, 6), s, z)
    np.testing.assert_array_equal(got, q.astype(np.uint8))
    fq = KK.fq_scaled(fmt, x, KK.Rows(50, 6), s, z)
    assert _same_floats(fq, ((q - z[:, None]) * s[:, None].astype(np.float64)).astype(np.float32))


def test_kernel_choice_per_family():
    """Which parameter tuple (and so which core) each format gets."""
    pick = {n: type(KK.params(get_format(n), Rounding.NEAREST_EVEN, get_format(n).default_overflow,
                              NanInput.RAISE).P).__name__
            for n in ("fp8_e4m3", "bf16", "e8m7_ieee_b100", "int8", "dint4", "dint8", "dint4_d0.3", "log4",
                      "log4_b1.4142135623730951", "log8", "log6_b1.01")}
    assert pick == {"fp8_e4m3": "MF", "bf16": "MF1", "e8m7_ieee_b100": "MFX", "int8": "IN", "dint4": "TBD32",
                    "dint8": "TBD32", "dint4_d0.3": "TBD", "log4": "TBS32",
                    "log4_b1.4142135623730951": "TBS", "log8": "TBL", "log6_b1.01": "TB"}
    assert KK.params(get_format("e8m0"), Rounding.NEAREST_EVEN, Overflow.NAN, NanInput.RAISE) is None


def test_log_generic_paths_match_table():
    """The generic table path (bases too close to 1 for the estimate) and the float64 paths."""
    for name in ("log6_b1.01", "log7_b1.05", "log8"):
        fmt = get_format(name)
        for dt in (np.float32, np.float64):
            x = fst.boundary_points(fmt, dt)
            x = x[~np.isnan(x)]
            for r in ROUNDINGS:
                _check(fmt, x, r)


def test_empty_and_shapes():
    fmt = get_format("fp8_e4m3")
    assert fmt.quantize(np.zeros((0, 3), np.float32)).shape == (0, 3)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert fmt.quantize(x).shape == (2, 3, 4)
    assert K.CHUNK % 32 == 0  # block kernels group whole blocks per task
