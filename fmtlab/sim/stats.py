"""Seeded bootstrap intervals over sequences for the report's headline metrics.

A metric is a function of per-sequence arrays (``stat(*arrays) -> float``, each array indexed by
sequence along axis 0, e.g. per-sequence noise and signal energies of every layer). The bootstrap
resamples sequences with replacement (``n_boot`` draws from ``numpy.random.default_rng(seed)``) and
reports the percentile interval of the statistic. :func:`paired_difference` resamples the *same*
sequence indices for two configs, so the interval is that of the difference ``a - b``, and says
whether it excludes zero. The same seed gives the same interval on every run.

Fewer than 2 sequences cannot give an interval: FmtlabError. Draws whose statistic is not
finite (e.g. an SQNR of +inf for an exact config) are left out of the percentiles; when no draw
is finite the interval collapses to the point estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fmtlab.errors import FmtlabError

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0

Stat = Callable[..., float]


@dataclass(frozen=True)
class Interval:
    """Point estimate (on all sequences) with a ``level`` percentile bootstrap interval [lo, hi]."""

    value: float
    lo: float
    hi: float
    level: float = 0.95
    n_sequences: int = 0

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly above or strictly below 0."""
        return bool(self.lo > 0 or self.hi < 0)

    def text(self, digits: int = 2, unit: str = "") -> str:
        """``"12.34 [11.90, 12.80]"`` (with ``unit`` appended to the value)."""
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.value)}{unit} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _check(arrays: Sequence[np.ndarray], level: float, n_boot: int) -> int:
    if not arrays:
        raise FmtlabError("bootstrap needs at least one per-sequence array")
    n = int(np.asarray(arrays[0]).shape[0]) if np.asarray(arrays[0]).ndim else 0
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] != n:
            raise FmtlabError(f"per-sequence arrays must share axis 0; got shapes {[np.shape(x) for x in arrays]}")
    if n < 2:
        raise FmtlabError(f"a bootstrap interval over sequences needs at least 2 sequences, got {n}")
    if not 0.0 < level < 1.0:
        raise FmtlabError(f"level must lie in (0, 1), got {level=}")
    if n_boot < 1:
        raise FmtlabError(f"n_boot must be >= 1, got {n_boot=}")
    return n


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(point: float, draws: np.ndarray, level: float, n: int) -> Interval:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return Interval(point, point, point, level, n)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [100.0 * a, 100.0 * (1.0 - a)])
    return Interval(float(point), float(lo), float(hi), level, n)


def bootstrap(stat: Stat, *arrays: np.ndarray, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT,
              seed: int = DEFAULT_SEED) -> Interval:
    """Percentile bootstrap interval of ``stat(*arrays)`` resampling sequences (axis 0)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = _check(arrays, level, n_boot)
    point = float(stat(*arrays))
    idx = _indices(n, n_boot, seed)
    draws = np.array([stat(*(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    return _interval(point, draws, level, n)


def paired_difference(stat: Stat, a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, level: float = 0.95,
                      n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED) -> Interval:
    """Interval of ``stat(*a) - stat(*b)`` with the same resampled sequences on both sides.

    ``a`` and ``b`` are tuples of per-sequence arrays measured on the same sequences (same order).
    """
    a = tuple(np.asarray(x) for x in a)
    b = tuple(np.asarray(x) for x in b)
    n = _check(a + b, level, n_boot)
    point = float(stat(*a)) - float(stat(*b))
    draws = np.array([stat(*(x[i] for x in a)) - stat(*(x[i] for x in b)) for i in _indices(n, n_boot, seed)],
                     dtype=np.float64)
    return _interval(point, draws, level, n)


# --------------------------------------------------------------- the report's statistics

def pooled_sqnr_db(noise: np.ndarray, signal: np.ndarray) -> float:
    """-10 log10(mean over layers of sum noise / sum signal); ``noise``/``signal`` are [sequences, layers]."""
    s = signal.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nsr = np.where(s > 0, noise.sum(axis=0) / s, np.nan)
    m = float(np.nanmean(nsr)) if np.any(~np.isnan(nsr)) else math.nan
    if math.isnan(m):
        return math.nan
    return math.inf if m <= 0 else -10.0 * math.log10(m)


def mean_rate(hits: np.ndarray, totals: np.ndarray) -> float:
    """Mean over layers of sum hits / sum totals ([sequences, layers]); layers with no totals skipped."""
    t = totals.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(t > 0, hits.sum(axis=0) / t, np.nan)
    return float(np.nanmean(r)) if np.any(~np.isnan(r)) else math.nan


def perplexity_of(nll_sum: np.ndarray, tokens: np.ndarray) -> float:
    """exp(sum NLL / sum tokens) over sequences."""
    t = float(np.sum(tokens))
    return math.exp(float(np.sum(nll_sum)) / t) if t > 0 else math.nan
