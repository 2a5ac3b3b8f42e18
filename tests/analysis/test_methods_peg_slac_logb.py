"""The peg, slac, logb and dint_optq claims run end to end (quick mode) on a tiny random llama."""

import pytest
from sim_helpers import TEXTS, CharTokenizer, tiny_llama

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict


@pytest.fixture(scope="module")
def ctx():
    """Quick context on a tiny llama; one torch and numba thread (small parallel ops stall on a loaded machine)."""
    import numba
    import torch

    before, nb_before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield MethodsContext(tiny_llama(), CharTokenizer(), [TEXTS[0] * 4], [TEXTS[1] * 4], seq_len=16,
                          n_calib=2, n_eval=3, seed=0, quick=True)
    torch.set_num_threads(before)
    numba.set_num_threads(nb_before)


@pytest.mark.parametrize("key", ["peg", "slac", "logb", "dint_optq"])
def test_claim_runs_and_reports_intervals(ctx, key, tmp_path, monkeypatch):
    """Each claim registers under its key, returns a ClaimResult with a verdict, a measured line
    carrying bracketed intervals, and JSON-safe numbers."""
    import importlib
    import json

    from fmtlab.analysis.methods import get_claim

    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))  # dint_optq's Hessians / fitted weights
    importlib.import_module(f"fmtlab.analysis.methods.{key}")
    claim = get_claim(key)
    res = claim.run(ctx)
    assert isinstance(res, ClaimResult) and res.key == key
    assert res.verdict in (Verdict.REPRODUCED, Verdict.NOT_REPRODUCED)
    assert "[" in res.measured and res.reason
    json.dumps(res.numbers)
