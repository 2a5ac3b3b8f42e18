"""The perplexity check's protocol (fmtlab.models.perplexity) on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import TEXTS, CharTokenizer, tiny_llama

from fmtlab.errors import FmtlabError
from fmtlab.models.perplexity import SimLinear, perplexity, sim_quantized
from fmtlab.models.record import record


@pytest.fixture(scope="module")
def tiny():
    import torch

    m = tiny_llama()
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    return m, ids


@pytest.mark.parametrize("config", ["w8a8_int_tensor", "w8a8_llm_int8", "nvfp4", "fp32"])
def test_logits_do_not_depend_on_batch_size(tiny, config):
    """Dynamic scales are per sequence: batch sizes 1 and 4 give identical logits (torch.equal),
    and perplexity() gives the same number for batch sizes 1, 2 and 4."""
    import torch

    m, ids = tiny
    with sim_quantized(m, config) as q, torch.no_grad():
        big = q(ids).logits
        one = torch.cat([q(ids[i:i + 1]).logits for i in range(ids.shape[0])])
    assert torch.equal(big, one)
    ppl = {b: perplexity(m, None, config, ids=ids, batch_size=b, progress=False)["ppl"] for b in (1, 2, 4)}
    assert ppl[1] == ppl[2] == ppl[4]


def test_fp32_swap_matches_the_model_and_restores_it(tiny):
    """SimLinear with identity quantizers reproduces the model (float tolerance: per-sequence GEMMs),
    and the original modules are back after the block."""
    import torch

    m, ids = tiny
    before = [type(mod).__name__ for mod in m.modules()]
    with torch.no_grad():
        ref = m(ids).logits
        with sim_quantized(m, "w8a8_int_token") as q:
            assert sum(isinstance(mod, SimLinear) for mod in q.modules()) == 15  # 14 layers + fp32 head
        with sim_quantized(m, "fp32:w=fp32;a=fp32;t=hadamard") as q:
            got = q(ids).logits
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert [type(mod).__name__ for mod in m.modules()] == before


def test_static_and_fitted_configs_need_a_calibration_trace(tiny, tmp_path):
    """Static per-tensor W8A8 and SmoothQuant raise without calibration data; with a trace
    recorded on other text they run, and the static result differs from the dynamic one."""
    m, ids = tiny
    for cfg in ("w8a8_int_tensor_static", "w8a8_smoothquant"):
        with pytest.raises(FmtlabError, match="calibration"):
            perplexity(m, None, cfg, ids=ids, progress=False)
    cal = record(m, CharTokenizer(), TEXTS, str(tmp_path / "cal"), seq_len=16, n_sequences=2, progress=False)
    st = perplexity(m, None, "w8a8_int_tensor_static", ids=ids, calib=cal, progress=False)
    dyn = perplexity(m, None, "w8a8_int_tensor", ids=ids, progress=False)
    sq = perplexity(m, None, "w8a8_smoothquant", ids=ids, calib=cal, progress=False)
    assert np.isfinite(st["ppl"]) and np.isfinite(sq["ppl"]) and st["ppl"] != dyn["ppl"]
    assert len(st["seq_nll"]) == 4 and sum(st["seq_tokens"]) == st["tokens"] == 4 * 23
    assert st["nll"] == pytest.approx(sum(st["seq_nll"]) / st["tokens"])
