"""dINT (our reading of the EMNLP 2023 hybrid integer + denormal grid): labelled tables,
layout, facts and validation."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import DInt, get_format

NE, NA, TZ = "nearest_even", "nearest_away", "toward_zero"

# dint4 magnitudes by code: 0, 0.5, 1, 2, 3, 4, 5, 6; sign bit 0x8; code 0x8 (-0) unused
TABLE = [
    ("dint4", 0.25, NE, 0x0, "tie 0 (even) / 0.5: zero"),
    ("dint4", 0.25, NA, 0x1, "tie away: 0.5"),
    ("dint4", 0.3, NE, 0x1, "nearer to 0.5"),
    ("dint4", 0.75, NE, 0x1, "tie 0.5 / 1 (neither even): smaller magnitude 0.5"),
    ("dint4", 0.75, NA, 0x2, "tie away: 1"),
    ("dint4", 1.5, NE, 0x3, "tie 1 / 2: even 2"),
    ("dint4", 2.5, NE, 0x3, "tie 2 / 3: even 2"),
    ("dint4", 3.5, NE, 0x5, "tie 3 / 4: even 4"),
    ("dint4", 6.0, NE, 0x7, "max"),
    ("dint4", 6.5, NE, 0x7, "tie 6 (even) / virtual 7: stays"),
    ("dint4", 6.5, NA, 0x7, "tie away overflows: saturate"),
    ("dint4", 100.0, NE, 0x7, "saturate"),
    ("dint4", -100.0, NE, 0xF, "saturate to -6"),
    ("dint4", -0.3, NE, 0x9, "-0.5"),
    ("dint4", -0.25, NE, 0x0, "negative tie to zero: +0 (the -0 code is unused)"),
    ("dint4", -0.0, NE, 0x0, "-0 -> +0"),
    ("dint4", 0.4, TZ, 0x0, "truncation below the denormal level"),
    ("dint4", 0.9, TZ, 0x1, "truncation to 0.5"),
    ("dint4_nz", -0.25, NE, 0x8, "with negative_zero=True, the -0 code"),
    ("dint4_nz", -0.0, NE, 0x8, "-0 kept"),
    ("dint8", 126.0, NE, 0x7F, "dint8 max 126"),
    ("dint8", 0.5, NE, 0x01, "dint8 denormal"),
    ("dint8", 1.0, NE, 0x02, "dint8 one"),
    ("dint5_d0.25_0.5_0.75", 0.625, NE, 0x2, "tie 0.5 / 0.75 (neither even): smaller"),
    ("dint5_d0.25_0.5_0.75", 0.875, NE, 0x3, "tie 0.75 / 1: smaller magnitude"),
]


@pytest.mark.parametrize("name,x,rounding,code,why", TABLE, ids=[f"{r[0]}-{r[4]}" for r in TABLE])
def test_labelled_values(name, x, rounding, code, why):
    got = int(get_format(name).encode(np.array([x]), rounding)[0])
    assert got == code, f"{name}({x!r}) -> {got:#x}, want {code:#x}: {why}"


def test_dint4_layout():
    """Our reading: sign-magnitude, magnitudes {0, 0.5, 1, ..., 6}, -0 code unused (NaN)."""
    v = get_format("dint4").values()
    np.testing.assert_array_equal(v[:8], [0, 0.5, 1, 2, 3, 4, 5, 6])
    assert np.isnan(v[8])
    np.testing.assert_array_equal(v[9:], -v[1:8])


LAYOUTS = [(b, lv) for b in (3, 4, 5, 8, 12, 16) for lv in ((), (0.5,), (0.25, 0.5, 0.75))
           if (1 << (b - 1)) - 1 - len(lv) >= 1]


@pytest.mark.parametrize("bits,levels", LAYOUTS)
def test_layout_every_code(bits, levels):
    half = 1 << (bits - 1)
    n_int = half - 1 - len(levels)
    f = DInt(bits, denormals=levels)
    mags = [0.0, *levels, *range(1, n_int + 1)]
    v = f.values()
    np.testing.assert_array_equal(v[:half], mags)
    np.testing.assert_array_equal(v[half + 1:], -np.array(mags[1:]))
    assert f.max == n_int and f.min == -n_int


@pytest.mark.parametrize("name,mx,sub", [("dint4", 6.0, 0.5), ("dint8", 126.0, 0.5), ("dint3_d", 3.0, 1.0)])
def test_facts(name, mx, sub):
    f = get_format(name)
    assert (f.max, f.min, f.smallest_subnormal, f.min_normal) == (mx, -mx, sub, 1.0)
    assert not (f.has_inf or f.has_nan or f.has_negative_zero) and f.signed
    assert f.default_overflow.value == "saturate"


def test_keeps_small_values_int4_loses():
    """The point of dINT: 0.3 survives (0.5) where INT4 of the same scale gives 0."""
    x = np.array([0.3, -0.3, 0.6])
    assert np.all(get_format("int4").quantize(x)[:2] == 0)
    np.testing.assert_array_equal(get_format("dint4").quantize(x), [0.5, -0.5, 0.5])


@pytest.mark.parametrize("kwargs,match", [
    (dict(nbits=2), "3..16"), (dict(nbits=17), "3..16"), (dict(nbits=4, denormals=(1.5,)), "between 0 and 1"),
    (dict(nbits=4, denormals=(0.0,)), "between 0 and 1"), (dict(nbits=4, denormals=(0.5, 0.25)), "ascending"),
    (dict(nbits=4, denormals=(0.5, 0.5)), "distinct"),
    (dict(nbits=3, denormals=(0.2, 0.4, 0.6)), "no integer level")])
def test_invalid(kwargs, match):
    with pytest.raises(FormatError, match=match):
        DInt(**kwargs)
