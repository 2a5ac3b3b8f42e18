"""Bootstrap intervals over sequences (fmtlab.sim.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.sim import stats


def test_coverage_of_a_known_mean():
    """Over 200 synthetic data sets of 30 N(1, 1) 'sequences', the 95% interval of the mean
    contains the true mean 1.0 in roughly 95% of them (percentile bootstrap: 88-99%)."""
    rng = np.random.default_rng(123)
    hits = 0
    for k in range(200):
        x = rng.normal(1.0, 1.0, size=30)
        iv = stats.bootstrap(np.mean, x, n_boot=400, seed=k)
        hits += iv.lo <= 1.0 <= iv.hi
        assert iv.lo <= iv.value <= iv.hi
    assert 0.88 <= hits / 200 <= 0.99


def test_seed_determinism_and_seed_dependence():
    """The same seed gives the identical interval; another seed a different one."""
    x = np.random.default_rng(1).normal(size=20)
    a = stats.bootstrap(np.mean, x, seed=7)
    b = stats.bootstrap(np.mean, x, seed=7)
    c = stats.bootstrap(np.mean, x, seed=8)
    assert a == b
    assert (a.lo, a.hi) != (c.lo, c.hi)


def test_paired_difference_excludes_zero_only_for_a_real_difference():
    """Paired resampling cancels the shared per-sequence variation: a constant +0.1 offset is
    detected even though the sequences themselves vary by ~1; identical inputs give [0, 0]."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=12)
    d = stats.paired_difference(np.mean, (base + 0.1,), (base,))
    assert d.value == pytest.approx(0.1) and d.excludes_zero
    z = stats.paired_difference(np.mean, (base,), (base,))
    assert z.lo == z.hi == 0.0 and not z.excludes_zero


def test_fewer_than_two_sequences_and_bad_arguments_raise():
    with pytest.raises(FmtlabError, match="at least 2 sequences"):
        stats.bootstrap(np.mean, np.array([1.0]))
    with pytest.raises(FmtlabError, match="share axis 0"):
        stats.bootstrap(lambda a, b: 0.0, np.zeros(3), np.zeros(4))
    with pytest.raises(FmtlabError, match="level"):
        stats.bootstrap(np.mean, np.zeros(3), level=1.5)


def test_report_statistics():
    """pooled SQNR / mean rate / perplexity on hand values."""
    noise = np.array([[1.0, 2.0], [1.0, 2.0]])
    signal = np.array([[100.0, 100.0], [100.0, 100.0]])
    assert stats.pooled_sqnr_db(noise, signal) == pytest.approx(-10 * math.log10((0.01 + 0.02) / 2))
    assert stats.pooled_sqnr_db(np.zeros((2, 2)), signal) == math.inf
    assert stats.mean_rate(np.array([[1, 0], [1, 2]]), np.array([[4, 0], [4, 4]])) == pytest.approx((2 / 8 + 2 / 4) / 2)
    assert stats.perplexity_of(np.array([2.0, 4.0]), np.array([2, 2])) == pytest.approx(math.exp(1.5))
    iv = stats.bootstrap(stats.pooled_sqnr_db, np.zeros((3, 2)), np.ones((3, 2)))
    assert iv.value == iv.lo == iv.hi == math.inf
