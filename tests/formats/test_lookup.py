"""LookupFormat: any finite sorted value set, codes in value order (formats/lookup.py).

Invariants (each test says which it holds):
- every code decodes to its table value and encodes back to itself under every rounding mode;
- every rounding boundary (midpoint of adjacent values, the virtual ends included) and both of
  its float32 and float64 neighbours encode exactly as the oracle says, for every mode;
- ties go to the even code (NEAREST_EVEN) or the larger magnitude (NEAREST_AWAY);
- beyond the ends (and +/-Inf) results saturate; there is no Inf/NaN policy to ask for;
- NaN inputs raise unless nan="zero"; -0.0 is +0; unused codes decode to NaN and never appear;
- bad value sets raise FormatError naming the problem.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FormatError
from fmtlab.formats import LookupFormat, Rounding, get_format, register_format, unregister_format
from fmtlab.formats import strategies as fst
from fmtlab.formats.lookup import IQ4NL_VALUES, NF4_VALUES
from fmtlab.formats.oracle import oracle_encode

DET = [r for r in Rounding if r is not Rounding.STOCHASTIC]
ODD5 = LookupFormat([-3.0, -1.0, 0.0, 0.5, 4.0], name="odd5")  # 3 bits, codes 5..7 unused
POS = LookupFormat([0.25, 1.0, 1.5, 7.0], name="pos4")            # no zero, unsigned
FORMATS = [get_format("nf4"), get_format("iq4nl"), ODD5, POS]


def test_builtin_tables():
    """nf4 and iq4nl hold the published values in code order (sources in lookup.py)."""
    nf4, iq = get_format("nf4"), get_format("iq4nl")
    assert nf4.bits == iq.bits == 4 and nf4.family == "lookup"
    np.testing.assert_array_equal(nf4.values(), NF4_VALUES)
    np.testing.assert_array_equal(iq.values(), IQ4NL_VALUES)
    assert (nf4.min, nf4.max, nf4.zero_code) == (-1.0, 1.0, 7)
    assert (iq.min, iq.max, iq.zero_code) == (-127.0, 113.0, None)
    assert not (nf4.has_nan or nf4.has_inf or nf4.has_negative_zero)
    assert nf4.nan_codes == nf4.inf_codes == frozenset() and ODD5.unused_codes == {5, 6, 7}


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_every_code_round_trips(fmt, rounding):
    n = len(fmt.levels)
    codes = np.arange(n)
    v = fmt.decode(codes)
    np.testing.assert_array_equal(v, fmt.levels)
    for dt in (np.float64, np.float32):
        if np.all(v.astype(dt) == v):
            np.testing.assert_array_equal(fmt.encode(v.astype(dt), rounding, seed=1), codes)
    assert np.isnan(fmt.decode(np.arange(n, 1 << fmt.bits))).all()


def _boundary_inputs(fmt) -> np.ndarray:
    g = fmt.grid.vals  # virtual ends included
    mids = g[:-1] / 2 + g[1:] / 2
    pts = [np.concatenate([g, mids])]
    for dt in (np.float64, np.float32):
        a = pts[0].astype(dt)
        pts += [np.nextafter(a, dt(np.inf)).astype(np.float64), np.nextafter(a, dt(-np.inf)).astype(np.float64)]
    x = np.concatenate(pts + [[0.0, -0.0, 1e300, -1e300, np.inf, -np.inf]])
    return x


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("rounding", DET)
def test_every_midpoint_and_neighbours_vs_oracle(fmt, rounding):
    """Exhaustive over the boundaries: kernel codes == oracle codes (float64 and float32 input)."""
    x = _boundary_inputs(fmt)
    np.testing.assert_array_equal(fmt.encode(x, rounding), oracle_encode(fmt, x, rounding, boundaries="format"))
    np.testing.assert_array_equal(fmt.encode(x, rounding), oracle_encode(fmt, x, rounding))  # exact midpoints
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    np.testing.assert_array_equal(fmt.encode(x32, rounding), oracle_encode(fmt, x32.astype(np.float64), rounding))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_stochastic_vs_oracle(fmt):
    x = _boundary_inputs(fmt)
    rand = np.random.default_rng(7).random(x.size)
    np.testing.assert_array_equal(fmt.encode(x, "stochastic", seed=7),
                                  oracle_encode(fmt, x, "stochastic", rand=rand))


NF4 = get_format("nf4")
M78 = NF4_VALUES[7] / 2 + NF4_VALUES[8] / 2
M89 = NF4_VALUES[8] / 2 + NF4_VALUES[9] / 2
M56 = NF4_VALUES[5] / 2 + NF4_VALUES[6] / 2


@pytest.mark.parametrize("x,rounding,code,why", [
    (M78, "nearest_even", 8, "tie 0 (code 7) / 0.0796 (code 8): even code 8"),
    (M89, "nearest_even", 8, "tie codes 8/9: even code 8"),
    (M89, "nearest_away", 9, "tie codes 8/9: larger magnitude"),
    (M56, "nearest_even", 6, "tie codes 5/6 (negative): even code 6"),
    (M56, "nearest_away", 5, "tie codes 5/6: larger magnitude -0.1848"),
    (M56, "toward_zero", 6, "toward zero: -0.0911"),
    (np.nextafter(M89, 0), "nearest_away", 8, "just below the tie: nearer 8"),
    (1.1, "nearest_even", 15, "above max: saturates"),
    (1.2, "nearest_even", 15, "beyond the overflow threshold 1.1519: saturates"),
    (-7.0, "nearest_even", 0, "below min: saturates to -1"),
    (np.inf, "nearest_even", 15, "+Inf saturates"),
    (-np.inf, "toward_zero", 0, "-Inf saturates"),
    (-0.0, "nearest_even", 7, "-0 is +0 (no -0 code)"),
    (-0.01, "nearest_even", 7, "small negatives round to the zero code"),
])
def test_labelled_nf4(x, rounding, code, why):
    assert int(NF4.encode(np.array([x]), rounding)[0]) == code, why
    assert int(oracle_encode(NF4, np.array([x]), rounding)[0]) == code, why


@pytest.mark.parametrize("x,code", [(0.5, 8), (-4.5, 8), (-9.9, 8), (-10.0, 7), (1.0, 8), (-0.0, 8)])
def test_toward_zero_across_zero_without_zero(x, code):
    """iq4nl has no zero: between -10 (code 7) and 1 (code 8) truncation takes the smaller
    magnitude (1), never the other sign's larger one."""
    f = get_format("iq4nl")
    assert int(f.encode(np.array([x]), "toward_zero")[0]) == code
    assert int(oracle_encode(f, np.array([x]), "toward_zero")[0]) == code


def test_nan_and_policies():
    with pytest.raises(FormatError, match="no NaN code"):
        NF4.encode([1.0, np.nan])
    assert NF4.encode([np.nan], nan="zero")[0] == 7
    iq = get_format("iq4nl")  # no zero: nan="zero" reads NaN as 0.0, which rounds to 1 (code 8)
    assert iq.encode([np.nan, 0.0], nan="zero").tolist() == [8, 8]
    assert iq.quantize([np.nan], nan="zero").tolist() == [1.0]
    assert oracle_encode(iq, [np.nan], nan="zero")[0] == 8
    with pytest.raises(FormatError, match="no Inf"):
        NF4.encode([1.0], overflow="inf")
    with pytest.raises(FormatError, match="no NaN"):
        NF4.encode([1.0], overflow="nan")


@pytest.mark.parametrize("values,match", [
    ([], "empty"), ([1.0], "at least 2"), ([2.0, 1.0], "sorted ascending"),
    ([0.0, 1.0, 1.0], "duplicate value 1.0"), ([0.0, -0.0], "duplicate value 0.0"),
    ([0.0, np.nan], "NaN"), ([0.0, np.inf], "Inf"), ([[0.0, 1.0]], "one-dimensional"),
    (np.arange(65537.0), "too many values"), ("abc", "string"), ([0.0, "x"], "real numbers"),
])
def test_bad_values(values, match):
    with pytest.raises(FormatError, match=match):
        LookupFormat(values, name="bad")


@pytest.mark.parametrize("name", ["Bad", "1x", "", None, "a b"])
def test_bad_names(name):
    with pytest.raises(FormatError, match="name"):
        LookupFormat([0.0, 1.0], name=name)


def test_sizes_and_bits():
    assert LookupFormat([0.0, 1.0], name="two").bits == 1
    big = LookupFormat(np.arange(65536.0), name="big")
    assert big.bits == 16 and big.encode([65534.6])[0] == 65535


def test_register_format():
    """After register_format, get_format(name) returns it; built-in names cannot be taken."""
    f = LookupFormat([-2.0, -0.5, 0.0, 0.5, 2.0], name="my5")
    with pytest.raises(FormatError, match="unknown format"):
        get_format("my5")
    register_format(f)
    try:
        assert get_format("my5") is f and get_format("MY5") is f
        register_format(f)  # the same format again is fine
        with pytest.raises(FormatError, match="already registered"):
            register_format(LookupFormat([0.0, 1.0], name="my5"))
        g = register_format(LookupFormat([0.0, 1.0], name="my5"), replace=True)
        assert get_format("my5") is g
    finally:
        unregister_format("my5")
    with pytest.raises(FormatError, match="unknown format"):
        get_format("my5")
    for taken in ("nf4", "int8", "e4m3_fn"):
        with pytest.raises(FormatError, match="already a built-in"):
            register_format(LookupFormat([0.0, 1.0], name=taken))


@settings(max_examples=60, deadline=None)
@given(fst.formats(families=["lookup"]), st.data())
def test_property_lookup_vs_oracle(fmt, data):
    """Random lookup formats: encode == oracle (format boundaries) on boundary-heavy inputs;
    quantize is idempotent."""
    x = data.draw(fst.input_arrays(fmt, 32, allow_nan=False))
    x64 = x.astype(np.float64)
    rounding = data.draw(fst.roundings(stochastic=False))
    got = fmt.encode(x, rounding)
    np.testing.assert_array_equal(got, oracle_encode(fmt, x64, rounding, boundaries="format"))
    q = fmt.quantize(x64, rounding)
    np.testing.assert_array_equal(fmt.quantize(q, rounding), q)


def test_per_group_quantizer():
    """A lookup format through a per-group Quantizer (table path) equals the table encode of
    x / s with s = fl32(amax / max) per group of 32."""
    from fmtlab.formats import get_quantizer

    q = get_quantizer("nf4_g32")
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    qt = q.quantize(x)
    s = (np.abs(x).reshape(4, 2, 32).max(axis=2) / np.float32(1.0)).astype(np.float32)
    y = (x.reshape(4, 2, 32) / s[..., None]).astype(np.float32).reshape(4, 64)
    np.testing.assert_array_equal(qt.codes, NF4.encode(y))


TWO = LookupFormat([1.0, 2.0], name="two12")  # virtual ends 0.0 (code -1) and 3.0 (code 2)


@pytest.mark.parametrize("x,code", [(0.0, 0), (-3.0, 0), (-np.inf, 0), (0.5, 0), (2.5, 1),
                                    (3.0, 1), (np.inf, 1)])
@pytest.mark.parametrize("rounding", DET)
def test_positive_only_table_saturates_at_each_end(x, code, rounding):
    """Regression: x = 0.0 is the lower virtual value of {1, 2}; overflow there saturates to
    min (code 0), never to max (the oracle once chose the end by the input's sign)."""
    assert int(TWO.encode(np.array([x]), rounding)[0]) == code
    assert int(oracle_encode(TWO, np.array([x]), rounding)[0]) == code
