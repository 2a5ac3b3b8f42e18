"""`fmtlab report` with a ``+cushion`` config (replay and perplexity behind a CushionCache prefix)
on a small slice of the embedded default model."""

import pytest

pytest.importorskip("transformers")

from fmtlab.analysis.report import ReportOptions, run_report  # noqa: E402
from fmtlab.errors import FmtlabError  # noqa: E402
from fmtlab.methods.cushion_variant import CushionVariant  # noqa: E402
from fmtlab.methods.variants import parse_variant_config  # noqa: E402


def test_cushion_config_names():
    c, v = parse_variant_config("w8a8_int_tensor_static+cushion")
    assert c.name == "w8a8_int_tensor_static+cushion" and c.act_calib == "absmax"
    assert v == CushionVariant() and v.slug == "cushion"
    c, v = parse_variant_config("w8a8_int_tensor_static+cushion(n_candidates=2,threshold=0.25)")
    assert v == CushionVariant(threshold=0.25, n_candidates=2)
    assert parse_variant_config(c.name)[1] == v  # the name spells the variant back
    assert parse_variant_config("fp32") == (parse_variant_config("fp32")[0], None)
    with pytest.raises(FmtlabError, match="nothing before"):
        parse_variant_config("+cushion")


def test_report_options_refuse_bad_variant_suffix():
    """Invariant: a misspelled variant fails when the options are made, naming the known ones."""
    with pytest.raises(FmtlabError, match=r"\+cushion, \+fptquant"):
        ReportOptions(configs=("w8a8_int_tensor_static+cushon",))


@pytest.mark.slow
def test_report_with_cushion_configs(tmp_path):
    """Invariant: a +cushion config gets its own replay rows and perplexity row, recorded behind
    the prefix (its trace manifest names the prefix tokens), next to the plain config."""
    import json

    from fmtlab.sim.trace import open_trace

    name = "w8a8_int_tensor_static+cushion(seq_len=16,n_sequences=2,n_candidates=2)"
    v = parse_variant_config(name)[1]
    opts = ReportOptions(out=str(tmp_path), configs=("fp32", "w8a8_int_tensor_static", name),
                         seq_lens=(32,), n_sequences=2, layers=r"layers\.(0|1)\.",
                         ppl_configs=("w8a8_int_tensor_static", name),
                         ppl_seq_len=32, ppl_sequences=2, progress=False)
    run_report(opts)
    data = json.loads((tmp_path / "tables" / "report.json").read_text())
    assert name in [r["config"] for r in data["configs"]]
    ppl = {r["config"]: r["ppl"] for r in data["perplexity"]}
    assert set(ppl) == {"w8a8_int_tensor_static", name}
    assert ppl[name] != ppl["w8a8_int_tensor_static"]
    assert "prefix" in data["variants"][0]["fitted"]
    tr = open_trace(str(tmp_path / "traces" / f"seq32_{v.slug}"))
    assert tr.manifest["kv_prefix"]["tokens"][0] == 1  # SmolLM2's BOS <|im_start|>
    assert name in (tmp_path / "report.md").read_text()
