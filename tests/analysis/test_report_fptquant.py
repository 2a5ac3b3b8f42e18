"""``<config>+fptquant`` configs (replay and perplexity on the FPTQuant-merged model): the config
parser, the refusal of non-Llama models, the perplexity rows on a tiny Llama, and (slow) a small
`fmtlab report` run on the embedded default model."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from fmtlab.analysis.methods import fptquant_configs  # noqa: E402
from fmtlab.analysis.report import ReportOptions, run_report  # noqa: E402
from fmtlab.errors import FmtlabError  # noqa: E402


def test_fptquant_config_names():
    c = fptquant_configs.method_config("w8a8_int_tensor_static+fptquant")
    assert c.name == "w8a8_int_tensor_static+fptquant" and c.act_calib == "absmax"
    assert fptquant_configs.method_config("fp32").name == "fp32"
    assert fptquant_configs.method_config("w8a8_int_tensor_static+cushion").name == "w8a8_int_tensor_static+cushion"
    for bad in ("+fptquant", "w8a8_int_tensor+cushion+fptquant"):
        with pytest.raises(FmtlabError):
            fptquant_configs.method_config(bad)


def test_fptquant_run_refuses_non_llama():
    """Invariant: a non-Llama model is refused with an error naming its type, before any fit."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(FmtlabError, match="GPT2LMHeadModel.*gpt2"):
        fptquant_configs.FPTQuantRun(m, None, lambda s: None)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def test_fptquant_perplexity_rows_on_merged_model(monkeypatch):
    """Invariants: ``fp32+fptquant`` is the merged float model, so its perplexity equals the
    original's to float32 rounding (function preservation); a quantized ``+fptquant`` row is
    measured on the merged weights (differs from the same config on the original model); the
    original model is left unchanged."""
    from fmtlab.models.perplexity import perplexity

    monkeypatch.setattr(fptquant_configs, "FIT", {"steps": 5, "lr": 1e-2, "p": 4.0, "seed": 0})
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    run = fptquant_configs.FPTQuantRun(model, None, lambda s: None)
    rows = run.perplexity_rows(["fp32+fptquant", "w4a8_int_channel+fptquant"], ids, None, 16, 2, None)
    assert [r["config"] for r in rows] == ["fp32+fptquant", "w4a8_int_channel+fptquant"]
    assert run.seconds is not None and run.seconds >= 0
    fp = perplexity(model, None, "fp32", ids=ids, progress=False)
    q = perplexity(model, None, "w4a8_int_channel", ids=ids, progress=False)
    assert abs(rows[0]["nll"] - fp["nll"]) < 1e-5
    assert rows[1]["nll"] != q["nll"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_report_with_fptquant_configs(tmp_path, monkeypatch):
    """Invariant: a +fptquant config gets its own replay rows and perplexity row, recorded from the
    merged model (its trace manifest says so), next to the plain config."""
    import json

    from fmtlab.sim.trace import open_trace

    monkeypatch.setattr(fptquant_configs, "FIT", {"steps": 3, "lr": 1e-2, "p": 4.0, "seed": 0})
    opts = ReportOptions(out=str(tmp_path), configs=("fp32", "w8a8_int_tensor_static", "w8a8_int_tensor_static+fptquant"),
                         seq_lens=(32,), n_sequences=2, layers=r"layers\.(0|1)\.",
                         ppl_configs=("w8a8_int_tensor_static", "w8a8_int_tensor_static+fptquant"),
                         ppl_seq_len=32, ppl_sequences=2, progress=False)
    run_report(opts)
    data = json.loads((tmp_path / "tables" / "report.json").read_text())
    names = [r["config"] for r in data["configs"]]
    assert "w8a8_int_tensor_static+fptquant" in names
    ppl = {r["config"]: r["ppl"] for r in data["perplexity"]}
    assert set(ppl) == {"w8a8_int_tensor_static", "w8a8_int_tensor_static+fptquant"}
    assert ppl["w8a8_int_tensor_static+fptquant"] != ppl["w8a8_int_tensor_static"]
    tr = open_trace(str(tmp_path / "traces" / "seq32_fptquant"))
    assert tr.manifest["text"]["fptquant"]["seed"] == 0
    assert "w8a8_int_tensor_static+fptquant" in (tmp_path / "report.md").read_text()
