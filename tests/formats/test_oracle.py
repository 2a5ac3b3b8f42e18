"""The reference oracle itself: held against brute force, ml_dtypes and torch, and its spec.

The oracle (fmtlab.formats.oracle) is what the fast kernels are held to, so it is checked here
by means that share nothing with it: an O(table) brute-force search for the nearest value in
exact integer arithmetic, and the peer libraries' casts on thousands of boundary inputs.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import ml_dtypes
import numpy as np
import pytest
import torch

from fmtlab.errors import FormatError
from fmtlab.formats import get_format
from fmtlab.formats.oracle import oracle_encode, oracle_table
from fmtlab.formats.strategies import boundary_points
from peers import e8m0_quirk_mask

SCALE = 1200  # every finite float64 times 2**SCALE is an integer


def exact_int(v: float) -> int:
    f = Fraction(v) * (1 << SCALE)
    assert f.denominator == 1
    return int(f)


# linear-domain formats of at most 8 bits: standard and generic
BRUTE_LINEAR = ["int2", "int3", "int4", "int8", "uint4", "uint8", "int4_sym", "int8_sym", "uint3",
                "int3_sym", "dint4", "dint8", "dint4_nz", "dint5_d0.25_0.5_0.75_nz", "dint3_d",
                "fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp6_e3m2", "fp6_e2m3",
                "fp4_e2m1", "e2m1_ieee", "e3m2_fnuz_b2_ftz", "e1m2_fn", "e4m0_fin", "e2m5_ieee_b5",
                "log4_lin", "log5_b1.5_lin", "log4_b1.4142135623730951_lin"]
BRUTE_LOG = ["log4", "log8", "log4_b1.4142135623730951", "log6_b1.2", "log5_b3.0_nz"]


@lru_cache(maxsize=None)
def table_ints(fmt) -> tuple[tuple[float, int], ...]:
    return tuple((v, exact_int(v)) for v in oracle_table(fmt).vals)


def brute_candidates(fmt, x: float, log_domain: bool) -> set[float]:
    """Every table value (virtual ends included) at minimal distance from x."""
    X = exact_int(x)
    tab = table_ints(fmt)
    if log_domain:  # distance ratio max(|X|/|V|, |V|/|X|) as (num, den), same sign only
        same = [(v, abs(V)) for v, V in tab if v != 0 and (v > 0) == (x > 0)]
        ratios = [(max(abs(X), V), min(abs(X), V)) for _, V in same]
        best = min(ratios, key=lambda r: Fraction(r[0], r[1]))
        return {v for (v, _), r in zip(same, ratios) if r[0] * best[1] == best[0] * r[1]}
    d = [abs(X - V) for _, V in tab]
    m = min(d)
    return {v for (v, _), dv in zip(tab, d) if dv == m}


@pytest.mark.parametrize("name", BRUTE_LINEAR)
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away"])
def test_oracle_is_nearest_by_brute_force(name, rounding):
    """The oracle's value is at minimal |x - v| over the whole table (ties: one of the tied);
    a virtual (overflow) nearest value gives the saturated code."""
    fmt = get_format(name)
    t = oracle_table(fmt)
    pts = boundary_points(fmt, np.float64)
    pts = pts[np.isfinite(pts) & (np.abs(pts) <= 2 * max(abs(t.vals[0]), t.vals[-1]))]
    got = oracle_encode(fmt, pts, rounding, overflow="saturate")
    vals = fmt.decode(got)
    for x, v, c in zip(pts.tolist(), vals.tolist(), got.tolist()):
        cands = brute_candidates(fmt, x, log_domain=False)
        if t.vals[-1] in cands or t.vals[0] in cands:
            assert v in cands or c in (t.codes[1], t.codes[-2]), (x, v, cands)
        else:
            assert v in cands, (x, v, cands)
        virtual = t.vals[-1] in cands or t.vals[0] in cands
        if len(cands) == 2 and rounding == "nearest_away" and not virtual:
            assert abs(v) == max(abs(a) for a in cands), (x, v, cands)


@pytest.mark.parametrize("name", BRUTE_LOG)
def test_log_oracle_is_nearest_in_log_domain_by_brute_force(name):
    """Above the underflow threshold the log-domain oracle picks the level at minimal
    |log|x| - log|v||; below it, zero."""
    fmt = get_format(name)
    pts = boundary_points(fmt, np.float64)
    pts = pts[np.isfinite(pts) & (np.abs(pts) <= 4)]
    got = fmt.decode(oracle_encode(fmt, pts, overflow="saturate"))
    thr = fmt.underflow_threshold
    for x, v in zip(pts.tolist(), got.tolist()):
        if abs(x) < thr:
            assert v == 0, (x, v)
        elif abs(x) > thr:
            cands = brute_candidates(fmt, x, log_domain=True)
            t = oracle_table(fmt)
            if t.vals[-1] in cands or t.vals[0] in cands:
                assert abs(v) == 1.0, (x, v)
            else:
                assert v in cands, (x, v, cands)


def test_oracle_vs_ml_dtypes_on_boundaries(ml_pair):
    """The oracle reproduces ml_dtypes' casts on a few thousand float32 boundary inputs (leaving
    out the inputs of a version quirk that peers.py detects at run time)."""
    fmt, dt = ml_pair
    pts = boundary_points(fmt, np.float32)
    pts = pts[~np.isnan(pts)]
    pts = pts[:: max(1, pts.size // 3000)]
    if fmt.family == "e8m0":
        pts = pts[~e8m0_quirk_mask(pts)]
    with np.errstate(over="ignore"):
        theirs = pts.astype(dt).view(np.uint8 if fmt.bits <= 8 else np.uint16)
    np.testing.assert_array_equal(oracle_encode(fmt, pts), theirs)


@pytest.mark.parametrize("name,dt,overflow", [("fp8_e4m3", torch.float8_e4m3fn, "saturate"),
                                              ("fp8_e5m2", torch.float8_e5m2, None),
                                              ("fp8_e4m3fnuz", torch.float8_e4m3fnuz, None),
                                              ("fp8_e5m2fnuz", torch.float8_e5m2fnuz, None)])
def test_oracle_vs_torch_on_boundaries(name, dt, overflow):
    fmt = get_format(name)
    pts = boundary_points(fmt, np.float32)
    pts = np.ascontiguousarray(pts[~np.isnan(pts)])
    theirs = torch.from_numpy(pts).to(dt).view(torch.uint8).numpy()
    np.testing.assert_array_equal(oracle_encode(fmt, pts, overflow=overflow), theirs)


@pytest.mark.parametrize("name,below,above", [
    ("fp8_e4m3", -480.0, 480.0), ("fp8_e5m2", -65536.0, 65536.0), ("fp8_e4m3fnuz", -256.0, 256.0),
    ("fp4_e2m1", -8.0, 8.0), ("fp6_e2m3", -8.0, 8.0), ("fp6_e3m2", -32.0, 32.0),
    ("fp16", -65536.0, 65536.0), ("bf16", -2.0 ** 128, 2.0 ** 128), ("e1m2_fn", -3.5, 3.5),
    ("int8", -129.0, 128.0), ("int8_sym", -128.0, 128.0), ("uint4", -1.0, 16.0),
    ("dint4", -7.0, 7.0), ("log4", -2.0, 2.0), ("log4_b1.5", -1.5, 1.5), ("e8m0", 0.0, 2.0 ** 128)])
def test_virtual_values(name, below, above):
    """The virtual value beyond each end of the table (what overflow rounds toward)."""
    t = oracle_table(get_format(name))
    assert (t.vals[0], t.vals[-1]) == (below, above)


def test_virtual_tie_flags():
    """fp8_e4m3's max 448 is code 0x7E (even), so 464 (the tie with 480) stays at 448;
    fp8_e5m2's max 57344 is 0x7B (odd), so 61440 rounds to the virtual 65536: overflow."""
    e4 = oracle_table(get_format("fp8_e4m3"))
    e5 = oracle_table(get_format("fp8_e5m2"))
    assert e4.even[-2] and not e4.even[-1]
    assert not e5.even[-2] and e5.even[-1]


def test_exact_and_format_boundaries_agree_off_log():
    """Outside log formats the float64 midpoints are exact, so both boundary modes agree."""
    for name in ["fp8_e4m3", "fp16", "bf16", "int8", "dint8", "e4m3_fnuz_b11", "log4_lin"]:
        fmt = get_format(name)
        pts = boundary_points(fmt, np.float64)
        pts = pts[~np.isnan(pts)][:: 7]
        np.testing.assert_array_equal(oracle_encode(fmt, pts, boundaries="exact"),
                                      oracle_encode(fmt, pts, boundaries="format"))


@pytest.mark.parametrize("name", ["log4", "log8", "log4_b1.4142135623730951", "log8_b1.4142135623730951",
                                  "log8_b1.189207115002721", "log8_b1.189207115002721_lin",
                                  "log4_b1.4142135623730951_lin", "log10", "log11_lin"])
def test_log_float64_boundaries_never_split_float32(name):
    """logfmt.py's boundaries are float64 numbers (fl(sqrt(fl(L*U))) or fl(L/2 + U/2)); the
    exact geometric mean / midpoint of two table values is usually irrational or needs more
    bits. No float32 lies between the two (or on the float64 one), so for float32 inputs the
    format's boundaries give the exactly correct answer."""
    fmt = get_format(name)
    t = oracle_table(fmt)
    pos = [v for v in t.vals if v > 0]
    for a, b in zip(pos[:-1], pos[1:]):
        m = math.sqrt(a * b) if fmt.domain == "log" else a / 2 + b / 2
        m32 = np.float32(m)
        for c in (np.nextafter(m32, np.float32(0)), m32, np.nextafter(m32, np.float32(np.inf))):
            X = Fraction(float(c))
            exact = X * X - Fraction(a) * Fraction(b) if fmt.domain == "log" else X - (Fraction(a) + Fraction(b)) / 2
            fmt64 = X - Fraction(m)
            assert (exact > 0) - (exact < 0) == (fmt64 > 0) - (fmt64 < 0), (a, b, float(c))


def test_log_float64_boundary_deviation_example():
    """A float64 input exactly on logfmt.py's float64 boundary: fl(2**-1.5) = 0.3535533905932738
    lies above the true geometric mean of 0.25 and 0.5 (2**-1.5 is irrational), so the exact
    answer is 0.5; with the format's float64 boundary it is a tie, which goes to the even
    exponent k = 2, i.e. 0.25. The kernels follow logfmt.py ("format" boundaries)."""
    fmt = get_format("log4")
    x = np.array([math.sqrt(0.25 * 0.5)])
    assert x[0] == 0.3535533905932738 and Fraction(x[0]) ** 2 > Fraction(1, 8)
    exact = fmt.decode(oracle_encode(fmt, x, boundaries="exact"))[0]
    fmt_b = fmt.decode(oracle_encode(fmt, x, boundaries="format"))[0]
    assert (exact, fmt_b) == (0.5, 0.25)
    assert fmt.decode(fmt.encode(x))[0] == fmt_b
    x32 = x.astype(np.float32)  # float32 inputs never sit on such a boundary
    assert fmt.encode(x32)[0] == oracle_encode(fmt, x32, boundaries="exact")[0]


def test_oracle_argument_errors():
    fmt = get_format("fp8_e4m3")
    with pytest.raises(ValueError, match="rand"):
        oracle_encode(fmt, [1.0], "stochastic")
    with pytest.raises(ValueError, match="draws"):
        oracle_encode(fmt, [1.0, 2.0], "stochastic", rand=[0.5])
    with pytest.raises(ValueError, match="boundaries"):
        oracle_encode(fmt, [1.0], boundaries="approx")
    with pytest.raises(FormatError, match="no Inf"):
        oracle_encode(fmt, [1.0], overflow="inf")
    with pytest.raises(FormatError, match="no NaN"):
        oracle_encode(get_format("int8"), [1.0], overflow="nan")
    with pytest.raises(FormatError, match="NaN"):
        oracle_encode(get_format("fp4_e2m1"), [np.nan])
    with pytest.raises(ValueError, match="rounding"):
        oracle_encode(fmt, [1.0], "up")


def test_oracle_input_types_and_shapes():
    fmt = get_format("int8")
    assert oracle_encode(fmt, 3).shape == () and oracle_encode(fmt, 3) == 3
    np.testing.assert_array_equal(oracle_encode(fmt, np.array([[1, -1]], np.int16)), [[1, 255]])
    np.testing.assert_array_equal(oracle_encode(fmt, np.array([2.5], np.float16)), [2])
    np.testing.assert_array_equal(oracle_encode(fmt, np.array([2.5], ml_dtypes.bfloat16)), [2])
    assert oracle_encode(get_format("fp16"), [1.0]).dtype == np.uint16


def test_non_dyadic_linear_boundary_deviation_example():
    """dINT levels 0.3 and 0.7 (float64 0.29999999999999998890 and 0.69999999999999995559) have
    the exact midpoint 0.49999999999999997224, but fl(0.3/2 + 0.7/2) == 0.5. So x = 0.5 is
    nearer to 0.7 (exact oracle) while the kernels see a tie at their float64 boundary and
    give the smaller magnitude 0.3 (neither level is even). Dyadic levels (0.5, 0.25, ...)
    never hit this."""
    fmt = get_format("dint6_d0.3_0.7")
    x = np.array([0.5], np.float32)
    assert Fraction(0.3) + Fraction(0.7) < 1
    assert fmt.decode(oracle_encode(fmt, x, boundaries="exact"))[0] == 0.7
    assert fmt.decode(oracle_encode(fmt, x, boundaries="format"))[0] == 0.3
    assert fmt.decode(fmt.encode(x))[0] == 0.3
