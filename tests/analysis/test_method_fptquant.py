"""The ``fptquant`` claim (fmtlab.analysis.methods.fptquant) in quick mode on a tiny Llama."""

import math

import pytest

from fmtlab.analysis.methods import MethodsContext, Verdict, get_claim, list_claims

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: tiny GEMMs on a shared 2-core machine (results do not depend on it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TEXTS = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with five dozen liquor jugs! " * 20]


class ByteTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % 250 for b in text.encode("utf-8")]}


def _model(kind: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=4, n_positions=64)).eval()
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _ctx(model):
    return MethodsContext(model, ByteTokenizer(), TEXTS[:1], TEXTS[1:], seq_len=16, n_calib=2, n_eval=3, quick=True)


def test_claim_is_registered():
    assert "fptquant" in list_claims()
    c = get_claim("fptquant")
    assert c.method == "FPTQuant" and "van Breugel" in c.paper


def test_quick_claim_runs_every_arm_with_intervals():
    """Invariant: every arm of both W4A4 and W4A8 gets a perplexity with lo <= value <= hi, paired
    differences vs none and hadamard are reported, and the merged float model is function preserving."""
    r = get_claim("fptquant").run(_ctx(_model("llama")))
    assert r.key == "fptquant" and isinstance(r.verdict, Verdict)
    assert r.numbers["max_abs_logit_diff_merged_float"] < 1e-4
    for label in ("W4A4", "W4A8"):
        n = r.numbers[label]
        for arm in ("none", "hadamard", "fptquant"):
            iv = n[f"ppl_{arm}"]
            assert iv["lo"] <= iv["value"] <= iv["hi"] and math.isfinite(iv["value"]) and iv["n_sequences"] == 3
        assert "diff_fptquant_minus_none" in n and "diff_fptquant_minus_hadamard" in n
        assert label in r.measured
    assert r.numbers["local_loss_after"] <= r.numbers["local_loss_before"]


def test_claim_not_applicable_to_gpt2():
    r = get_claim("fptquant").run(_ctx(_model("gpt2")))
    assert r.verdict is Verdict.NOT_APPLICABLE and "Llama" in r.reason


@pytest.mark.slow
def test_full_claim_reports_the_diagnostics():
    """quick=False: the 200-step fit, plus the W4A16, W4A4 p99.9 and no-per-token diagnostic rows
    and the run time of every arm."""
    import dataclasses

    r = get_claim("fptquant").run(dataclasses.replace(_ctx(_model("llama")), quick=False))
    assert r.numbers["fit_steps"] == 200
    for label in ("W4A16", "W4A4 p99.9"):
        assert set(r.numbers[label]) == {"ppl_none", "ppl_hadamard", "ppl_fptquant"}
        assert f"{label} (diagnostic)" in r.measured
    assert "ppl_fptquant" in r.numbers["W4A8, fptquant without the per-token scale"]
    assert len(r.numbers["seconds_per_arm"]) == 6 + 6 + 1


def test_row_verdict_thresholds():
    """A row supports the claim only when both paired intervals lie below zero, the excess over
    float is at most half the better baseline's, and FPTQuant is within 2x float (the W4A8 and
    W4A4 numbers measured on SmolLM2-135M are the second and third cases)."""
    from fmtlab.analysis.methods.fptquant import row_verdict
    from fmtlab.sim.stats import Interval

    below, across = Interval(-5.0, -8.0, -2.0), Interval(-1.0, -3.0, 0.5)
    ok, why = row_verdict("A", 20.0, {"none": 60.0, "hadamard": 80.0, "fptquant": 30.0}, below, below)
    assert ok and why == []
    ok, why = row_verdict("W4A8", 23.9, {"none": 139.3, "hadamard": 590.5, "fptquant": 94.7}, below, below)
    assert not ok and "0.61x" in why[0] and "3.96x float" in why[1]
    ok, why = row_verdict("W4A4", 23.9, {"none": 3.8e6, "hadamard": 1.0e6, "fptquant": 4.0e5}, below, below)
    assert not ok and len(why) == 1 and "nowhere near float" in why[0]
    ok, why = row_verdict("B", 20.0, {"none": 60.0, "hadamard": 80.0, "fptquant": 30.0}, below, across)
    assert not ok and "paired interval" in why[0]
