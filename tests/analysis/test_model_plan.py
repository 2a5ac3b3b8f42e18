"""The report's recording plan: whole small models, a first/middle/last block subset of large ones."""

import re

from fmtlab.analysis.model_plan import LARGE_PARAMS, block_subset, record_plan


def test_small_models_and_explicit_layers_are_kept():
    blocks = [f"model.layers.{i}" for i in range(30)]
    assert record_plan(135_000_000, blocks, None).layers is None
    assert record_plan(2 * LARGE_PARAMS, blocks, "q_proj").layers == "q_proj"


def test_large_model_records_first_middle_last_block():
    blocks = [f"model.layers.{i}" for i in range(28)]
    plan = record_plan(1_540_000_000, blocks, None)
    rx = re.compile(plan.layers)
    hits = {n for n in (f"model.layers.{i}.mlp.down_proj" for i in range(28)) if rx.search(n)}
    assert hits == {"model.layers.0.mlp.down_proj", "model.layers.14.mlp.down_proj", "model.layers.27.mlp.down_proj"}
    assert not rx.search("model.layers.1.self_attn.q_proj") and "1.54B" in plan.note


def test_block_subset_edges():
    assert block_subset(0) == [] and block_subset(1) == [0] and block_subset(2) == [0, 1] and block_subset(5) == [0, 2, 4]
