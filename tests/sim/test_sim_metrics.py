"""Each metric against a case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.sim.metrics import error_stats, outlier_stats, output_error_stats, pearson_kurtosis, sqnr_db


def test_hand_case_rates_and_errors():
    # x = [0, 1, -2, 0.1, 4, 10]; q (scale 1, clip at 4): [0, 1, -2, 0, 4, 4]
    x = np.float32([0, 1, -2, 0.1, 4, 10])
    q = np.float32([0, 1, -2, 0, 4, 4])
    clipped = np.array([0, 0, 0, 0, 0, 1], bool)
    s = error_stats(x, q, clipped)
    signal = 1 + 4 + 0.01 + 16 + 100  # 121.01
    noise = 0.01 + 36  # 36.01 (0.1 underflowed, 10 clipped to 4)
    assert s["underflow_rate"] == pytest.approx(1 / 5)  # one of five nonzero inputs became 0
    assert s["underflow_energy_frac"] == pytest.approx(0.01 / signal, rel=1e-6)
    assert s["clip_rate"] == pytest.approx(1 / 6)
    assert s["clipped_energy_frac"] == pytest.approx(100 / signal, rel=1e-6)
    assert s["clip_error_share"] == pytest.approx(36 / noise, rel=1e-6)
    assert s["mse"] == pytest.approx(noise / 6, rel=1e-6)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)
    assert s["max_abs_err"] == pytest.approx(6.0)


def test_exact_result_and_zero_signal():
    x = np.float32([1, 2, 3])
    s = error_stats(x, x.copy())
    assert s["sqnr_db"] == math.inf and s["mse"] == 0 and s["underflow_rate"] == 0
    assert math.isnan(s["clip_rate"])  # no mask given: unknown
    z = np.zeros(4, np.float32)
    s = error_stats(z, z, np.zeros(4, bool))
    assert math.isnan(s["underflow_rate"]) and math.isnan(s["sqnr_db"]) and s["clip_rate"] == 0


def test_shape_checks():
    with pytest.raises(ValueError, match="shape"):
        error_stats(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="clip mask"):
        error_stats(np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(2, bool))


def test_output_error_hand_case():
    y = np.float32([[3, 4]])  # energy 25
    yq = np.float32([[3, 5]])  # noise 1
    o = output_error_stats(y, yq)
    assert o["sqnr_db"] == pytest.approx(10 * math.log10(25))
    assert o["nsr"] == pytest.approx(1 / 25)
    assert o["mse"] == pytest.approx(0.5)
    assert o["max_abs_err"] == pytest.approx(1.0)


def test_sqnr_db_edges():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf
    assert math.isnan(sqnr_db(0.0, 1.0))


def test_kurtosis_hand_cases():
    # symmetric two-point distribution {-1, 1}: m4 / m2^2 = 1
    assert pearson_kurtosis(np.float32([-1, 1, -1, 1])) == pytest.approx(1.0)
    # [0, 0, 0, 4]: mean 1, deviations -1,-1,-1,3: m2 = 12/4 = 3, m4 = (1+1+1+81)/4 = 21 -> 21/9
    assert pearson_kurtosis(np.float32([0, 0, 0, 4])) == pytest.approx(21 / 9)
    assert math.isnan(pearson_kurtosis(np.ones(5, np.float32)))
    g = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    assert pearson_kurtosis(g) == pytest.approx(3.0, abs=0.05)


def test_outlier_stats_hand_case():
    x = np.full((4, 5), 0.5, np.float32)
    x[2, 3] = -50.0  # one outlier: token row 2, channel 3
    x[1, 0] = 7.0
    o = outlier_stats(x, top_k=2, positions=np.array([10, 11, 12, 13]))
    assert o["absmax"] == 50.0
    assert o["median_abs"] == 0.5
    assert o["max_over_median"] == 100.0
    assert o["channels_ge6"] == 2
    assert o["top_channels"] == [[3, 50.0], [0, 7.0]]
    assert o["top_tokens"] == [[12, 50.0], [11, 7.0]]  # positions, not row numbers


def test_outlier_stats_zero_median_uses_nonzero():
    x = np.zeros((2, 4), np.float32)
    x[0, 0], x[1, 1] = 2.0, 1.0
    o = outlier_stats(x)
    assert o["median_abs"] == 1.5 and o["max_over_median"] == pytest.approx(2 / 1.5)


def test_per_token_output_sqnr_median():
    """Row SQNRs: 10 log10(25 / 1) and 10 log10(1 / 0.01) = 20; their median is the mean of the two."""
    y = np.float32([[3, 4], [1, 0]])
    yq = np.float32([[3, 5], [1, 0.1]])
    o = output_error_stats(y, yq)
    assert o["tok_sqnr_db"] == pytest.approx((10 * math.log10(25) + 20.0) / 2, rel=1e-6)
    assert o["sqnr_db"] == pytest.approx(10 * math.log10(26 / 1.01), rel=1e-6)
