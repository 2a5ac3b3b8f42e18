"""Recording hooks on tiny random Llama and GPT-2 models (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sim_helpers import TEXTS, CharTokenizer, tiny_gpt2, tiny_llama

from fmtlab.errors import FmtlabError
from fmtlab.sim.data import token_windows
from fmtlab.models.record import find_blocks, find_linear_layers, record


@pytest.fixture(scope="module")
def llama_trace(tmp_path_factory):
    m = tiny_llama()
    tr = record(m, CharTokenizer(), TEXTS, str(tmp_path_factory.mktemp("t") / "llama"), seq_len=16, n_sequences=3,
                batch_size=2, residual=True, attention=True, kv=True, progress=False)
    return m, tr


def test_linear_layers_found_and_head_skipped():
    m = tiny_llama()
    names = [n for n, _, _ in find_linear_layers(m)]
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert "lm_head" in [n for n, _, _ in find_linear_layers(m, include_head=True)]
    assert [n for n, _, _ in find_linear_layers(m, "down_proj")] == ["model.layers.0.mlp.down_proj",
                                                                       "model.layers.1.mlp.down_proj"]
    assert [b for b, _ in find_blocks(m)] == ["model.layers.0", "model.layers.1"]
    with pytest.raises(FmtlabError, match="no Linear-like layer named"):
        find_linear_layers(m, ["nope"])


def test_recorded_xw_reproduces_output(llama_trace):
    m, tr = llama_trace
    assert len(tr.layers) == 14 and tr.manifest["n_tokens"] == 48
    for name, meta in tr.layers.items():
        x = tr.tensor(meta["input"])
        w = tr.tensor(meta["weight"])
        y = tr.tensor(meta["output"])
        assert x.shape == (48, meta["in_features"]) and w.shape == (meta["out_features"], meta["in_features"])
        np.testing.assert_allclose(x @ w.T, y, atol=1e-5)
        np.testing.assert_array_equal(w, dict(m.named_modules())[name].weight.detach().numpy())


def test_shared_inputs_stored_once(llama_trace):
    _, tr = llama_trace
    L = tr.layers
    assert L["model.layers.0.self_attn.k_proj"]["input"] == L["model.layers.0.self_attn.q_proj"]["input"]
    assert L["model.layers.0.self_attn.v_proj"]["input"] == L["model.layers.0.self_attn.q_proj"]["input"]
    assert L["model.layers.0.mlp.up_proj"]["input"] == L["model.layers.0.mlp.gate_proj"]["input"]
    assert L["model.layers.0.mlp.down_proj"]["input"] == "model.layers.0.mlp.down_proj:input"
    inputs = [n for n in tr.tensor_names if n.endswith(":input")]
    assert len(inputs) == 2 * 4  # attn-in, o_proj-in, mlp-in, down-in per block


def test_residual_matches_hidden_states(llama_trace):
    m, tr = llama_trace
    ids = torch.tensor(tr.tensor("tokens:input_ids"))
    with torch.no_grad():
        hs = m(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[i+1] is block i's output, except the last, which has the final norm applied
    np.testing.assert_allclose(tr.tensor("model.layers.0:residual"), hs[1].reshape(-1, 32).numpy(), atol=1e-5)


def test_attention_probs_and_kv(llama_trace):
    _, tr = llama_trace
    p = tr.tensor("model.layers.1.self_attn:attn_probs")
    assert p.shape == (3, 4, 16, 16)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(p[0, 0], 1) == 0)  # causal
    kv = tr.activations["model.layers.0.self_attn.k_proj:key"]
    assert kv["kind"] == "key" and kv["tensor"] == "model.layers.0.self_attn.k_proj:output"


def test_positions_and_ids(llama_trace):
    _, tr = llama_trace
    np.testing.assert_array_equal(tr.tensor("tokens:position"), np.tile(np.arange(16), 3))
    np.testing.assert_array_equal(tr.tensor("tokens:sequence"), np.repeat(np.arange(3), 16))
    wins, _ = token_windows(CharTokenizer(), TEXTS, 16, 3)
    np.testing.assert_array_equal(tr.tensor("tokens:input_ids"), np.array(wins))
    assert tr.manifest["row_order"].startswith("row = sequence")


def test_gpt2_conv1d_transposed_and_split_kv(tmp_path):
    m = tiny_gpt2()
    tr = record(m, CharTokenizer(), TEXTS, str(tmp_path / "g"), seq_len=8, n_sequences=2, kv=True,
                outputs=False, progress=False)
    meta = tr.layers["transformer.h.0.attn.c_attn"]
    assert meta["op"] == "conv1d" and meta["out_features"] == 96 and meta["output"] is None
    x, w, b = (tr.tensor(meta[k]) for k in ("input", "weight", "bias"))
    mod = m.transformer.h[0].attn.c_attn
    np.testing.assert_array_equal(w, mod.weight.detach().numpy().T)
    with torch.no_grad():
        y = mod(torch.from_numpy(np.array(x))).numpy()
    np.testing.assert_allclose(x @ w.T + b, y, atol=1e-5)
    np.testing.assert_allclose(tr.tensor("transformer.h.0.attn.c_attn:key"), y[:, 32:64], atol=0)


def test_prefix_and_memory_limit(tmp_path):
    tr = record(tiny_llama(), CharTokenizer(), TEXTS, str(tmp_path / "p"), seq_len=16, n_sequences=2,
                prefix="<s>", layers="q_proj", memory_limit=4096, progress=False)
    assert tr.manifest["prefix_len"] == 3
    ids = tr.tensor("tokens:input_ids")
    assert list(ids[0, :3]) == list(CharTokenizer()("<s>")["input_ids"]) == list(ids[1, :3])
    assert len(tr.manifest["shards"]) > 1
    assert list(tr.layers) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_errors_leave_no_trace(tmp_path):
    target = tmp_path / "big"
    with pytest.raises(FmtlabError, match="max_bytes"):
        record(tiny_llama(), CharTokenizer(), TEXTS, str(target), seq_len=16, n_sequences=4, max_bytes=1000,
               progress=False)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(FmtlabError, match="not enough"):
        record(tiny_llama(), CharTokenizer(), ["short"], str(target), seq_len=16, n_sequences=4, progress=False)
    with pytest.raises(FmtlabError, match="tokenizer"):
        record(tiny_llama(), None, TEXTS, str(target))
    with pytest.raises(FmtlabError, match="seq_len"):
        record(tiny_llama(), CharTokenizer(), TEXTS, str(target), seq_len=0)


def test_hooks_removed_after_recording(tmp_path):
    m = tiny_llama()
    record(m, CharTokenizer(), TEXTS, str(tmp_path / "h"), seq_len=8, n_sequences=1, residual=True,
           attention=True, progress=False)
    ours = [h for mod in m.modules() for h in mod._forward_hooks.values() if h.__module__.startswith("fmtlab")]
    assert ours == []
    assert m.config._attn_implementation == "sdpa"  # restored after eager recording
