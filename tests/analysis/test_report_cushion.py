"""`fmtlab report` with a ``+cushion`` config (replay and perplexity behind a CushionCache prefix)
on a small slice of the embedded default model."""

import pytest

pytest.importorskip("transformers")

from fmtlab.analysis.methods import cushion_configs  # noqa: E402
from fmtlab.analysis.report import ReportOptions, run_report  # noqa: E402
from fmtlab.errors import FmtlabError  # noqa: E402


def test_cushion_config_names():
    c = cushion_configs.cushion_config("w8a8_int_tensor_static+cushion")
    assert c.name == "w8a8_int_tensor_static+cushion" and c.act_calib == "absmax"
    assert cushion_configs.cushion_config("fp32").name == "fp32"
    with pytest.raises(FmtlabError):
        cushion_configs.cushion_config("+cushion")


@pytest.mark.slow
def test_report_with_cushion_configs(tmp_path, monkeypatch):
    """Invariant: a +cushion config gets its own replay rows and perplexity row, recorded behind
    the prefix (its trace manifest names the prefix tokens), next to the plain config."""
    import json

    from fmtlab.sim.trace import open_trace

    monkeypatch.setattr(cushion_configs, "SEARCH", {"threshold": 0.5, "seq_len": 16, "n_sequences": 2,
                                                    "n_candidates": 2})
    opts = ReportOptions(out=str(tmp_path), configs=("fp32", "w8a8_int_tensor_static", "w8a8_int_tensor_static+cushion"),
                         seq_lens=(32,), n_sequences=2, layers=r"layers\.(0|1)\.",
                         ppl_configs=("w8a8_int_tensor_static", "w8a8_int_tensor_static+cushion"),
                         ppl_seq_len=32, ppl_sequences=2, progress=False)
    run_report(opts)
    data = json.loads((tmp_path / "tables" / "report.json").read_text())
    names = [r["config"] for r in data["configs"]]
    assert "w8a8_int_tensor_static+cushion" in names
    ppl = {r["config"]: r["ppl"] for r in data["perplexity"]}
    assert set(ppl) == {"w8a8_int_tensor_static", "w8a8_int_tensor_static+cushion"}
    assert ppl["w8a8_int_tensor_static+cushion"] != ppl["w8a8_int_tensor_static"]
    tr = open_trace(str(tmp_path / "traces" / "seq32_cushion"))
    assert tr.manifest["kv_prefix"]["tokens"][0] == 1  # SmolLM2's BOS <|im_start|>
    assert "w8a8_int_tensor_static+cushion" in (tmp_path / "report.md").read_text()
