"""log-base-b formats: labelled tables (log- and linear-domain rounding), layout, facts and
validation. log4 = {0, +/-2**-6, ..., +/-2**-1, +/-1}: magnitude code m is 2**-(7 - m)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import LogFormat, get_format

NE, NA, TZ = "nearest_even", "nearest_away", "toward_zero"
T4 = 2.0 ** -6.5  # log4's default underflow threshold (geometric mean of 2**-6 and 2**-7)

TABLE = [
    ("log4", 1.0, NE, 0x7, "1.0 is the largest level (k = 0)"),
    ("log4", 0.36, NE, 0x6, "log domain: above sqrt(0.25*0.5) = 0.3536 -> 0.5 (linear: 0.25)"),
    ("log4", 0.35, NE, 0x5, "below the geometric mean -> 0.25"),
    ("log4", 0.72, NE, 0x7, "above sqrt(0.5) = 0.7071 -> 1.0 (linear: 0.5)"),
    ("log4", 1.41, NE, 0x7, "below sqrt(2), the boundary with the virtual level 2"),
    ("log4", 1.5, NE, 0x7, "overflow saturates"),
    ("log4", 2.0 ** -6, NE, 0x1, "smallest level"),
    ("log4", T4, NE, 0x0, "tie at the underflow threshold: zero (smaller magnitude)"),
    ("log4", T4, NA, 0x1, "same tie, away from zero"),
    ("log4", 0.01, NE, 0x0, "below the threshold 0.011: zero"),
    ("log4", 0.012, NE, 0x1, "above it: 2**-6"),
    ("log4", -0.36, NE, 0xE, "sign bit 0x8 | 0x6"),
    ("log4", -0.005, NE, 0x0, "negative underflow: +0 (the -0 code is unused)"),
    ("log4", 0.7, TZ, 0x6, "truncation: 0.5"),
    ("log4", 5.0, TZ, 0x7, "truncation saturates"),
    ("log4_nz", -0.005, NE, 0x8, "negative_zero=True: -0"),
    ("log4_lin", 0.36, NE, 0x5, "linear domain: below (0.25+0.5)/2 = 0.375 -> 0.25"),
    ("log4_lin", 0.72, NE, 0x6, "linear: below 0.75 -> 0.5"),
    ("log4_lin", 0.375, NE, 0x5, "linear tie 0.25 (k=2, even) / 0.5 (k=1): even"),
    ("log4_lin", 0.75, NE, 0x7, "linear tie 0.5 (k=1) / 1 (k=0, even): even"),
    ("log4_lin", 0.75, NA, 0x7, "linear tie away"),
    ("log4_lin", 2.0 ** -7, NE, 0x0, "linear underflow threshold: half the smallest level, tie to 0"),
    ("log4_b4.0", 0.5, NE, 0x7, "base 4: 0.5 = sqrt(1/4 * 1) is an exact log tie -> even k = 0"),
    ("log4_b4.0", 0.125, NE, 0x5, "exact log tie between 4**-2 (even) and 4**-1 -> 4**-2"),
    ("log4_b4.0", 0.125, NA, 0x6, "the same tie away from zero -> 4**-1"),
    ("log4_u0.015", 0.014, NE, 0x0, "explicit underflow threshold 0.015"),
    ("log4_u0.015", 0.0151, NE, 0x1, "above the explicit threshold"),
]


@pytest.mark.parametrize("name,x,rounding,code,why", TABLE, ids=[f"{r[0]}-{r[4]}" for r in TABLE])
def test_labelled_values(name, x, rounding, code, why):
    got = int(get_format(name).encode(np.array([x]), rounding)[0])
    assert got == code, f"{name}({x!r}) -> {got:#x}, want {code:#x}: {why}"


@pytest.mark.parametrize("name", ["log2", "log4", "log8", "log4_b1.4142135623730951", "log6_b1.5_nz",
                                  "log8_b1.189207115002721_lin", "log10"])
def test_layout_every_code(name):
    """Sign-magnitude; magnitude code m >= 1 is b**-(kmax + 1 - m), kmax = 2**(bits-1) - 2;
    m = 0 is zero; the -0 code is unused unless negative_zero=True."""
    f = get_format(name)
    half = 1 << (f.bits - 1)
    kmax = half - 2
    want = [0.0] + [f.base ** -(kmax + 1 - m) for m in range(1, half)]
    v = f.values()
    np.testing.assert_allclose(v[:half], want, rtol=2e-16, atol=0)
    np.testing.assert_array_equal(v[half + 1:], -v[1:half])
    if f.negative_zero:
        assert v[half] == 0 and np.signbit(v[half])
    else:
        assert np.isnan(v[half])
    assert f.max == 1.0 and f.min == -1.0 and f.smallest_subnormal == v[1]


def test_facts():
    f = get_format("log4")
    assert (f.bits, f.max, f.smallest_subnormal, f.min_normal, f.eps) == (4, 1.0, 2.0 ** -6, 2.0 ** -6, 1.0)
    assert not (f.has_inf or f.has_nan or f.has_negative_zero) and f.signed
    assert f.underflow_threshold == 2.0 ** -6.5
    assert get_format("log4_lin").underflow_threshold == 2.0 ** -7
    assert get_format("log8").smallest_subnormal == 2.0 ** -126
    g = get_format("log4_b1.4142135623730951")
    assert g.eps == pytest.approx(math.sqrt(2) - 1) and g.base == math.sqrt(2)


def test_log_domain_matches_round_of_log():
    """Away from boundaries, log-domain rounding is the papers' b**round(log_b |x|), clipped."""
    f = get_format("log8_b1.4142135623730951")
    x = np.random.default_rng(0).uniform(1e-3, 1.0, 20000)
    k = np.clip(np.round(-np.log(x) / np.log(f.base)), 0, f.kmax)
    far = np.abs(-np.log(x) / np.log(f.base) - np.floor(-np.log(x) / np.log(f.base)) - 0.5) > 1e-9
    np.testing.assert_allclose(f.quantize(x)[far], (f.base ** -k)[far], rtol=1e-15)


@pytest.mark.parametrize("kwargs,match", [
    (dict(nbits=1), "2..16"), (dict(nbits=17), "2..16"), (dict(nbits=4, base=1.0), "base"),
    (dict(nbits=4, base=0.5), "base"), (dict(nbits=4, base=math.inf), "base"),
    (dict(nbits=4, domain="ln"), "domain"), (dict(nbits=4, underflow=0.5), "underflow"),
    (dict(nbits=4, underflow=0.0), "underflow"), (dict(nbits=12), "underflow float64"),
    (dict(nbits=11), "underflow float64")])
def test_invalid(kwargs, match):
    with pytest.raises(FormatError, match=match):
        LogFormat(**kwargs)
