"""Encoder end-to-end metrics: cosine agreement and rank correlation of pairwise similarities."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.models import embeddings as E


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 6, 40).astype(float)  # many ties
        b = a + rng.normal(0, 2, 40)
        assert E.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_identical_embeddings_agree_perfectly():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    agree = E.embedding_agreement(x, x, n_boot=200)
    assert agree["cosine"].value == pytest.approx(1.0, abs=1e-12)
    assert agree["rank"].value == pytest.approx(1.0, abs=1e-12) and agree["rank"].lo == pytest.approx(1.0, abs=1e-12)


def test_noise_lowers_both_metrics_and_intervals_bracket_the_point():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 16))
    y = x + rng.normal(scale=0.8, size=x.shape)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    agree = E.embedding_agreement(x, y, n_boot=300, seed=3)
    for k in ("cosine", "rank"):
        iv = agree[k]
        assert iv.lo <= iv.value <= iv.hi and iv.value < 0.99
    assert agree == E.embedding_agreement(x, y, n_boot=300, seed=3)  # seeded


def test_bad_shapes_are_refused():
    with pytest.raises(FmtlabError, match="one shape"):
        E.embedding_agreement(np.ones((4, 3)), np.ones((5, 3)))


def test_held_out_sentences_come_from_the_eval_split():
    sents = E.held_out_sentences(10)
    assert len(sents) == 10 and all(40 <= len(s) <= 300 for s in sents)
    calib = set(E.held_out_sentences(10, split="calib"))
    assert not calib & set(sents)
    with pytest.raises(FmtlabError, match="at least 2"):
        E.held_out_sentences(1)


class _Tok:
    def __call__(self, text, return_tensors=None, truncation=True, max_length=128):
        import torch

        ids = [101] + [1000 + (ord(c) % 50) for c in text[: max_length - 2]] + [102]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


def _tiny_bert():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    return transformers.BertModel(cfg).eval()


def test_encoder_quality_on_a_tiny_bert():
    model = _tiny_bert()
    sents = [f"sentence number {i} about {'x' * i}" for i in range(8)]
    rows = E.encoder_quality(model, _Tok(), [("fp32", None, None), ("w4a4", "int4_per_channel", "int4_per_token")],
                             sentences=sents, n_boot=100)
    fp, q = rows
    assert fp["cosine"] == pytest.approx(1.0, abs=1e-9) and fp["rank"] == pytest.approx(1.0, abs=1e-9)
    assert q["cosine"] < 1.0 and q["cosine_lo"] <= q["cosine"] <= q["cosine_hi"]


def test_peg_encoder_claim_runs_quick_on_a_tiny_bert():
    from fmtlab.analysis.methods import MethodsContext, get_claim

    model = _tiny_bert()

    class Tok(_Tok):
        def __call__(self, text, return_tensors=None, truncation=True, max_length=128, add_special_tokens=True):
            out = super().__call__(text, return_tensors="pt", max_length=max_length)
            if return_tensors is None:  # token_windows asks for lists, with or without the frame
                ids = out["input_ids"][0].tolist()
                return {"input_ids": ids if add_special_tokens else ids[1:-1]}
            return out

    texts = [" ".join(f"Sentence {i} says something about topic {j} in enough words." for j in range(5))
             for i in range(20)]
    ctx = MethodsContext(model, Tok(), texts[:10], texts[10:], seq_len=32, n_calib=2, n_eval=2, quick=True)
    res = get_claim("peg_encoder").run(ctx)
    assert res.key == "peg_encoder" and "cosine to fp32" in res.measured
    assert set(res.numbers) >= {"per-tensor static", "PEG K=2 permuted", "peg_minus_per_tensor"}


def test_is_language_model_tells_encoders_from_causal_lms():
    transformers = pytest.importorskip("transformers")
    assert not E.is_language_model(_tiny_bert())
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    assert E.is_language_model(transformers.LlamaForCausalLM(cfg))


def test_replay_config_agreement_scores_replay_configs_on_a_tiny_bert():
    model = _tiny_bert()
    sents = [f"sentence number {i} about {'y' * i}" for i in range(8)]
    rows = E.replay_config_agreement(model, _Tok(), ["fp32", "w8a8_int_token", "w4a8_int_channel"],
                                     sentences=sents, n_boot=100)
    fp, w8, w4 = rows
    assert [r["config"] for r in rows] == ["fp32", "w8a8_int_token", "w4a8_int_channel"]
    assert fp["cosine"] == 1.0 and fp["rank"] == 1.0  # the identity config leaves every layer alone
    for r in (w8, w4):
        assert r["cosine_lo"] <= r["cosine"] <= r["cosine_hi"] < 1.0 and r["n_sentences"] == 8
    assert w4["cosine"] < w8["cosine"]  # 4-bit weights disturb the embedding more than 8-bit
    # the model is left as it was: the float embeddings are unchanged after the quantized runs
    again = E.replay_config_agreement(model, _Tok(), ["fp32"], sentences=sents, n_boot=100)
    assert again[0]["cosine"] == 1.0


def test_static_replay_config_without_calibration_is_refused():
    with pytest.raises(FmtlabError, match="calibration trace"):
        E.replay_config_agreement(_tiny_bert(), _Tok(), ["w8a8_int_tensor_static"],
                                  sentences=["one sentence here.", "another one there.", "and a third."])


def test_encoder_section_lists_rows_and_skipped_variants(tmp_path):
    from fmtlab.analysis.document import Document
    from fmtlab.analysis.encoder_section import add_encoder_section, encoder_rows

    sents_rows, skipped = encoder_rows(_tiny_bert(), _Tok(), ("fp32", "w8a8_int_token", "mxfp4+gptq"), None,
                                       tmp_path, n_sentences=6)
    assert [r["config"] for r in sents_rows] == ["fp32", "w8a8_int_token"] and skipped == ["mxfp4+gptq"]
    assert (tmp_path / "encoder_quality.csv").read_text().splitlines()[0].startswith("config,cosine")
    doc = Document("t")
    add_encoder_section(doc, sents_rows, skipped)
    md = doc.to_markdown()
    assert "sentence-embedding agreement" in md and "w8a8_int_token" in md and "Skipped" in md and "mxfp4+gptq" in md
