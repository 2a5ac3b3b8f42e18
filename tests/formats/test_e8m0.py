"""E8M0 (OCP MX shared scale): labelled table, every code, every midpoint, facts."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import get_format

NE, NA, TZ = "nearest_even", "nearest_away", "toward_zero"
F32_DOWN = lambda v: float(np.nextafter(np.float32(v), np.float32(-np.inf)))  # noqa: E731

TABLE = [
    (1.0, NE, None, 127, "2**0: code = exponent + 127"),
    (2.0, NE, None, 128, "2**1"),
    (1.5, NE, None, 128, "tie 1 / 2 goes up (ml_dtypes), also under NEAREST_EVEN"),
    (1.5, NA, None, 128, "tie away: up"),
    (F32_DOWN(1.5), NE, None, 127, "just below the tie"),
    (3.0, NE, None, 129, "tie 2 / 4: up"),
    (0.75, NE, None, 127, "tie 0.5 / 1: up"),
    (1.99, TZ, None, 127, "truncation: 2**floor(log2 x)"),
    (2.0 ** 127, NE, None, 254, "largest"),
    (1.5 * 2.0 ** 127, NE, None, 255, "tie with the virtual 2**128: overflow -> NaN (default)"),
    (1.5 * 2.0 ** 127, NE, "saturate", 254, "saturating overflow"),
    (F32_DOWN(1.5 * 2.0 ** 127), NE, None, 254, "below the overflow threshold"),
    (2.0 ** 128, TZ, None, 255, "float64 beyond the range overflows even under truncation"),
    (2.0 ** -127, NE, None, 0, "smallest: 2**-127"),
    (2.0 ** -126, NE, None, 1, "2**-126"),
    (1.2 * 2.0 ** -127, NE, None, 1, "0 < x < 2**-126: code 1 iff x > 2**-127 (ml_dtypes' rule)"),
    (1.2 * 2.0 ** -127, TZ, None, 1, "the same rule for every rounding mode"),
    (0.9 * 2.0 ** -127, NE, None, 0, "below 2**-127: code 0 (no zero to round to)"),
    (1e-45, NE, None, 0, "float32's smallest subnormal"),
    (2.0 ** -200, NE, None, 0, "float64 below float32's range: code 0"),
    (0.0, NE, None, 255, "no zero: NaN"),
    (-0.0, NE, None, 255, "no zero: NaN"),
    (-1.0, NE, None, 255, "no sign: NaN"),
    (math.inf, NE, "saturate", 255, "Inf: NaN, whatever the overflow policy"),
    (math.nan, NE, None, 255, "NaN"),
]


@pytest.mark.parametrize("x,rounding,overflow,code,why", TABLE, ids=[r[4] for r in TABLE])
def test_labelled_values(x, rounding, overflow, code, why):
    got = int(get_format("e8m0").encode(np.array([x]), rounding, overflow)[0])
    assert got == code, f"e8m0({x!r}) -> {got}, want {code}: {why}"


def test_every_code_and_midpoint():
    """Every code decodes to 2**(c - 127) (255: NaN) and encodes back; every midpoint
    1.5 * 2**e between adjacent codes goes up, its float32 neighbours to either side; ml_dtypes
    agrees on all of them."""
    f = get_format("e8m0")
    c = np.arange(255)
    v = f.decode(c)
    np.testing.assert_array_equal(v, np.ldexp(1.0, c - 127))
    assert np.isnan(f.decode(np.array([255])))[0]
    np.testing.assert_array_equal(f.encode(v), c)
    mid = (1.5 * v[1:-1]).astype(np.float32)  # between codes 1..253 and the next
    below = np.nextafter(mid, np.float32(0))
    above = np.nextafter(mid, np.float32(np.inf))
    x = np.concatenate([mid, below, above])
    want = np.concatenate([c[1:-1] + 1, c[1:-1], c[1:-1] + 1])
    np.testing.assert_array_equal(f.encode(x), want)
    np.testing.assert_array_equal(x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8), want)


def test_facts():
    f = get_format("e8m0")
    assert (f.bits, f.max, f.min, f.smallest_subnormal, f.min_normal, f.eps) == \
        (8, 2.0 ** 127, 2.0 ** -127, 2.0 ** -127, 2.0 ** -127, 1.0)
    assert f.has_nan and not f.has_inf and not f.has_negative_zero and not f.signed
    assert f.default_overflow.value == "nan" and f.canonical_nan_code() == 255
    with pytest.raises(FormatError, match="no Inf"):
        f.encode([1.0], overflow="inf")


def test_stochastic_between_powers():
    """Stochastic rounding picks 2**e or 2**(e+1) with probability linear in x."""
    f = get_format("e8m0")
    x = np.full(40000, 1.25)
    q = f.quantize(x, "stochastic", seed=7)
    assert set(np.unique(q)) == {1.0, 2.0}
    assert abs(q.mean() - 1.25) < 5 * 0.5 / math.sqrt(x.size)
