"""LLM.int8() outlier-feature statistics on tiny Llamas with and without a planted outlier feature."""

from __future__ import annotations

import pytest

from fmtlab.errors import FmtlabError

pytest.importorskip("transformers")

from fmtlab.methods.outlier_features import analysed_inputs, outlier_feature_stats  # noqa: E402
from sim_helpers import TEXTS, CharTokenizer, tiny_llama  # noqa: E402


def test_analysed_inputs_are_q_and_gate_of_each_block():
    names = analysed_inputs(tiny_llama(layers=3))
    assert names == [f"model.layers.{i}.{p}" for i in range(3) for p in ("self_attn.q_proj", "mlp.gate_proj")]


def test_random_model_has_no_outlier_feature():
    st = outlier_feature_stats(tiny_llama(), CharTokenizer(), TEXTS, seq_len=16, n_sequences=2)
    assert st.features == () and st.layer_share == 0.0 and st.position_share == 0.0
    assert st.n_hidden_states == 4 and st.n_positions == 32 and 0 < st.max_abs < 6


def test_planted_feature_is_found_in_every_state_and_position():
    import torch

    model = tiny_llama(layers=2)
    with torch.no_grad():
        for layer in model.model.layers:  # feature 5 enters q_proj and gate_proj scaled by 1000
            layer.input_layernorm.weight[5] = 1000.0
            layer.post_attention_layernorm.weight[5] = 1000.0
    st = outlier_feature_stats(model, CharTokenizer(), TEXTS, seq_len=16, n_sequences=2)
    assert 5 in st.features and st.layer_share == 1.0 and st.position_share > 0.5 and st.max_abs >= 6


def test_feature_in_too_few_states_is_not_an_outlier_feature():
    import torch

    model = tiny_llama(layers=4)  # 8 analysed states; plant in one of them: 12.5% < 25%
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[3] = 1000.0
    st = outlier_feature_stats(model, CharTokenizer(), TEXTS, seq_len=16, n_sequences=2)
    assert 3 not in st.features and st.max_abs >= 6


def test_bad_alpha_is_refused():
    with pytest.raises(FmtlabError, match="alpha"):
        outlier_feature_stats(tiny_llama(), CharTokenizer(), TEXTS, seq_len=16, n_sequences=2, alpha=0)


def test_claim_runs_quick():
    from fmtlab.analysis.methods import MethodsContext, get_claim

    ctx = MethodsContext(tiny_llama(), CharTokenizer(), TEXTS[:1], TEXTS[1:], seq_len=16, n_calib=2, n_eval=2, quick=True)
    res = get_claim("llmint8").run(ctx)
    assert res.key == "llmint8" and res.verdict.value == "reproduced" and "0 outlier feature" in res.measured
