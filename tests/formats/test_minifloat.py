"""Minifloats: labelled tables of hand-picked inputs with the expected code and why, the bit
layout against an independent decode formula, and parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import MiniFloat, get_format

F32_UP = lambda v: float(np.nextafter(np.float32(v), np.float32(np.inf)))  # noqa: E731
F32_DOWN = lambda v: float(np.nextafter(np.float32(v), np.float32(-np.inf)))  # noqa: E731
NE, NA, TZ = "nearest_even", "nearest_away", "toward_zero"

# (format, input, rounding, overflow, expected code, why)
TABLE = [
    ("fp8_e4m3", 0.0, NE, None, 0x00, "+0"),
    ("fp8_e4m3", -0.0, NE, None, 0x80, "-0 keeps its sign"),
    ("fp8_e4m3", 1.0, NE, None, 0x38, "1.0 = S.0111.000 (bias 7)"),
    ("fp8_e4m3", 1.0625, NE, None, 0x38, "tie 1.0 (M=000, even) / 1.125: to even"),
    ("fp8_e4m3", 1.0625, NA, None, 0x39, "tie away from zero: 1.125"),
    ("fp8_e4m3", 1.1875, NE, None, 0x3A, "tie 1.125 (0x39, odd) / 1.25 (0x3A): to even"),
    ("fp8_e4m3", F32_UP(1.0625), NE, None, 0x39, "just above the midpoint: up"),
    ("fp8_e4m3", 1.12, TZ, None, 0x38, "truncation"),
    ("fp8_e4m3", -1.12, TZ, None, 0xB8, "truncation toward zero on the negative side"),
    ("fp8_e4m3", 448.0, NE, None, 0x7E, "max = S.1111.110"),
    ("fp8_e4m3", 464.0, NE, None, 0x7E, "tie 448 (even) / virtual 480: stays 448"),
    ("fp8_e4m3", F32_UP(464.0), NE, None, 0x7F, "past the overflow threshold: NaN (OCP default)"),
    ("fp8_e4m3", F32_UP(464.0), NE, "saturate", 0x7E, "saturating overflow (torch's cast)"),
    ("fp8_e4m3", -500.0, NE, None, 0xFF, "negative overflow: NaN with the sign"),
    ("fp8_e4m3", 1e9, TZ, None, 0x7E, "truncation never overflows"),
    ("fp8_e4m3", math.inf, NE, None, 0x7F, "no Inf: Inf is an overflow -> NaN"),
    ("fp8_e4m3", -math.inf, NE, "saturate", 0xFE, "Inf saturates to -448 under 'saturate'"),
    ("fp8_e4m3", math.nan, NE, None, 0x7F, "NaN is S.1111.111"),
    ("fp8_e4m3", -math.nan, NE, None, 0xFF, "negative NaN keeps its sign"),
    ("fp8_e4m3", 2.0 ** -6, NE, None, 0x08, "min normal"),
    ("fp8_e4m3", 2.0 ** -9, NE, None, 0x01, "smallest subnormal"),
    ("fp8_e4m3", 2.0 ** -10, NE, None, 0x00, "half the smallest subnormal: tie to even 0"),
    ("fp8_e4m3", 2.0 ** -10, NA, None, 0x01, "same tie, away from zero"),
    ("fp8_e4m3", -(2.0 ** -10), NE, None, 0x80, "negative underflow: -0"),
    ("fp8_e4m3", 3 * 2.0 ** -10, NE, None, 0x02, "tie subnormals 1 / 2: even"),
    ("fp8_e4m3", 7.5 * 2.0 ** -9, NE, None, 0x08, "tie largest subnormal (odd) / min normal"),
    ("fp8_e4m3", 272.0, NE, None, 0x78, "tie 256 (0x78) / 288: even"),
    ("fp8_e5m2", 1.0, NE, None, 0x3C, "1.0 = S.01111.00 (bias 15)"),
    ("fp8_e5m2", 1.125, NE, None, 0x3C, "tie 1.0 / 1.25: even"),
    ("fp8_e5m2", 1.375, NE, None, 0x3E, "tie 1.25 (odd) / 1.5: even"),
    ("fp8_e5m2", 57344.0, NE, None, 0x7B, "max"),
    ("fp8_e5m2", 61440.0, NE, None, 0x7C, "tie 57344 (odd) / virtual 65536 (even): overflow -> Inf"),
    ("fp8_e5m2", F32_DOWN(61440.0), NE, None, 0x7B, "just below the threshold"),
    ("fp8_e5m2", 61440.0, NE, "saturate", 0x7B, "saturating overflow"),
    ("fp8_e5m2", 61440.0, NE, "nan", 0x7E, "overflow to NaN"),
    ("fp8_e5m2", -61440.0, NE, None, 0xFC, "-Inf"),
    ("fp8_e5m2", 61440.0, TZ, None, 0x7B, "truncation saturates"),
    ("fp8_e5m2", math.inf, NE, None, 0x7C, "Inf"),
    ("fp8_e5m2", math.nan, NE, None, 0x7E, "quiet NaN S.11111.10 (as ml_dtypes; torch: 0x7F)"),
    ("fp8_e5m2", 2.0 ** -16, NE, None, 0x01, "smallest subnormal"),
    ("fp8_e5m2", 2.0 ** -17, NE, None, 0x00, "tie to even zero"),
    ("fp8_e5m2", 2.0 ** -14, NE, None, 0x04, "min normal"),
    ("fp8_e4m3fnuz", 1.0, NE, None, 0x40, "bias 8: 1.0 = S.1000.000"),
    ("fp8_e4m3fnuz", 240.0, NE, None, 0x7F, "max"),
    ("fp8_e4m3fnuz", 248.0, NE, None, 0x80, "tie 240 (odd) / 256: overflow -> NaN 0x80"),
    ("fp8_e4m3fnuz", F32_DOWN(248.0), NE, None, 0x7F, "below the threshold"),
    ("fp8_e4m3fnuz", -248.0, NE, "saturate", 0xFF, "saturating negative overflow"),
    ("fp8_e4m3fnuz", -0.0, NE, None, 0x00, "no -0: -0 -> +0"),
    ("fp8_e4m3fnuz", -(2.0 ** -12), NE, None, 0x00, "negative underflow -> +0 (no -0)"),
    ("fp8_e4m3fnuz", 2.0 ** -10, NE, None, 0x01, "smallest subnormal 2**(1-8-3)"),
    ("fp8_e4m3fnuz", -math.nan, NE, None, 0x80, "the one NaN"),
    ("fp8_e4m3fnuz", math.inf, NE, None, 0x80, "Inf -> NaN"),
    ("fp8_e5m2fnuz", 1.0, NE, None, 0x40, "bias 16"),
    ("fp8_e5m2fnuz", 57344.0, NE, None, 0x7F, "max"),
    ("fp8_e5m2fnuz", math.nan, NE, None, 0x80, "the one NaN"),
    ("fp6_e3m2", 1.0, NE, None, 0x0C, "bias 3: 1.0 = S.011.00"),
    ("fp6_e3m2", 28.0, NE, None, 0x1F, "max"),
    ("fp6_e3m2", 30.0, NE, None, 0x1F, "tie with virtual 32 overflows; no Inf/NaN: saturate"),
    ("fp6_e3m2", 1e9, NE, None, 0x1F, "saturate"),
    ("fp6_e3m2", -math.inf, NE, None, 0x3F, "-Inf saturates"),
    ("fp6_e3m2", -0.0, NE, None, 0x20, "-0"),
    ("fp6_e3m2", 0.0625, NE, None, 0x01, "smallest subnormal 2**-4"),
    ("fp6_e2m3", 1.0, NE, None, 0x08, "bias 1: 1.0 = S.01.000"),
    ("fp6_e2m3", 7.5, NE, None, 0x1F, "max"),
    ("fp6_e2m3", 7.75, NE, None, 0x1F, "overflow saturates"),
    ("fp6_e2m3", 0.125, NE, None, 0x01, "smallest subnormal 2**-3"),
    ("fp4_e2m1", 0.25, NE, None, 0x0, "tie 0 / 0.5: even 0"),
    ("fp4_e2m1", 0.75, NE, None, 0x2, "tie 0.5 (0x1) / 1.0 (0x2): even"),
    ("fp4_e2m1", 1.25, NE, None, 0x2, "tie 1.0 / 1.5: even"),
    ("fp4_e2m1", 1.75, NE, None, 0x4, "tie 1.5 / 2.0: even"),
    ("fp4_e2m1", 2.5, NE, None, 0x4, "tie 2 / 3: even"),
    ("fp4_e2m1", 3.5, NE, None, 0x6, "tie 3 / 4: even"),
    ("fp4_e2m1", 5.0, NE, None, 0x6, "tie 4 / 6: even"),
    ("fp4_e2m1", 5.0, NA, None, 0x7, "tie away: 6"),
    ("fp4_e2m1", 7.0, NE, None, 0x7, "tie 6 / virtual 8 overflows: saturate to 6"),
    ("fp4_e2m1", -5.0, NE, None, 0xE, "sign bit 0x8"),
    ("fp4_e2m1", -0.25, NE, None, 0x8, "negative tie to zero: -0"),
    ("fp16", 1.0, NE, None, 0x3C00, "IEEE binary16"),
    ("fp16", 65504.0, NE, None, 0x7BFF, "max"),
    ("fp16", 65520.0, NE, None, 0x7C00, "tie max / virtual 65536: Inf"),
    ("fp16", F32_DOWN(65520.0), NE, None, 0x7BFF, "below the threshold"),
    ("fp16", 2.0 ** -24, NE, None, 0x0001, "smallest subnormal"),
    ("fp16", 2.0 ** -25, NE, None, 0x0000, "tie to even zero"),
    ("fp16", math.nan, NE, None, 0x7E00, "quiet NaN"),
    ("bf16", 1.0, NE, None, 0x3F80, "bfloat16"),
    ("bf16", 1 + 2.0 ** -8, NE, None, 0x3F80, "tie 1.0 / 1+2**-7: even"),
    ("bf16", 1 + 3 * 2.0 ** -8, NE, None, 0x3F82, "tie odd / even: even"),
    ("bf16", 3.3895313892515355e38, NE, None, 0x7F7F, "max"),
    ("bf16", 2.0 ** -133, NE, None, 0x0001, "smallest subnormal"),
    ("bf16", math.nan, NE, None, 0x7FC0, "quiet NaN"),
]


@pytest.mark.parametrize("name,x,rounding,overflow,code,why", TABLE,
                         ids=[f"{r[0]}-{r[5]}" for r in TABLE])
def test_labelled_values(name, x, rounding, overflow, code, why):
    fmt = get_format(name)
    got = int(fmt.encode(np.array([x], np.float64), rounding, overflow)[0])
    assert got == code, f"{name}({x!r}) -> {got:#x}, want {code:#x}: {why}"


# (name, bits, max, min_normal, smallest_subnormal, eps, has_inf, has_nan, has_-0, default overflow)
FACTS = [
    ("fp8_e4m3", 8, 448.0, 2.0 ** -6, 2.0 ** -9, 0.125, False, True, True, "nan"),
    ("fp8_e5m2", 8, 57344.0, 2.0 ** -14, 2.0 ** -16, 0.25, True, True, True, "inf"),
    ("fp8_e4m3fnuz", 8, 240.0, 2.0 ** -7, 2.0 ** -10, 0.125, False, True, False, "nan"),
    ("fp8_e5m2fnuz", 8, 57344.0, 2.0 ** -15, 2.0 ** -17, 0.25, False, True, False, "nan"),
    ("fp6_e3m2", 6, 28.0, 0.25, 0.0625, 0.25, False, False, True, "saturate"),
    ("fp6_e2m3", 6, 7.5, 1.0, 0.125, 0.125, False, False, True, "saturate"),
    ("fp4_e2m1", 4, 6.0, 1.0, 0.5, 0.5, False, False, True, "saturate"),
    ("fp16", 16, 65504.0, 2.0 ** -14, 2.0 ** -24, 2.0 ** -10, True, True, True, "inf"),
    ("bf16", 16, float.fromhex("0x1.fep127"), 2.0 ** -126, 2.0 ** -133, 2.0 ** -7, True, True, True, "inf"),
    ("e3m4_ieee", 8, 15.5, 0.25, 2.0 ** -6, 2.0 ** -4, True, True, True, "inf"),
    ("e4m3_ieee", 8, 240.0, 2.0 ** -6, 2.0 ** -9, 0.125, True, True, True, "inf"),
]


@pytest.mark.parametrize("row", FACTS, ids=[r[0] for r in FACTS])
def test_finfo_hand_values(row):
    name, bits, mx, mn, sub, eps, inf, nan, nz, ovf = row
    f = get_format(name)
    assert (f.bits, f.max, f.min, f.min_normal, f.smallest_subnormal, f.eps) == (bits, mx, -mx, mn, sub, eps)
    assert (f.has_inf, f.has_nan, f.has_negative_zero, f.signed) == (inf, nan, nz, True)
    assert f.default_overflow.value == ovf
    assert f.exp_bits + f.man_bits + 1 == f.bits


def independent_decode(code: int, e: int, m: int, bias: int, special: str, subnormals: bool) -> float:
    """The minifloat value of a code, written from the layout description alone."""
    s = -1.0 if code >> (e + m) & 1 else 1.0
    E = (code >> m) & ((1 << e) - 1)
    M = code & ((1 << m) - 1)
    top = (1 << e) - 1
    if special == "ieee" and E == top:
        return s * math.inf if M == 0 else math.nan
    if special == "fn" and E == top and M == (1 << m) - 1:
        return math.nan
    if special == "fnuz" and code == 1 << (e + m):
        return math.nan
    if E == 0:
        if M and not subnormals:
            return math.nan
        return s * math.ldexp(M, 1 - bias - m)
    return s * math.ldexp((1 << m) + M, E - bias - m)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp6_e3m2",
                                  "fp6_e2m3", "fp4_e2m1", "fp16", "bf16", "e3m3_ieee_b5_ftz",
                                  "e2m2_fn", "e1m0_fin", "e4m0_fnuz", "e5m1_fin_b-3"])
def test_layout_every_code(name):
    """values() equals the layout formula for every code (NaN where the layout says NaN)."""
    f = get_format(name)
    want = np.array([independent_decode(c, f.exp_bits, f.man_bits, f.bias, f.special, f.subnormals)
                     for c in range(1 << f.bits)])
    got = f.values()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]))


def test_flush_to_zero():
    """subnormals=False: subnormal codes are unused (NaN) and inputs below min_normal round
    between 0 and min_normal (midpoint min_normal/2, ties to even 0)."""
    f = get_format("e4m3_fn_ftz")
    assert f.smallest_subnormal == f.min_normal == 2.0 ** -6
    x = np.array([2.0 ** -7, np.nextafter(2.0 ** -7, 1), 2.0 ** -9, -(2.0 ** -6)])
    np.testing.assert_array_equal(f.encode(x), [0x00, 0x08, 0x00, 0x88])
    assert np.isnan(f.decode(np.array([1, 2, 7]))).all()


def test_bias_shift_scales_every_value():
    a, b = get_format("e4m3_fn"), get_format("e4m3_fn_b10")
    va, vb = a.values(), b.values()
    ok = np.isfinite(va)
    np.testing.assert_array_equal(vb[ok], va[ok] * 2.0 ** -3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(exp_bits=0, man_bits=3), "exp_bits"), (dict(exp_bits=9, man_bits=3), "exp_bits"),
    (dict(exp_bits=4, man_bits=11), "man_bits"), (dict(exp_bits=4, man_bits=-1), "man_bits"),
    (dict(exp_bits=4, man_bits=3, special="ocp"), "special"),
    (dict(exp_bits=1, man_bits=3, special="ieee"), "exp_bits >= 2"),
    (dict(exp_bits=1, man_bits=0, special="fn"), "fn"),
    (dict(exp_bits=4, man_bits=3, bias=1000), "bias"),
    (dict(exp_bits=4.0, man_bits=3), "exp_bits"),
])
def test_invalid_parameters(kwargs, match):
    with pytest.raises(FormatError, match=match):
        MiniFloat(**kwargs)


def test_impossible_overflow_policies():
    with pytest.raises(FormatError, match="no Inf"):
        get_format("fp8_e4m3").encode([1.0], overflow="inf")
    with pytest.raises(FormatError, match="no NaN"):
        get_format("fp4_e2m1").encode([1.0], overflow="nan")
    with pytest.raises(ValueError, match="unknown overflow"):
        get_format("fp16").encode([1.0], overflow="wrap")


def test_describe_and_name():
    f = get_format("fp8_e4m3")
    assert str(f) == "fp8_e4m3" and "448" in f.describe() and "no Inf" in f.describe()
    assert MiniFloat(4, 3, special="fn") == f  # the label is not part of the identity
    assert str(MiniFloat(4, 3, special="fn")) == "e4m3_fn"
