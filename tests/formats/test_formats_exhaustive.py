"""Exhaustive tests over every code of every format of at most 16 bits.

1. Every code: decode, and encode(decode(c)) == c for every canonical code under every rounding
   mode (from float64 and from float32 where the value fits); NaN and Inf codes map to the
   canonical NaN / the Inf of their sign; no finite value has two codes (except +/-0).
2. Every midpoint between adjacent values (the overflow threshold beyond max and the one
   below min included) and both float32 and float64 neighbours of each midpoint, with the
   expected code *constructed* from the sorted table, not searched: below the midpoint -> the
   lower value, above -> the upper, on it -> the tie rule; TOWARD_ZERO -> the smaller magnitude.
   (As ml_dtypes' mxfloat tests: every code, every midpoint, both neighbours of each midpoint.)
3. Formats whose boundaries are not exact float64 midpoints (log-domain formats, irrational
   bases or dINT levels): every value, boundary and neighbour held to the oracle.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fmtlab.formats import Rounding, get_format, list_formats
from fmtlab.formats.oracle import ABOVE, BELOW, oracle_encode, oracle_table
from fmtlab.formats.strategies import boundary_points

pytestmark = pytest.mark.usefixtures("serial_numba")

EXTRA = ["e3m4_ieee", "e4m3_ieee", "e4m3_fnuz_b11", "uint16", "int16_sym", "dint16", "dint8_nz",
         "dint5_d0.25_0.5_0.75", "dint3_d", "e5m10_fn", "e5m10_fnuz", "e2m2_fin_ftz", "e3m3_fnuz_b2",
         "e1m1_fn", "e2m0_ieee", "e8m7_fin", "int2_sym", "uint2", "log8_lin", "log10",
         "log6_b1.5_nz", "log5_b1.2_lin", "dint6_d0.3_0.7"]
NAMES = list(dict.fromkeys(list_formats() + EXTRA))
FORMATS = {n: get_format(n) for n in NAMES}
assert all(f.bits <= 16 for f in FORMATS.values())


def dyadic_midpoints(fmt) -> bool:
    """True where every midpoint of adjacent values is an exact float64 (checked in tests)."""
    if fmt.family == "e8m0":
        return False  # E8M0 has its own rules (test_e8m0.py)
    if fmt.family == "log":
        return fmt.domain == "linear" and fmt.base == 2.0
    if fmt.family == "dint":
        return all(Fraction(d).denominator <= 1 << 20 for d in fmt.denormals)
    return True


CONSTRUCTED = [n for n, f in FORMATS.items() if dyadic_midpoints(f)]
BY_ORACLE = [n for n, f in FORMATS.items() if not dyadic_midpoints(f) and f.family != "e8m0"]
ALL_MODES = list(Rounding)


@pytest.mark.parametrize("name", NAMES)
def test_every_code(name):
    fmt = FORMATS[name]
    n = 1 << fmt.bits
    codes = np.arange(n)
    v = fmt.decode(codes)
    finite = np.isfinite(v)
    canon = fmt.canonical_codes
    # no finite value has two codes, except +0 / -0
    assert set(codes[finite]) == set(canon.tolist()) | ({int(c) for c in codes[finite & (v == 0)]})
    for mode in ALL_MODES:
        np.testing.assert_array_equal(fmt.encode(v[canon], mode, seed=0), canon, err_msg=f"{mode}")
        with np.errstate(over="ignore", under="ignore"):
            v32 = v[canon].astype(np.float32)
        fits = v32 == v[canon]
        np.testing.assert_array_equal(fmt.encode(v32[fits], mode, seed=0), canon[fits], err_msg=f"{mode} f32")
    nan_codes = codes[np.isnan(v)]
    if fmt.has_nan and nan_codes.size:
        got = fmt.encode(v[nan_codes])
        want = [fmt.canonical_nan_code(bool(s)) for s in np.signbit(v[nan_codes])]
        np.testing.assert_array_equal(got, want)
    if fmt.has_inf:
        neg_inf = fmt.inf_code(True)  # unsigned P3109: no -Inf, -Inf overflows to NaN
        want_neg = fmt.canonical_nan_code(True) if neg_inf is None else neg_inf
        np.testing.assert_array_equal(fmt.encode(np.array([np.inf, -np.inf])),
                                      [fmt.inf_code(False), want_neg])
        assert np.isposinf(v[fmt.inf_code(False)])
        assert np.isneginf(v[neg_inf]) if fmt.signed else neg_inf is None


def expected_codes(fmt, t, idx: np.ndarray, x: np.ndarray, mode: Rounding) -> np.ndarray:
    """Codes of table entries ``idx`` for inputs ``x``: virtual entries become the overflow
    code (saturation under TOWARD_ZERO), zero becomes -0 for negative x where the format has it."""
    codes = np.asarray(t.codes)[idx].astype(np.int64)
    ovf_pol = fmt.default_overflow.value if mode is not Rounding.TOWARD_ZERO else "saturate"

    def ovf(neg: bool) -> int:
        if ovf_pol == "saturate":
            return fmt.max_code(neg)
        if ovf_pol == "inf" and fmt.inf_code(neg) is not None:  # unsigned P3109: no -Inf
            return fmt.inf_code(neg)
        return fmt.canonical_nan_code(neg)

    codes[codes == ABOVE] = ovf(False)
    codes[codes == BELOW] = ovf(True)
    vals = np.asarray(t.vals)[idx]
    if t.neg_zero_code is not None:
        codes[(vals == 0) & (x < 0)] = t.neg_zero_code
    return codes


@pytest.mark.parametrize("name", CONSTRUCTED)
def test_every_midpoint_and_neighbours(name):
    fmt = FORMATS[name]
    t = oracle_table(fmt)
    vals = np.asarray(t.vals)
    even = np.asarray(t.even)
    lo, hi = vals[:-1], vals[1:]
    i_lo = np.arange(lo.size)
    i_hi = i_lo + 1
    m = lo / 2 + hi / 2
    assert np.all((lo < m) & (m < hi)) and np.array_equal(m - lo, hi - m)
    for k in range(0, m.size, 97):  # spot-check exactness in rational arithmetic
        assert Fraction(m[k]) * 2 == Fraction(lo[k]) + Fraction(hi[k])
    smaller = np.where(np.abs(lo) < np.abs(hi), i_lo, i_hi)
    larger = i_lo + i_hi - smaller
    tie_even = np.where(even[i_lo] != even[i_hi], np.where(even[i_lo], i_lo, i_hi), smaller)
    checked = 0
    for dt in (np.float32, np.float64):
        with np.errstate(over="ignore"):
            mm = m.astype(dt)
        ok = (mm.astype(np.float64) == m) & np.isfinite(mm)
        mid = mm[ok]
        below = np.nextafter(mid, dt(-np.inf))
        above = np.nextafter(mid, dt(np.inf))
        L, H = lo[ok], hi[ok]
        assert np.all((L < below) & (above < H)), "neighbours must stay strictly inside the interval"
        il, ih, sm, lg, te = i_lo[ok], i_hi[ok], smaller[ok], larger[ok], tie_even[ok]
        x = np.concatenate([below, mid, above])
        cases = {
            Rounding.NEAREST_EVEN: np.concatenate([il, te, ih]),
            Rounding.NEAREST_AWAY: np.concatenate([il, lg, ih]),
            Rounding.TOWARD_ZERO: np.concatenate([sm, sm, sm]),
        }
        for mode, idx in cases.items():
            want = expected_codes(fmt, t, idx, x, mode)
            got = fmt.encode(x, mode).astype(np.int64)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, f"{fmt} {mode} {dt.__name__}: " + ", ".join(
                f"{x[b]!r}: got {got[b]:#x} want {want[b]:#x}" for b in bad[:6])
            checked += x.size
    assert checked >= 3 * 3 * (len(t.vals) - 1)


@pytest.mark.parametrize("name", BY_ORACLE)
def test_every_boundary_vs_oracle(name):
    """Values, boundaries (arithmetic and geometric midpoints, the under/overflow thresholds)
    and both neighbours of each, in float32 and float64, against the oracle with the formats'
    float64 boundaries (for float32 inputs to log formats these equal the exact ones:
    test_oracle.test_log_float64_boundaries_never_split_float32)."""
    fmt = FORMATS[name]
    for dt, boundaries in ((np.float32, "format"), (np.float64, "format")):
        x = boundary_points(fmt, dt)
        x = x[~np.isnan(x)]
        modes = ALL_MODES if fmt.bits <= 8 else [Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO]
        for mode in modes:
            rand = np.random.default_rng(5).random(x.size)
            want = oracle_encode(fmt, x, mode, rand=rand, boundaries=boundaries)
            got = fmt.encode(x, mode, seed=5)
            np.testing.assert_array_equal(got, want, err_msg=f"{fmt} {mode} {dt.__name__}")


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.bits <= 8 and n in CONSTRUCTED])
def test_small_formats_boundaries_vs_oracle(name):
    """Formats of at most 8 bits: the same boundary points through the oracle, all modes,
    all overflow policies (a second, independent route to the constructed expectations)."""
    fmt = FORMATS[name]
    x = boundary_points(fmt, np.float64)
    x = x[~np.isnan(x)]
    policies = ["saturate"] + (["inf"] if fmt.has_inf else []) + (["nan"] if fmt.has_nan else [])
    for mode in ALL_MODES:
        for pol in policies:
            rand = np.random.default_rng(6).random(x.size)
            np.testing.assert_array_equal(fmt.encode(x, mode, pol, seed=6),
                                          oracle_encode(fmt, x, mode, pol, rand=rand),
                                          err_msg=f"{fmt} {mode} {pol}")
