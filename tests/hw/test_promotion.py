"""Promoted (two-level) accumulation: exact against a Fraction reference, labelled cases, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format
from fmtlab.hw.datapath import dot, matvec
from fmtlab.hw.accumulators import AccRounding
from fmtlab.hw.operands import FloatAcc
from fmtlab.hw.datapath import promoted_dot
from fmtlab.hw.promoted_acc import PRESETS, PromotedAcc

E4M3 = get_format("fp8_e4m3")


def round_ref(x: Fraction, man: int, emin: int, emax: int, rtz: bool) -> Fraction | float:
    """x rounded to a binary format (man fraction bits, normal exponents emin..emax, subnormals):
    nearest-even (overflow -> inf) or toward zero (overflow -> the largest finite value)."""
    if x == 0:
        return Fraction(0)
    sign = -1 if x < 0 else 1
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    q = max(e, emin) - man
    y = a / Fraction(2) ** q
    if rtz:
        r = math.floor(y)
    else:
        r = math.floor(y)
        rem = y - r
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r % 2 == 1):
            r += 1
    res = r * Fraction(2) ** q
    maxf = (2 - Fraction(1, 2 ** man)) * Fraction(2) ** emax
    if res > maxf:
        return sign * maxf if rtz else sign * math.inf
    return sign * res


def ref_promoted(pw: list[Fraction], acc: PromotedAcc) -> float:
    def params(f: FloatAcc):
        bias = (1 << (f.exp_bits - 1)) - 1
        return f.man_bits, 1 - bias, (1 << f.exp_bits) - 2 - bias, f.rounding is AccRounding.TOWARD_ZERO

    outer = Fraction(0)
    for s in range(0, len(pw), acc.interval):
        part = Fraction(0)
        for p in pw[s:s + acc.interval]:
            part = round_ref(part + p, *params(acc.inner))
        outer = round_ref(outer + part, *params(acc.outer))
    return float(outer)


FINITE = [int(c) for c in E4M3.canonical_codes if np.isfinite(E4M3.decode([c])[0])]
VALS = E4M3.values()


@settings(max_examples=60)
@given(k=st.integers(1, 300), interval=st.sampled_from([1, 3, 32, 128, 1000]),
       inner=st.sampled_from(["e8m13_rtz", "e8m13", "e5m7_rtz", "bf16"]), data=st.data())
def test_matches_fraction_reference(k, interval, inner, data):
    """Every chunk of ``interval`` products accumulates from 0 in ``inner`` (one rounding per
    step), then adds into the fp32 outer accumulator with one rounding: equal, as float64 values,
    to an exact-rational reference of that definition."""
    w = np.array(data.draw(st.lists(st.sampled_from(FINITE), min_size=k, max_size=k)))
    a = np.array(data.draw(st.lists(st.sampled_from(FINITE), min_size=k, max_size=k)))
    acc = PromotedAcc(inner, "fp32", interval)
    got = promoted_dot(w, a, "fp8_e4m3", "fp8_e4m3", acc)
    pw = [Fraction(float(VALS[i])) * Fraction(float(VALS[j])) for i, j in zip(w, a)]
    want = ref_promoted(pw, acc)
    assert got.value == want or (math.isnan(want) and math.isnan(got.value))
    assert got.exact == float(sum(pw))


def test_labelled_hopper_example():
    """1.0 followed by 255 products 2**-14 (fp8 2**-7 x 2**-7): fp32 keeps every one (exact
    1 + 255 * 2**-14); the 1/8/13 truncating accumulator drops each 2**-14 added to 1.0 (its ulp
    there is 2**-13), so without promotion the sum stays 1.0; promoted every 128 products, the
    second chunk's 128 * 2**-14 = 2**-7 is summed exactly from 0 and added in fp32: 1 + 2**-7."""
    w = np.full(256, E4M3.encode([2.0 ** -7])[0])
    w[0] = E4M3.encode([1.0])[0]
    cases = {"fp32": 1 + 255 * 2.0 ** -14, "hopper_fp8_mma": 1 + 2.0 ** -7,
             "hopper_fp8_mma_nopromo": 1.0, "e8m13_rtz": 1.0}
    for acc, want in cases.items():
        r = dot(w, w, "fp8_e4m3", "fp8_e4m3", acc)
        assert float(r.value) == want, acc
        assert float(r.exact) == 1 + 255 * 2.0 ** -14
    assert PRESETS["hopper_fp8_mma"].inner == FloatAcc(8, 13, "toward_zero")
    assert PRESETS["hopper_fp8_mma"].interval == 128


def test_degenerate_cases_equal_plain_accumulation():
    """inner == outer == fp32 with interval 1 is plain fp32 accumulation (bit patterns equal);
    an fp32 inner over the whole K then one fp32 add of the partial to 0 is too."""
    rng = np.random.default_rng(1)
    w = rng.choice(FINITE, size=(6, 200))
    a = rng.choice(FINITE, size=200)
    ref = matvec(w, a, "fp8_e4m3", "fp8_e4m3", "fp32")
    for interval in (1, 10_000):
        got = matvec(w, a, "fp8_e4m3", "fp8_e4m3", PromotedAcc("fp32", "fp32", interval))
        np.testing.assert_array_equal(got.raw, ref.raw)
        assert got.value.shape == (6,)


def test_init_is_added_in_the_outer_accumulator():
    w = np.array([E4M3.encode([1.0])[0]] * 3)
    r = dot(w, w, "fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma", init=0.5)
    assert float(r.value) == 3.5 and float(r.exact) == 3.5


@pytest.mark.parametrize("make,match", [
    (lambda: PromotedAcc("e8m13_rtz", "fp32", 0), "interval"),
    (lambda: PromotedAcc("int32", "fp32", 128), "float accumulator"),
    (lambda: PromotedAcc("e8m13", "kulisch", 128), "float accumulator"),
    (lambda: promoted_dot([1], [1], "fp8_e4m3", "fp8_e4m3", "no_such_chip"), "unknown promoted"),
    (lambda: dot([1], [1], "fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma", rounding="toward_zero"), "overrides"),
    (lambda: dot(np.ones((2, 3), int), np.ones(4, int), "fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma"), "K"),
])
def test_bad_input(make, match):
    with pytest.raises(FmtlabError, match=match):
        make()
