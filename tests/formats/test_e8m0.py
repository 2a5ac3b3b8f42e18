"""E8M0 (OCP MX shared scale): labelled table, every code, every midpoint, facts."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import get_format
from fmtlab.formats.oracle import oracle_encode
from peers import e8m0_quirk_mask

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
    (8.2e-39, NE, None, 0, "float32 subnormal below the tie 1.5 * 2**-127: nearest is 2**-127"),
    (1.2 * 2.0 ** -127, NE, None, 0, "subnormal range: nearest power of two, as for normals"),
    (1.5 * 2.0 ** -127, NE, None, 1, "subnormal tie 2**-127 / 2**-126: up"),
    (1.5 * 2.0 ** -127, NA, None, 1, "subnormal tie, away: up"),
    (float(np.nextafter(np.float32(1.5 * 2.0 ** -127), np.float32(0))), NE, None, 0, "below the subnormal tie"),
    (float(np.nextafter(np.float32(1.5 * 2.0 ** -127), np.float32(1))), NE, None, 1, "above the subnormal tie"),
    (1.9 * 2.0 ** -127, TZ, None, 0, "subnormal truncation: 2**-127"),
    (0.9 * 2.0 ** -127, NE, None, 0, "below 2**-127: code 0 (no zero to round to)"),
    (0.3 * 2.0 ** -127, TZ, None, 0, "below 2**-127, truncation: still code 0"),
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
    1.5 * 2**e between adjacent codes (the subnormal one 1.5 * 2**-127 included) goes up, its
    float32 and float64 neighbours to either side; the oracle agrees on all of them, and so does
    ml_dtypes (>= 0.7; 0.6's subnormal rule is detected and its deviation checked instead)."""
    f = get_format("e8m0")
    c = np.arange(255)
    v = f.decode(c)
    np.testing.assert_array_equal(v, np.ldexp(1.0, c - 127))
    assert np.isnan(f.decode(np.array([255])))[0]
    np.testing.assert_array_equal(f.encode(v), c)
    mid = (1.5 * v[:-1]).astype(np.float32)  # between codes 0..253 and the next (exact in float32)
    assert np.all(mid.astype(np.float64) == 1.5 * v[:-1])
    below = np.nextafter(mid, np.float32(0))
    above = np.nextafter(mid, np.float32(np.inf))
    x = np.concatenate([mid, below, above])
    want = np.concatenate([c[:-1] + 1, c[:-1], c[:-1] + 1])
    np.testing.assert_array_equal(f.encode(x), want)
    np.testing.assert_array_equal(oracle_encode(f, x), want)
    mid64 = 1.5 * v[:-1]
    x64 = np.concatenate([np.nextafter(mid64, 0.0), np.nextafter(mid64, np.inf)])
    np.testing.assert_array_equal(f.encode(x64), np.concatenate([c[:-1], c[:-1] + 1]))
    theirs = x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    quirk = e8m0_quirk_mask(x)
    np.testing.assert_array_equal(theirs[~quirk], want[~quirk])
    assert np.all(theirs[quirk] == 1), "ml_dtypes <= 0.6 rule: code 1 for 2**-127 < x < 2**-126"


def test_subnormal_range_against_oracle():
    """Every 2**12-th float32 subnormal and the float32/float64 values around 2**-127 and
    2**-126: fmtlab == oracle under every deterministic rounding mode (codes 0 and 1 only)."""
    f = get_format("e8m0")
    sub = (np.arange(1, 1 << 23, 1 << 12, dtype=np.uint32)).view(np.float32)
    edges = np.array([2.0 ** -127, 2.0 ** -126, 1.5 * 2.0 ** -127], np.float32)
    x32 = np.concatenate([sub, edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(1))])
    x64 = np.concatenate([x32.astype(np.float64), np.nextafter(edges.astype(np.float64), 0.0),
                          np.nextafter(edges.astype(np.float64), 1.0)])
    for x in (x32, x64):
        for mode in (NE, NA, TZ):
            got = f.encode(x, mode)
            np.testing.assert_array_equal(got, oracle_encode(f, x, mode), err_msg=f"{x.dtype} {mode}")
            assert set(np.unique(got[x < 2.0 ** -126]).tolist()) <= {0, 1}


def test_large_input_is_chunked():
    """Encoding more than one chunk gives the same codes as encoding element by element
    (chunk boundaries invisible); memory beyond input and output stays O(CHUNK)."""
    from fmtlab.formats import e8m0 as mod

    f = get_format("e8m0")
    x = np.abs(np.random.default_rng(3).normal(size=mod.CHUNK * 2 + 17)) * 2.0 ** -120
    got = f.encode(x)
    parts = np.concatenate([f.encode(x[i:i + 1000]) for i in range(0, x.size, 1000)])
    np.testing.assert_array_equal(got, parts)
    q = f.encode(x, "stochastic", seed=5)
    rand = np.random.default_rng(5).random(x.size)
    np.testing.assert_array_equal(q[-5000:], oracle_encode(f, x[-5000:], "stochastic", rand=rand[-5000:]))


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
