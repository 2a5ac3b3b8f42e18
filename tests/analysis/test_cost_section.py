"""The report's energy-per-token section: rows, the measured LLM.int8() outlier share, the CushionCache
prefix, the table and both plots."""

import math

import pytest

from fmtlab.analysis.cost_section import BATCHES, add_cost_section, cost_rows, outlier_share
from fmtlab.analysis.defaults import DEFAULT_CONFIGS
from fmtlab.analysis.document import Document
from fmtlab.hw import SMOLLM2_135M
from fmtlab.sim.replay import PRESETS

CFGS = [PRESETS[n] for n in DEFAULT_CONFIGS]
LIN = [{"tensor": "q", "in_channels_ge6": 3, "cols": 576, "layer_type": "self_attn.q_proj"},
       {"tensor": "q", "in_channels_ge6": 3, "cols": 576, "layer_type": "self_attn.q_proj"},  # another config
       {"tensor": "d", "in_channels_ge6": 0, "cols": 1536, "layer_type": "mlp.down_proj"}]


def test_outlier_share_is_mac_weighted_and_deduplicated():
    s = outlier_share(LIN, SMOLLM2_135M)
    assert s == pytest.approx(3 * 576 / (576 * 576 + 1536 * 576))
    assert outlier_share([], SMOLLM2_135M) is None
    assert outlier_share(LIN, SMOLLM2_135M, threshold=4.0) is None


def test_rows_for_every_report_config_and_batch():
    acc = {c.name: {"pooled_out_sqnr_db": 20.0 + i} for i, c in enumerate(CFGS)}
    rows = cost_rows(CFGS, acc, None, LIN)
    assert [(r["config"], r["batch"]) for r in rows] == [(c.name, b) for c in CFGS for b in BATCHES]
    by = {(r["config"], r["batch"]): r for r in rows}
    for c in CFGS:
        r1, r64 = by[(c.name, 1)], by[(c.name, 64)]
        assert math.isfinite(r1["energy_uj"]) and r64["energy_uj"] < r1["energy_uj"]
        assert r64["memory_share"] < r1["memory_share"]
    assert by[("w8a8_llm_int8", 1)]["outlier_share"] == pytest.approx(outlier_share(LIN, SMOLLM2_135M))
    assert by[("w8a8_llm_int8", 1)]["transform_uj"] > 0 == by[("w8a8_int_token", 1)]["transform_uj"]
    assert by[("w4a8_int_channel", 1)]["energy_uj"] < by[("w8a8_int_token", 1)]["energy_uj"]
    cush = cost_rows([PRESETS["w8a8_int_tensor"]], {}, kv_prefix={"w8a8_int_tensor": 4})
    plain = cost_rows([PRESETS["w8a8_int_tensor"]], {})
    assert cush[0]["offchip_kv_uj"] > plain[0]["offchip_kv_uj"]


def test_section_writes_table_plots_and_text(tmp_path):
    acc = {c.name: {"pooled_out_sqnr_db": 20.0 + i} for i, c in enumerate(CFGS)}
    rows = cost_rows(CFGS, acc)
    doc = Document("t")
    paths = add_cost_section(doc, rows, tmp_path, model_name="SmolLM2-135M")
    assert (tmp_path / "tables" / "energy_per_token.csv").stat().st_size > 1000
    assert all(p.stat().st_size > 10_000 for p in paths.values()) and set(paths) == {"energy_pareto", "energy_breakdown"}
    md = doc.to_markdown()
    assert "Energy per token" in md and "3.9 pJ/bit" in md and "Horowitz" in md and "O'Connor" in md
    assert "plots/energy_pareto.png" in md and "plots/energy_breakdown.png" in md
