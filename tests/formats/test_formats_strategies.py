"""The exported hypothesis strategies (fmtlab.formats.strategies) do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.formats import Format, Overflow, Rounding, get_format
from fmtlab.formats import strategies as fst


@settings(max_examples=200)
@given(st.data())
def test_formats_respect_families_and_bits(data):
    fams = data.draw(st.lists(st.sampled_from(fst.FAMILIES), min_size=1, unique=True))
    max_bits = data.draw(st.integers(8, 16))
    f = data.draw(fst.formats(families=fams, max_bits=max_bits))
    assert isinstance(f, Format) and f.family in fams and f.bits <= max_bits
    assert f.max > 0 and np.isfinite(f.max)


@settings(max_examples=100)
@given(st.data())
def test_value_code_and_input_strategies(data):
    f = data.draw(fst.formats(max_bits=10))
    c = data.draw(fst.codes(f))
    assert 0 <= c < 1 << f.bits
    assert data.draw(fst.canonical_codes(f)) in set(f.canonical_codes.tolist())
    v = data.draw(fst.values(f))
    assert v in set(f.values()[np.isfinite(f.values())].tolist())
    x = data.draw(fst.input_arrays(f, 32))
    assert x.dtype == np.float32 and x.ndim <= 2
    assert data.draw(fst.roundings(stochastic=False)) is not Rounding.STOCHASTIC
    o = data.draw(fst.overflows(f))
    assert o is None or o is Overflow.SATURATE or (o is Overflow.INF and f.has_inf) or \
        (o is Overflow.NAN and f.has_nan)
    assert isinstance(data.draw(fst.midpoints(f)), float)


def test_boundary_points_contents():
    f = get_format("fp4_e2m1")
    p = fst.boundary_points(f, np.float32)
    assert p.dtype == np.float32 and not p.flags.writeable
    finite = p[np.isfinite(p)]
    assert np.all(np.diff(finite) >= 0)
    for v in [0.25, 0.75, 5.0, 7.0, -7.0, 6.0, 0.5]:  # midpoints (7: the overflow threshold) and values
        assert v in finite
    assert np.float32(np.nextafter(np.float32(0.25), np.float32(1))) in finite
    assert np.isnan(p[-2:]).all() and np.signbit(p[-1]) and not np.signbit(p[-2])
    assert np.isinf(p).sum() == 2 and ((p == 0) & np.signbit(p)).sum() == 1


def test_bulk_inputs_is_deterministic_and_large():
    f = get_format("fp8_e5m2")
    a = fst.bulk_inputs(f, 300_000, seed=1)
    b = fst.bulk_inputs(f, 300_000, seed=1)
    assert a.size >= 300_000 and a.dtype == np.float32
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert np.isnan(a).any() and np.isinf(a).any() and (np.abs(a) < 2.0 ** -126).any()
    assert fst.bulk_inputs(f, 10, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("call", [
    lambda: fst.formats(families=["float"]), lambda: fst.formats(families=[]),
    lambda: fst.formats(max_bits=17), lambda: fst.formats(max_bits=1),
    lambda: fst.boundary_points(get_format("int4"), np.int8),
    lambda: fst.float_inputs(get_format("int4"), width=8),
    lambda: fst.minifloats(specials=["ocp"]).example(),
    lambda: fst.bulk_inputs(get_format("int4"), -1)])
def test_argument_validation(call):
    with pytest.raises(ValueError):
        call()
