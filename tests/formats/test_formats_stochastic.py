"""Stochastic rounding: unbiased in expectation, only ever the two neighbours, reproducible.

Tolerance: for each input x between adjacent values L < x < U, the mean of N draws of
q(x) has standard deviation sigma = (U - L) * sqrt(p (1 - p) / N), p = (x - L) / (U - L);
the test allows 5 sigma per input (fixed seeds, so the outcome is deterministic; the bound
is what a correct implementation passes with probability > 1 - 1e-5 per input).
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.formats import get_format
from fmtlab.formats.oracle import oracle_encode, oracle_table

N = 20000
NAMES = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e2m3", "int4", "uint4", "int8_sym", "dint4",
         "log4", "log4_lin", "log4_b1.4142135623730951", "bf16", "e3m2_fnuz_ftz"]


def probe_points(fmt, k: int = 12) -> np.ndarray:
    """k inexact inputs spread over the range: between adjacent values, both signs,
    including the smallest interval next to zero."""
    t = oracle_table(fmt)
    vals = np.array(t.vals[1:-1])
    rng = np.random.default_rng(99)
    idx = np.unique(np.concatenate([rng.integers(0, vals.size - 1, k), [np.searchsorted(vals, 0.0)]]))
    idx = idx[idx < vals.size - 1]
    frac = rng.uniform(0.05, 0.95, idx.size)
    return vals[idx] + frac * (vals[idx + 1] - vals[idx])


@pytest.mark.parametrize("name", NAMES)
def test_unbiased_in_expectation(name):
    fmt = get_format(name)
    xs = probe_points(fmt)
    x = np.repeat(xs, N)
    q = fmt.quantize(x, "stochastic", overflow="saturate", seed=1234).reshape(xs.size, N)
    t = oracle_table(fmt)
    vals = np.array(t.vals)
    for i, xi in enumerate(xs):
        j = np.searchsorted(vals, xi, side="right") - 1
        L, U = vals[j], vals[j + 1]
        assert set(np.unique(q[i])) <= {L, U}, "stochastic rounding gives only the two neighbours"
        p = (xi - L) / (U - L)
        sigma = (U - L) * np.sqrt(p * (1 - p) / N)
        assert abs(q[i].mean() - xi) <= 5 * sigma, (xi, q[i].mean(), sigma)


def test_probability_of_rounding_up_is_linear():
    """For x = L + p (U - L) the fraction of draws that go up is p (here U - L = 1 in INT8)."""
    fmt = get_format("int8")
    for p in (0.1, 0.25, 0.5, 0.9):
        up = fmt.encode(np.full(N, 3 + p), "stochastic", seed=5) == 4
        assert abs(up.mean() - p) <= 5 * np.sqrt(p * (1 - p) / N)


def test_reproducible_for_a_fixed_seed():
    fmt = get_format("fp8_e4m3")
    x = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    a = fmt.encode(x, "stochastic", seed=42)
    np.testing.assert_array_equal(a, fmt.encode(x, "stochastic", seed=42))
    np.testing.assert_array_equal(a, fmt.encode(x, "stochastic", seed=np.random.default_rng(42)))
    assert np.any(a != fmt.encode(x, "stochastic", seed=43))
    g = np.random.default_rng(7)
    first, second = fmt.encode(x, "stochastic", seed=g), fmt.encode(x, "stochastic", seed=g)
    assert np.any(first != second), "a Generator advances between calls"


def test_draws_are_documented():
    """The draws are rng.random(x.size) in C order: x goes up iff draw < (x - L) / (U - L)."""
    fmt = get_format("fp6_e3m2")
    x = np.random.default_rng(1).normal(scale=4, size=(40, 30))
    rand = np.random.default_rng(9).random(x.size)
    np.testing.assert_array_equal(fmt.encode(x, "stochastic", seed=9), oracle_encode(fmt, x, "stochastic", rand=rand))


def test_seed_is_explicit():
    fmt = get_format("int8")
    with pytest.raises(ValueError, match="seed"):
        fmt.encode([0.5], "stochastic")
    with pytest.raises(TypeError, match="seed"):
        fmt.encode([0.5], "stochastic", seed="1")
    with pytest.raises(TypeError, match="seed"):
        fmt.encode([0.5], "stochastic", seed=True)


def test_stochastic_overflow_follows_policy():
    """Between max and the virtual value beyond it, going up is an overflow."""
    fmt = get_format("fp8_e5m2")
    x = np.full(4000, 60000.0)  # between 57344 and the virtual 65536
    c = fmt.encode(x, "stochastic", seed=3)
    assert set(np.unique(c)) == {0x7B, 0x7C}
    c = fmt.encode(x, "stochastic", overflow="saturate", seed=3)
    assert set(np.unique(c)) == {0x7B}
