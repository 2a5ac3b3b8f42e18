"""The Pareto front of (cost, quality) points (fmtlab.explore.pareto)."""

import numpy as np

from fmtlab.explore.pareto import pareto_front


def test_pareto_front_hand_case():
    # cost, quality: (1, 10) and (2, 20) are on the front; (3, 15) is dominated by (2, 20);
    # (2, 5) is dominated by (1, 10); NaN is never on the front.
    cost = np.array([1, 2, 3, 2, np.nan])
    quality = np.array([10, 20, 15, 5, 30])
    assert pareto_front(cost, quality).tolist() == [True, True, False, False, False]


def test_pareto_front_ties_are_kept():
    assert pareto_front([1, 1], [5, 5]).tolist() == [True, True]
