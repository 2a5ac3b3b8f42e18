"""`fmtlab report --explore SPACE`: the section is added, with its files, from the report's traces."""

from __future__ import annotations

import os
from types import SimpleNamespace

from fmtlab.analysis.document import Document
from fmtlab.explore.report_section import add_explore_section


def test_explore_section(traces, small_space, tmp_path):
    doc = Document("t")
    opts = SimpleNamespace(explore=small_space, explore_trials=50, scheduler=None, workers=None, layers=None,
                           max_tokens=None, progress=False)
    s = add_explore_section(doc, opts, traces[0], traces[1], tmp_path)
    kinds = [k for k, _ in doc.blocks]
    assert ("heading", (2, "Design-space exploration")) in doc.blocks and "image" in kinds and "table" in kinds
    for f in ("trials.csv", "pareto.csv", "pareto.png", "explore.json"):
        assert os.path.exists(tmp_path / "explore" / f)
    assert s["front_size"] >= 1


def test_bad_explore_space_fails_before_any_work(tmp_path):
    import pytest

    from fmtlab.analysis.report import ReportOptions
    from fmtlab.explore.space import SpaceError

    with pytest.raises(SpaceError, match="does not exist"):
        ReportOptions(explore=str(tmp_path / "nope.toml"))


def test_front_perplexity_on_a_tiny_model():
    """Front members get a perplexity row each, after the fp32 reference, on the same windows; a
    4-bit config is no better than fp32 plus noise on a random tiny model (finite, positive)."""
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fmtlab.explore.results import front_perplexity

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [b % 250 for b in text.encode("utf-8")]}

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    front = [{"config": "a:w=int4_per_channel;a=int8_per_token"}, {"config": "b:w=mxfp4;a=mxfp4"}]
    rows = front_perplexity(front, model, Tok(), seq_len=16, n_sequences=2, texts=["The quick brown fox. " * 30])
    assert [r["config"] for r in rows] == ["fp32", front[0]["config"], front[1]["config"]]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert len({r["tokens"] for r in rows}) == 1
