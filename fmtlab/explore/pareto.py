"""Pareto fronts of (cost, quality) points: the front of ``fmtlab explore`` and the report's
trade-off plot."""

from __future__ import annotations

import numpy as np

__all__ = ["pareto_front"]


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Boolean mask of points not dominated by another (lower-or-equal cost AND higher-or-equal
    quality, strictly better in one). NaN points are never on the front."""
    cost = np.asarray(cost, dtype=float)
    quality = np.asarray(quality, dtype=float)
    ok = np.isfinite(cost) & np.isfinite(quality)
    front = np.zeros(cost.shape, dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        front[i] = not dominated.any()
    return front
