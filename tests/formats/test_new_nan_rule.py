"""A new minifloat special-value rule, defined here (outside fmtlab's sources) and nowhere else.

The rule: E3M3 (any E, M) whose only NaNs are S.111.000 (exponent all ones, mantissa zero, both
signs), with no -0 (the code 1.000.000 is unused), no Inf, and overflow saturating. The NaN sits
*inside* the top binade, so the finite grid has a hole at 2**(7 - bias) = 16: inputs near 16
round to 15 or 17 (never to the NaN), which the bit-trick kernels cannot express; the format
says so (``bit_layout`` is False) and is encoded by the exact table kernel.

Invariants: get_format("e3m3_gapnan") parses once the rule is registered; every value, every
midpoint and both float32 neighbours of each encode exactly as the oracle says under every mode;
NaN inputs give the rule's NaN with the input's sign; decode(encode(x)) is idempotent; the
hypothesis strategies draw members of the new rule; ``fmtlab formats`` shows its layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.cli import main
from fmtlab.formats import (MiniFloat, Overflow, Rounding, SpecialRule, get_format,
                            register_special_rule)
from fmtlab.formats import strategies as fst
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.special import CodePattern, Field, unregister_special_rule

GAPNAN = SpecialRule(
    "gapnan", nan=(CodePattern(Field.ALL_ONES, Field.ZERO),), negative_zero=False,
    overflow=Overflow.SATURATE, doc="E all ones with M = 0 is NaN (both signs); no -0, no Inf")


@pytest.fixture(autouse=True, scope="module")
def gapnan_rule():
    """Register the rule for this module only (other modules' random minifloats stay built-in)."""
    register_special_rule(GAPNAN)
    yield GAPNAN
    unregister_special_rule("gapnan")


def test_name_parses_and_facts():
    f = get_format("e3m3_gapnan")
    assert f == MiniFloat(3, 3, special=GAPNAN) and f.special is GAPNAN and str(f) == "e3m3_gapnan"
    assert f.nan_codes == {0b0_111_000, 0b1_111_000} and f.inf_codes == frozenset()
    assert f.unused_codes == {0b1_000_000} and f.negative_zero_code is None
    assert (f.bias, f.max, f.min, f.default_overflow) == (3, 30.0, -30.0, Overflow.SATURATE)
    assert f.canonical_nan_code(False) == 0x38 and f.canonical_nan_code(True) == 0x78
    assert not f.bit_layout
    v = f.values()
    assert v[0b0_110_111] == 15.0 and np.isnan(v[0b0_111_000]) and v[0b0_111_001] == 18.0
    assert get_format("e3m3_gapnan_b2").max == 60.0


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exhaustive_vs_oracle(rounding, dtype):
    """Every value, midpoint (the hole around 16 included), both neighbours, +/-0, +/-Inf, NaN."""
    f = get_format("e3m3_gapnan")
    x = np.asarray(fst.boundary_points(f, dtype))
    rand = np.random.default_rng(5).random(x.size)
    got = f.encode(x, rounding, seed=5)
    want = oracle_encode(f, x.astype(np.float64), rounding, rand=rand)
    np.testing.assert_array_equal(got, want)
    fin = np.isfinite(x)
    assert not set(got[fin].tolist()) & f.nan_codes  # finite inputs never give the NaN
    assert 0b1_000_000 not in set(got.tolist())  # the unused -0 code is never produced


@pytest.mark.parametrize("x,code,why", [
    (16.0, 0b0_110_111, "the hole: 16 is NaN, 15 (code 0x37) and 18 (0x39) are its neighbours; "
                        "16 - 15 < 18 - 16"),
    (16.5, 0b0_110_111, "16.5 is the midpoint of 15 and 18: a tie between two odd codes "
                        "(0x37, 0x39) goes to the smaller magnitude"),
    (16.5000001, 0b0_111_001, "just above the tie: 18"),
    (17.0, 0b0_111_001, "nearer 18"),
    (-16.0, 0b1_110_111, "mirror"),
    (-0.0, 0, "no -0: the zero code"),
    (1e9, 0b0_111_111, "saturates at 30"),
])
def test_labelled(x, code, why):
    f = get_format("e3m3_gapnan")
    assert int(f.encode(np.array([x]))[0]) == code, why
    assert int(oracle_encode(f, np.array([x]))[0]) == code, why


def test_nan_inputs_and_quantize():
    f = get_format("e3m3_gapnan")
    np.testing.assert_array_equal(f.encode(np.array([np.nan, -np.nan])), [0x38, 0x78])
    x = np.linspace(-40, 40, 801)
    q = f.quantize(x)
    np.testing.assert_array_equal(f.quantize(q), q)
    np.testing.assert_array_equal(q, f.decode(f.encode(x)))


@settings(max_examples=40, deadline=None)
@given(fst.minifloats(max_bits=9, specials=["gapnan"]), fst.roundings(stochastic=False), st.data())
def test_strategies_draw_the_new_rule(fmt, rounding, data):
    """Random E, M, bias, subnormals under the new rule: encode == oracle."""
    assert fmt.special is GAPNAN
    x = data.draw(fst.input_arrays(fmt, 32, max_side=8))
    np.testing.assert_array_equal(fmt.encode(x, rounding), oracle_encode(fmt, x.astype(np.float64), rounding))


def test_cli_shows_the_rule(capsys):
    assert main(["formats", "list", "e3m3_gapnan"]) == 0
    out = capsys.readouterr().out
    assert "S.EEE.MMM, bias 3; no Inf, no -0, NaN S.111.000" in out
    assert main(["formats", "show", "e3m3_gapnan"]) == 0
    out = capsys.readouterr().out
    assert "0.111.000  0x38  nan" in out and "1.000.000  0x40  nan                       unused" in out


def test_quantizer_takes_the_table_path():
    from fmtlab.formats import Quantizer

    f = get_format("e3m3_gapnan")
    x = np.linspace(-30, 30, 64).astype(np.float32)
    qt = Quantizer(f, scale_rule=1.0).quantize(x)
    np.testing.assert_array_equal(qt.codes, f.encode(x))
