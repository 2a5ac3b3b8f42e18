"""Special-value rules as data (formats/special.py).

Invariants: a built-in rule reproduces the codes its layout comment names (checked against
hand-written tables); a rule equals and hashes like its name during the transition; MiniFloat
resolves a name to the registered rule object; registration refuses clashes and bad names with a
FormatError naming the problem; the registry grammar accepts a newly registered rule name and
forgets it when the rule is unregistered.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import MiniFloat, get_format
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.special import (
    CodePattern, Field, Special, SpecialRule, get_special_rule, register_special_rule,
    special_rule_names, unregister_special_rule,
)


def test_builtin_rules_and_transition_equality():
    assert special_rule_names()[:4] == ("ieee", "fn", "fnuz", "fin")
    f = MiniFloat(4, 3, special="fn")
    assert f.special is Special.FN and f.special == "fn" and hash(Special.FN) == hash("fn")
    assert {"fn": 1}[f.special] == 1 and str(f) == "e4m3_fn"
    assert MiniFloat(4, 3, special=Special.FN) == f
    assert get_special_rule("FNUZ") is Special.FNUZ


@pytest.mark.parametrize("name,layout", [
    ("fp8_e4m3", "no Inf, NaN S.1111.111"),
    ("fp8_e5m2", "Inf S.11111.00, NaN S.11111.(M!=0)"),
    ("fp8_e4m3fnuz", "no Inf, no -0, NaN 1.0000.000"),
    ("fp4_e2m1", "all codes finite (no Inf, no NaN)"),
    ("e4m0_ieee", "Inf S.1111, no NaN"),
])
def test_layout_lines(name, layout):
    f = get_format(name)
    assert f.special.layout(f.exp_bits, f.man_bits) == layout


def test_bias_offset_and_overflow_are_rule_data():
    assert get_format("e4m3_fnuz").bias == 8 and get_format("e4m3_fn").bias == 7
    assert [get_format(f"e4m3_{r}").default_overflow.value for r in ("ieee", "fn", "fnuz", "fin")] \
        == ["inf", "nan", "nan", "saturate"]


@pytest.mark.parametrize("make,match", [
    (lambda: SpecialRule("B5"), "lowercase"),
    (lambda: SpecialRule("ftz"), "name option"),
    (lambda: SpecialRule("x", overflow="inf"), "needs Inf codes"),
    (lambda: SpecialRule("x", overflow="nan"), "needs NaN codes"),
    (lambda: SpecialRule("x", nan=("S.111",)), "CodePattern"),
    (lambda: CodePattern(Field.ZERO, -1), "non-negative"),
    (lambda: CodePattern(Field.ZERO, 0, sign=2), "sign"),
    (lambda: register_special_rule(SpecialRule("fn")), "already registered"),
    (lambda: unregister_special_rule("ieee"), "cannot be unregistered"),
    (lambda: MiniFloat(4, 3, special="nosuchrule"), "special must be one of"),
])
def test_bad_rules(make, match):
    with pytest.raises(FormatError, match=match):
        make()


def test_register_then_parse_then_unregister():
    """A new rule name parses in the grammar; unregistering it makes the name unknown again."""
    rule = SpecialRule("tst", nan=(CodePattern(Field.ALL_ONES, Field.ALL_ONES, sign=1),),
                       overflow="nan", doc="only -NaN")
    with pytest.raises(FormatError, match="unknown format"):
        get_format("e3m2_tst")
    register_special_rule(rule)
    try:
        f = get_format("e3m2_tst")
        assert f.special is rule and f.nan_codes == {0x3F} and f.canonical_nan_code(False) == 0x3F
        # +0.111.11 stays finite (1.75 * 2**4): an asymmetric grid, so the table kernel encodes it
        assert f.max == 28.0 and f.min == -24.0 and not f.bit_layout
        x = np.array([27.0, -27.0, -25.0, np.nan, -np.nan, 100.0, -100.0])
        np.testing.assert_array_equal(f.encode(x), oracle_encode(f, x))
        assert get_format("e3m2_tst_b2").bias == 2
        with pytest.raises(FormatError, match="already registered"):
            register_special_rule(SpecialRule("tst"))
    finally:
        unregister_special_rule("tst")
    with pytest.raises(FormatError, match="unknown format"):
        get_format("e3m2_tst")


def test_gap_rule_is_encoded_by_the_table_kernel():
    """A NaN that leaves a hole among the finite magnitudes (S.11.00 in E2M2) is never produced:
    inputs near it round to the finite neighbours as the oracle says."""
    rule = register_special_rule(SpecialRule("gap", nan=(CodePattern(Field.ALL_ONES, Field.ZERO),)))
    try:
        f = MiniFloat(2, 2, special="gap")
        assert not f.bit_layout and f.nan_codes == {0b0_11_00, 0b1_11_00}
        x = np.linspace(-5, 5, 2001)
        got = f.encode(x)
        np.testing.assert_array_equal(got, oracle_encode(f, x))
        assert not set(got.tolist()) & f.nan_codes
        np.testing.assert_array_equal(f.quantize(x), f.decode(got))
        assert rule is f.special
    finally:
        unregister_special_rule("gap")


@pytest.mark.parametrize("name", ["e2m0_fn_b2", "e2m0_fnuz_b2", "e3m0_ieee_b4", "e2m0_fin_b0"])
def test_zero_mantissa_even_bias_ties(name):
    """Regression: with man_bits = 0 and an even bias the bit kernels read the tie parity off
    the float's exponent LSB, which is the wrong parity (0.75 in e2m0_fn_b2 went to 0.5 = code 1
    and 1.5 to the NaN code 3); such formats take the table kernel and match the oracle."""
    f = get_format(name)
    assert not f.bit_layout
    v = f.values()
    g = np.unique(v[np.isfinite(v)])
    x = np.concatenate([g, g[:-1] / 2 + g[1:] / 2, [f.max * 1.5, -f.max * 1.5]])
    for dt in (np.float32, np.float64):
        xx = x.astype(dt)
        np.testing.assert_array_equal(f.encode(xx), oracle_encode(f, xx.astype(np.float64)))
        np.testing.assert_array_equal(f.quantize(xx), f.decode(f.encode(xx), dtype=dt))
