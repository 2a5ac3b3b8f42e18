"""SLAC: static scales calibrated at several sequence lengths, scored at one target length."""

import math

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.methods.slac import format_rows, slac_curve
from sim_helpers import TEXTS, CharTokenizer, tiny_llama

CAL = [TEXTS[0] * 3]
EV = [TEXTS[1] * 3]


@pytest.fixture(scope="module")
def model():
    """A tiny llama; one torch and numba thread (small parallel ops stall on a loaded machine)."""
    import numba
    import torch

    before, nb_before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield tiny_llama()
    torch.set_num_threads(before)
    numba.set_num_threads(nb_before)


def test_one_row_per_length_with_intervals(model):
    """One row per calibration length (ascending), each with a perplexity interval that holds the
    point estimate, a paired difference to the reference length (zero at the reference itself),
    and the calibration token budget split into calib_tokens // L sequences."""
    rows = slac_curve(model, CharTokenizer(), CAL, EV, lengths=(32, 8, 16), target_len=32, calib_tokens=64,
                      n_eval=3, activations="int8_per_tensor_p99", n_boot=50)
    assert [r["calib_len"] for r in rows] == [8, 16, 32]
    assert [r["n_calib_sequences"] for r in rows] == [8, 4, 2]
    for r in rows:
        assert r["ppl_lo"] <= r["ppl"] <= r["ppl_hi"] and math.isfinite(r["ppl"])
        assert r["d_lo"] <= r["d_ppl"] <= r["d_hi"]
        assert r["ref_len"] == 32 and r["target_len"] == 32 and r["scale_gmean"] > 0
    ref = rows[-1]
    assert ref["d_ppl"] == 0.0 and not ref["d_excludes_zero"]
    # the percentile rule sees a different share of the first tokens at each length
    assert len({r["scale_gmean"] for r in rows}) > 1
    assert "calib L" in format_rows(rows)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=()), "lengths"), (dict(lengths=(1, 8)), "lengths"), (dict(n_eval=1), "n_eval"),
    (dict(calib_tokens=8, lengths=(16,)), "calib_tokens"), (dict(lengths=(256,), calib_tokens=512), "context"),
])
def test_bad_arguments_raise(model, kwargs, match):
    kw = dict(lengths=(8,), target_len=16, calib_tokens=32, n_eval=2)
    kw.update(kwargs)
    with pytest.raises(FmtlabError, match=match):
        slac_curve(model, CharTokenizer(), CAL, EV, **kw)


def test_layerwise_variant_one_row_per_spec_and_length(model):
    """slac_sqnr_curve: one row per (spec, length) with an SQNR interval holding the estimate and
    a paired difference that is exactly zero at the reference length; the percentile rule gives
    length-dependent scales, absmax over the same calibration tokens changes less or not at all."""
    from fmtlab.methods.slac import slac_sqnr_curve

    rows = slac_sqnr_curve(model, CharTokenizer(), CAL, EV, lengths=(8, 32), target_len=32, calib_tokens=64,
                           n_eval=3, activations=("int8_per_tensor", "int8_per_tensor_p99"), n_boot=50)
    assert [(r["activations"], r["calib_len"]) for r in rows] == [
        ("int8_per_tensor", 8), ("int8_per_tensor", 32), ("int8_per_tensor_p99", 8), ("int8_per_tensor_p99", 32)]
    for r in rows:
        assert r["sqnr_lo"] <= r["sqnr_db"] <= r["sqnr_hi"] and math.isfinite(r["sqnr_db"])
    assert rows[1]["d_sqnr_db"] == 0.0 and rows[3]["d_sqnr_db"] == 0.0
    with pytest.raises(FmtlabError, match="per-tensor"):
        slac_sqnr_curve(model, CharTokenizer(), CAL, EV, lengths=(8,), target_len=16, calib_tokens=32, n_eval=2,
                        activations="int8_per_token")
