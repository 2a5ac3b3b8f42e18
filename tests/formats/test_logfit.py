"""Log_b Quant with a fitted base: exactness against LogFormat, the search, bad arguments."""

import math

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import Quantizer
from fmtlab.formats.logfit import (DEFAULT_GRID, FittedLogQuantizer, fit_log_base, log_quantize_slots,
                                   parse_logfit_name)
from fmtlab.formats.logfmt import LogFormat
from fmtlab.formats.scaling import PerChannel, PerTensor
from fmtlab.sim.quant import resolve


def _weights(seed=0, shape=(48, 128)):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 0.02
    w[:, :3] *= 8  # a few heavy columns, as in real weights
    return w


@pytest.mark.parametrize("base", [2.0, math.sqrt(2.0), 1.3, 1.7321, 3.1])
def test_vectorised_path_equals_log_format_quantizer_bit_for_bit(base):
    """Invariant: the per-slot vectorised quantization is Quantizer(LogFormat(bits, b)) exactly,
    per tensor and per output row (codes compared as float32 bit patterns)."""
    w = _weights(1)
    for bits in (3, 4, 5):
        ref_t = Quantizer(LogFormat(bits, base), PerTensor()).fake_quantize(w)
        ref_c = Quantizer(LogFormat(bits, base), PerChannel(0)).fake_quantize(w)
        assert np.array_equal(log_quantize_slots(w, bits, base).view(np.uint32), ref_t.view(np.uint32))
        assert np.array_equal(log_quantize_slots(w, bits, base, axis=0).view(np.uint32), ref_c.view(np.uint32))


def test_per_row_bases_equal_one_quantizer_per_row():
    """Each row with its own base is that base's LogFormat quantizer applied to the row alone."""
    w = _weights(2, (5, 64))
    bases = np.array([1.2, 1.5, 2.0, 2.5, 3.3])
    got = log_quantize_slots(w, 4, bases, axis=0)
    for r, b in enumerate(bases):
        ref = Quantizer(LogFormat(4, float(b)), PerTensor()).fake_quantize(w[r:r + 1])
        assert np.array_equal(got[r:r + 1].view(np.uint32), ref.view(np.uint32))


def test_golden_section_finds_the_grid_optimum():
    """On a large Gaussian tensor (a smooth MSE(b)), golden-section (coarse grid bracket + golden
    steps) reaches the optimum of a fine grid (100 bases, 0.2% apart, around the optimum ~1.56)
    within 0.1% of its MSE and 1% of its base, and never does worse than the coarse grid."""
    w = np.random.default_rng(3).standard_normal((128, 512)).astype(np.float32)
    gold = fit_log_base(w, 4, None, "golden")
    fine = fit_log_base(w, 4, None, "grid", grid=np.geomspace(1.4, 1.75, 100))
    assert gold.mse[0] <= fine.mse[0] * (1 + 1e-3)
    assert abs(gold.bases[0] / fine.bases[0] - 1) < 0.01
    coarse = fit_log_base(w, 4, None, "grid", grid=np.geomspace(1.05, 4.0, 24))
    assert gold.mse[0] <= coarse.mse[0]
    per_row = fit_log_base(_weights(3), 4, 0, "golden")
    assert per_row.bases.shape == (48,) and np.all(per_row.bases > 1)


def test_fitted_base_mse_not_worse_than_base_2():
    """Invariant: the fitted base's MSE <= base 2's, per tensor and per row, for both methods (2 and
    sqrt(2) are always among the evaluated bases; slack 1e-9 for the search's formula tables)."""
    w = _weights(4)
    for axis in (None, 0):
        q2 = log_quantize_slots(w, 4, 2.0, axis=axis)
        e2 = np.mean((q2.astype(np.float64) - w) ** 2, axis=None if axis is None else 1)
        for method in ("golden", "grid"):
            fq = FittedLogQuantizer(4, axis, method).fake_quantize(w)
            e = np.mean((fq.astype(np.float64) - w) ** 2, axis=None if axis is None else 1)
            assert np.all(e <= e2 * (1 + 1e-9)), (axis, method)
    assert 2.0 in DEFAULT_GRID


def test_spec_names_through_replay_resolver():
    assert parse_logfit_name("log4_fitb_per_channel") == {"bits": 4, "axis": 0, "method": "golden"}
    assert parse_logfit_name("log4_fitb_per_tensor_grid") == {"bits": 4, "axis": None, "method": "grid"}
    w = _weights(5)
    q = resolve("log4_fitb_per_channel")
    assert np.array_equal(q(w), FittedLogQuantizer(4, 0).fake_quantize(w))
    assert not q.with_mask(w)[1].any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(method="newton"), "method"),
    (dict(grid=[0.5, 2.0, 3.0]), "grid"), (dict(grid=[2.0]), "grid"), (dict(tol=0), "tol"),
    (dict(axis=1), "axis"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(FmtlabError, match=match):
        fit_log_base(_weights(6), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(FmtlabError, match="finite"):
        fit_log_base(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(FmtlabError, match="empty"):
        fit_log_base(np.zeros((0, 3), np.float32))
    with pytest.raises(FmtlabError, match="bases"):
        log_quantize_slots(_weights(7), 4, 1.0)
    with pytest.raises(FmtlabError, match="slot"):
        log_quantize_slots(_weights(7), 4, [1.5, 2.0], axis=0)


def test_search_objective_equals_exact_sse():
    """The sorted-prefix-sum objective of the search equals the SSE of the exact quantization up to
    the float32 rounding of the quantized values (relative 1e-6), per tensor and per row, at bases
    off and on the standard grid."""
    from fmtlab.formats.logfit import SearchObjective

    w = _weights(8)
    for axis in (None, 0):
        M = w.reshape(1, -1) if axis is None else w
        obj = SearchObjective(M, 4)
        for b in (1.21, 1.5, 2.0, 2.9):
            q = log_quantize_slots(w, 4, b, axis=axis).reshape(M.shape)
            exact = ((q.astype(np.float64) - M) ** 2).sum(axis=1)
            assert np.allclose(obj.sse(np.full(M.shape[0], b)), exact, rtol=1e-6, atol=0)
