"""The embedded offline models and texts, end to end (few layers, short sequences)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from sim_helpers import IntQ

from fmtlab.cli import main
from fmtlab.sim.outliers import massive_activations
from fmtlab.models.perplexity import eval_windows, perplexity, rank_agreement
from fmtlab.models.record import record
from fmtlab.sim.replay import ReplayConfig, replay


@pytest.fixture(scope="module")
def small_trace(smollm2, tmp_path_factory):
    model, tok = smollm2
    return record(model, tok, None, str(tmp_path_factory.mktemp("real") / "t"), seq_len=32, n_sequences=2,
                  layers=r"layers\.1\.", residual=True, progress=False)


def test_model_is_the_embedded_llama(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert not hasattr(cfg, "quantization_config") or cfg.quantization_config is None
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_weights_on_q4_1_grid(smollm2):
    """The GGUF was Q4_1: every block of 32 inputs of a row holds at most 16 distinct values."""
    w = smollm2[0].model.layers[3].mlp.down_proj.weight.detach().numpy()[:8].reshape(8, -1, 32)
    assert max(len(np.unique(b)) for row in w for b in row) <= 16


def test_record_real_layers_and_massive_activations(small_trace):
    tr = small_trace
    assert len(tr.layers) == 7
    meta = tr.layers["model.layers.1.self_attn.o_proj"]
    x, w, y = (tr.tensor(meta[k]) for k in ("input", "weight", "output"))
    np.testing.assert_allclose(x @ w.T, y, rtol=0, atol=1e-4 * np.abs(y).max())
    rows = massive_activations(tr, top_k=2, min_ratio=100)
    assert rows, "SmolLM2 shows massive activations in its residual stream"
    assert max(r["ratio"] for r in rows) > 100
    assert all(r["layer"] is not None and 0 <= r["token"] < 32 for r in rows)


def test_replay_real_layers(small_trace):
    res = replay(small_trace, [ReplayConfig("fp32"), ReplayConfig("int8t", IntQ(8), IntQ(8)),
                               ReplayConfig("int8tok", IntQ(8, True), IntQ(8, True)),
                               ReplayConfig("int8t_llm", IntQ(8, True), IntQ(8, True), "llm_int8")],
                 kinds=["linear"], progress=False)
    by = {r["config"]: r["pooled_out_sqnr_db"] for r in res.by_model}
    assert by["fp32"] == math.inf
    assert by["int8tok"] > by["int8t"]  # per-token scales beat one scale per tensor on real activations


def test_perplexity_and_ranking(smollm2):
    model, tok = smollm2
    ids = eval_windows(tok, seq_len=48, n_sequences=2)
    base = perplexity(model, tok, "fp32", ids=ids, progress=False)
    q = perplexity(model, tok, ReplayConfig("w4a4", IntQ(4, True), IntQ(4)), ids=ids, progress=False)
    assert 1 < base["ppl"] < 500 and base["tokens"] == 2 * 47
    assert q["ppl"] > base["ppl"]
    agree = rank_agreement({"a": base["ppl"], "b": q["ppl"]}, {"a": math.inf, "b": 10.0})
    assert agree["spearman"] == pytest.approx(1.0) and agree["disagreements"] == []
    assert rank_agreement({"a": 1.0, "b": 2.0}, {"a": 5.0, "b": 9.0})["disagreements"] == [("a", "b")]


def test_minilm_records(tmp_path):
    from fmtlab.models.loading import load_default_model

    model, tok = load_default_model("minilm")
    tr = record(model, tok, None, str(tmp_path / "m"), seq_len=16, n_sequences=1, layers=r"layer\.0\.|pooler",
                attention=True, progress=False)
    assert tr.layers["pooler.dense"]["per_token"] is False
    assert tr.tensor("encoder.layer.0.attention.self:attn_probs").shape == (1, 12, 16, 16)
    res = replay(tr, ReplayConfig("nosink", None, IntQ(8), "exclude_sink"), kinds=["linear"], progress=False)
    assert any("skipped" in r["note"] for r in res.rows if r["tensor"] == "pooler.dense")


def test_cli_record_replay_outliers_e2e(smollm2, tmp_path, monkeypatch, capsys):
    import fmtlab.models.loading as models

    monkeypatch.setattr(models, "load_model", lambda spec, tokenizer=None, **kw: smollm2)
    t = str(tmp_path / "trace")
    assert main(["record", "--out", t, "--layers", r"layers\.0\.", "--seq-len", "16", "--n-sequences", "2",
                 "--quiet"]) == 0
    out = str(tmp_path / "rep")
    assert main(["replay", t, "-c", "fp32", "-c", "rot:t=hadamard", "--out", out, "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["replay.csv", "replay.json", "replay_by_layer_type.csv", "replay_by_model.csv"]
    assert main(["outliers", t, "--json", str(tmp_path / "o.json")]) == 0
    assert "massive activation" in capsys.readouterr().out
    assert main(["e2e", "-c", "fp32", "--seq-len", "24", "--n-sequences", "1", "--out", str(tmp_path / "e"),
                 "--replay", os.path.join(out, "replay.json"), "--quiet"]) == 0
    doc = json.load(open(tmp_path / "e" / "e2e.json"))
    assert doc["rows"][0]["config"] == "fp32" and doc["rows"][0]["ppl"] > 1
    # a static config needs a calibration trace (one line, exit 2) and uses --calib when given
    assert main(["e2e", "-c", "w8a8_int_tensor_static", "--seq-len", "24", "--n-sequences", "1",
                 "--out", str(tmp_path / "s0"), "--quiet"]) == 2
    assert "calib" in capsys.readouterr().err
    cal = str(tmp_path / "cal")
    assert main(["record", "--out", cal, "--seq-len", "16", "--n-sequences", "2", "--quiet"]) == 0
    assert main(["e2e", "-c", "w8a8_int_tensor_static", "--seq-len", "24", "--n-sequences", "1",
                 "--calib", cal, "--out", str(tmp_path / "s1"), "--quiet"]) == 0
    assert json.load(open(tmp_path / "s1" / "e2e.json"))["rows"][0]["ppl"] > 1
    assert main(["replay", t, "-c", "nope", "--quiet"]) == 2
    assert main(["record", "--out", t, "--quiet"]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["replay", "--list"]) == 0
