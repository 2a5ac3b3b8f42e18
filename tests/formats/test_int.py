"""INTn: labelled tables, layout of every code, facts and parameter validation."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import IntFormat, get_format

NE, NA, TZ, SR = "nearest_even", "nearest_away", "toward_zero", "stochastic"

# (format, input, rounding, expected code, why)
TABLE = [
    ("int4", 2.5, NE, 0x2, "tie 2 / 3: even"),
    ("int4", 3.5, NE, 0x4, "tie 3 / 4: even"),
    ("int4", 2.5, NA, 0x3, "tie away from zero"),
    ("int4", -2.5, NE, 0xE, "tie -3 / -2: even -2 (two's complement 1110)"),
    ("int4", -2.5, NA, 0xD, "tie away: -3"),
    ("int4", -0.5, NE, 0x0, "tie -1 / 0: even 0 (no -0 in INT)"),
    ("int4", -0.0, NE, 0x0, "-0 is 0"),
    ("int4", 7.0, NE, 0x7, "max"),
    ("int4", 7.5, NE, 0x7, "tie 7 / virtual 8 overflows: saturate"),
    ("int4", 100.0, NE, 0x7, "saturate"),
    ("int4", -8.0, NE, 0x8, "min = 1000"),
    ("int4", -8.5, NE, 0x8, "tie -8 (even) / virtual -9: -8"),
    ("int4", -100.0, NE, 0x8, "saturate to min"),
    ("int4", -100.0, TZ, 0x8, "truncation saturates too"),
    ("int4", 2.9, TZ, 0x2, "truncation"),
    ("int4", -2.9, TZ, 0xE, "truncation toward zero: -2"),
    ("int4", np.inf, NE, 0x7, "Inf saturates"),
    ("int4", -np.inf, NE, 0x8, "-Inf saturates"),
    ("int4_sym", -7.5, NE, 0x9, "narrow: min is -7 (1001); the tie with virtual -8 saturates"),
    ("int4_sym", -8.0, NE, 0x9, "narrow: -8 is not a value"),
    ("int8", 127.5, NE, 0x7F, "saturate"),
    ("int8", -128.0, NE, 0x80, "min"),
    ("int8_sym", -128.0, NE, 0x81, "narrow: saturate at -127"),
    ("uint4", -0.5, NE, 0x0, "tie virtual -1 / 0: even 0"),
    ("uint4", -3.0, NE, 0x0, "negative saturates to 0"),
    ("uint4", -3.0, TZ, 0x0, "truncation saturates to 0"),
    ("uint4", 15.5, NE, 0xF, "tie 15 / virtual 16 overflows: saturate"),
    ("uint4", 14.5, NE, 0xE, "tie 14 / 15: even"),
    ("int16", 32767.5, NE, 0x7FFF, "int16 saturate"),
    ("int16", -32768.5, NE, 0x8000, "tie -32768 (even) / virtual: stays"),
    ("int2", 1.5, NE, 0x1, "int2 = {-2,-1,0,1}: 1.5 saturates"),
    ("int2", -1.5, NE, 0x2, "tie -2 (even) / -1"),
]


@pytest.mark.parametrize("name,x,rounding,code,why", TABLE, ids=[f"{r[0]}-{r[4]}" for r in TABLE])
def test_labelled_values(name, x, rounding, code, why):
    got = int(get_format(name).encode(np.array([x]), rounding)[0])
    assert got == code, f"{name}({x!r}) -> {got:#x}, want {code:#x}: {why}"


@pytest.mark.parametrize("bits", range(2, 17))
def test_layout_every_code(bits):
    """Signed codes are two's complement, unsigned codes the value, narrow drops 100..0."""
    codes = np.arange(1 << bits)
    signed = np.where(codes >= 1 << (bits - 1), codes - (1 << bits), codes).astype(float)
    np.testing.assert_array_equal(IntFormat(bits).values(), signed)
    np.testing.assert_array_equal(IntFormat(bits, unsigned=True).values(), codes.astype(float))
    narrow = IntFormat(bits, narrow=True).values()
    assert np.isnan(narrow[1 << (bits - 1)])
    np.testing.assert_array_equal(np.delete(narrow, 1 << (bits - 1)), np.delete(signed, 1 << (bits - 1)))


@pytest.mark.parametrize("name,mx,mn,signed", [("int4", 7, -8, True), ("int8", 127, -128, True),
                                               ("int4_sym", 7, -7, True), ("int8_sym", 127, -127, True),
                                               ("uint8", 255, 0, False), ("int16", 32767, -32768, True),
                                               ("int2", 1, -2, True), ("uint16", 65535, 0, False)])
def test_facts(name, mx, mn, signed):
    """INT is an unscaled integer grid: eps = min_normal = smallest_subnormal = 1, no specials,
    overflow saturates."""
    f = get_format(name)
    assert (f.max, f.min, f.signed) == (mx, mn, signed)
    assert f.eps == f.min_normal == f.smallest_subnormal == 1.0
    assert not (f.has_inf or f.has_nan or f.has_negative_zero)
    assert f.default_overflow.value == "saturate"
    assert f.code_dtype == (np.uint8 if f.bits <= 8 else np.uint16)


def test_matches_numpy_rint_and_clip():
    """Nearest-even INT8 is np.clip(np.rint(x), -128, 127) (numpy's rint ties to even)."""
    x = np.random.default_rng(0).normal(scale=100, size=20000)
    x = np.concatenate([x, np.arange(-140, 140, 0.5)])
    f = get_format("int8")
    np.testing.assert_array_equal(f.quantize(x), np.clip(np.rint(x), -128, 127))
    np.testing.assert_array_equal(f.quantize(x, "toward_zero"), np.clip(np.trunc(x), -128, 127))


def test_nan_raises_or_zero():
    f = get_format("int8")
    with pytest.raises(FormatError, match="int8 has no NaN"):
        f.encode(np.array([1.0, np.nan]))
    np.testing.assert_array_equal(f.encode(np.array([1.0, np.nan]), nan="zero"), [1, 0])


def test_integer_input_dtypes():
    f = get_format("int4")
    np.testing.assert_array_equal(f.encode(np.array([-9, -1, 3, 9], np.int32)), [0x8, 0xF, 0x3, 0x7])
    np.testing.assert_array_equal(f.encode(np.array([True, False])), [1, 0])


@pytest.mark.parametrize("kwargs,match", [(dict(nbits=1), "2..16"), (dict(nbits=17), "2..16"),
                                          (dict(nbits=4.0), "bits"),
                                          (dict(nbits=4, unsigned=True, narrow=True), "narrow")])
def test_invalid(kwargs, match):
    with pytest.raises(FormatError, match=match):
        IntFormat(**kwargs)


def test_int64_inputs_round_once_or_raise():
    """64-bit integer inputs are converted to float64 only when that is exact (|v| <= 2**53 or a
    multiple of its float64 spacing); otherwise they would be rounded twice (to float64, then to
    the format), so FormatError names the value. 2**53 + 1 would become 2**53 in float64."""
    from fmtlab.errors import FormatError

    fmt = get_format("bf16")
    ok = np.array([2 ** 60, -(2 ** 53), 12345, 2 ** 53], dtype=np.int64)
    np.testing.assert_array_equal(fmt.encode(ok), fmt.encode(ok.astype(np.float64)))
    for bad in (np.array([1, 2 ** 53 + 1], np.int64), np.array([-(2 ** 62) - 1], np.int64),
                np.array([2 ** 64 - 1], np.uint64)):
        with pytest.raises(FormatError, match="not exactly representable in float64"):
            fmt.encode(bad)
    assert get_format("int8").encode(np.array([100, -100], np.int32)).tolist() == [100, 156]
