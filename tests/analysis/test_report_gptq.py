"""`fmtlab report` RTN vs GPTQ rows: the default perplexity list pairs each 4-bit config with its
``+gptq`` twin, and the findings say whether the ranking of formats changes."""

import os

import pytest

from fmtlab.analysis.defaults import (DEFAULT_CONFIGS, DEFAULT_PPL_CONFIGS, GPTQ_CONFIGS, GPTQ_PPL_CONFIGS,
                                      REPORT_CONFIGS, REPORT_PPL_CONFIGS)
from fmtlab.analysis.report_text import weight_fit_findings, weight_fit_sqnr_findings


def test_default_ppl_configs_pair_rtn_and_gptq():
    from fmtlab.methods.variants import parse_variant_config

    assert REPORT_PPL_CONFIGS == DEFAULT_PPL_CONFIGS + GPTQ_PPL_CONFIGS
    for name in GPTQ_PPL_CONFIGS:
        base = name.removesuffix("+gptq")
        assert base in DEFAULT_PPL_CONFIGS
        cfg, v = parse_variant_config(name)
        assert cfg.weight is None and v.weights == parse_variant_config(base)[0].weight


def test_default_replay_configs_pair_rtn_and_gptq():
    assert REPORT_CONFIGS == DEFAULT_CONFIGS + GPTQ_CONFIGS
    assert all(c.removesuffix("+gptq") in DEFAULT_CONFIGS for c in GPTQ_CONFIGS)


def test_sqnr_findings_name_the_ranking_change():
    def r(c, v):
        return {"config": c, "pooled_out_sqnr_db": v, "pooled_out_sqnr_lo": v - 1, "pooled_out_sqnr_hi": v + 1}

    rows = [r("a", 20), r("b", 18), r("a+gptq", 21), r("b+gptq", 23)]
    (line,) = weight_fit_sqnr_findings(rows)
    assert "pooled layer-output SQNR RTN -> GPTQ" in line and "a 20.0 [19.0, 21.0] dB -> 21.0" in line
    assert "The ranking changes: RTN a > b; GPTQ b > a." in line
    rows[-1] = r("b+gptq", 19)
    assert "Ranking by SQNR unchanged (a > b)" in weight_fit_sqnr_findings(rows)[0]


def _row(c, p):
    return {"config": c, "ppl": p, "ppl_lo": p - 1, "ppl_hi": p + 1}


def test_findings_name_the_ranking_change():
    rows = [_row("fp32", 10), _row("a", 20), _row("b", 22), _row("a+gptq", 15), _row("b+gptq", 14)]
    (line,) = weight_fit_findings(rows)
    assert "a 20.00 [19.00, 21.00] -> 15.00 [14.00, 16.00]" in line
    assert "The ranking changes: RTN a < b; GPTQ b < a." in line
    rows[-1] = _row("b+gptq", 16)
    assert "Ranking by perplexity unchanged (a < b)" in weight_fit_findings(rows)[0]
    assert weight_fit_findings([_row("a", 1.0)]) == []


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FMTLAB_RUN_SLOW") != "1", reason="GPTQ of all 210 layers: minutes; "
                    "set FMTLAB_RUN_SLOW=1")
def test_report_with_gptq_config(tmp_path):
    """A +gptq perplexity row next to its RTN config on the embedded model (all 210 layers fitted)."""
    pytest.importorskip("transformers")
    import json

    from fmtlab.analysis.report import ReportOptions, run_report

    name = "w4a8_int_channel+gptq(n_sequences=4)"
    opts = ReportOptions(out=str(tmp_path / "r"), configs=("fp32", "w4a8_int_channel"), seq_lens=(32,),
                         n_sequences=2, layers=r"layers\.(0|1)\.", ppl_configs=("w4a8_int_channel", name),
                         ppl_seq_len=64, ppl_sequences=2, progress=False)
    run_report(opts)
    data = json.loads((tmp_path / "r" / "tables" / "report.json").read_text())
    ppl = {r["config"]: r["ppl"] for r in data["perplexity"]}
    assert set(ppl) == {"w4a8_int_channel", name}
    assert "gptq weights under int4_per_channel" in data["variants"][0]["fitted"]
    assert "GPTQ weights (perplexity RTN -> GPTQ)" in (tmp_path / "r" / "report.md").read_text()
