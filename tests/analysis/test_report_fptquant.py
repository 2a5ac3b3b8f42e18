"""``<config>+fptquant`` configs (replay and perplexity on the FPTQuant-merged model): the config
parser, the refusal of non-Llama models, the perplexity rows on a tiny Llama, and (slow) a small
`fmtlab report` run on the embedded default model."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from fmtlab.analysis.report import ReportOptions, run_report  # noqa: E402
from fmtlab.errors import FmtlabError  # noqa: E402
from fmtlab.methods.fptquant_variant import FPTQuantVariant  # noqa: E402
from fmtlab.methods.variants import VariantSession, parse_variant_config  # noqa: E402


def test_fptquant_config_names():
    c, v = parse_variant_config("w8a8_int_tensor_static+fptquant")
    assert c.name == "w8a8_int_tensor_static+fptquant" and c.act_calib == "absmax"
    assert v == FPTQuantVariant() and str(v) == "+fptquant"
    assert parse_variant_config("fp32")[0].name == "fp32"
    assert parse_variant_config("w8a8_int_tensor_static+cushion")[0].name == "w8a8_int_tensor_static+cushion"
    c, v = parse_variant_config("w8a8_int_tensor_static+fptquant(steps=5, seed=1)")
    assert v == FPTQuantVariant(steps=5, seed=1) and c.name == "w8a8_int_tensor_static+fptquant(steps=5,seed=1)"
    for bad in ("+fptquant", "w8a8_int_tensor+cushion+fptquant", "fp32+fptquant(steps=x)", "fp32+fptquant(nope=1)"):
        with pytest.raises(FmtlabError):
            parse_variant_config(bad)


def test_fptquant_refuses_non_llama():
    """Invariant: a non-Llama model is refused with an error naming its type, before any fit."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    session = VariantSession(m, None)
    with pytest.raises(FmtlabError, match="GPT2LMHeadModel.*gpt2"):
        session.fitted(FPTQuantVariant())
    assert len(session.cache) == 0


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def test_fptquant_perplexity_rows_on_merged_model():
    """Invariants: ``fp32+fptquant`` is the merged float model, so its perplexity equals the
    original's to float32 rounding (function preservation); a quantized ``+fptquant`` row is
    measured on the merged weights (differs from the same config on the original model); the
    fit runs once for both configs; the original model is left unchanged."""
    from fmtlab.models.perplexity import perplexity

    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    session = VariantSession(model, None)
    specs = ["fp32+fptquant(steps=5)", "w4a8_int_channel+fptquant(steps=5)"]
    cfgs = [parse_variant_config(s)[0] for s in specs]
    v = parse_variant_config(specs[0])[1]
    rows = session.perplexity_rows(v, cfgs, ids, None, 16, 2, None)
    assert [r["config"] for r in rows] == specs
    assert len(session.cache) == 1
    (desc,) = session.descriptions()
    assert desc["variant"] == "+fptquant(steps=5)" and desc["fit_seconds"] >= 0 and "loss" in desc["fitted"]
    assert session.applied(v).model is not model
    fp = perplexity(model, None, "fp32", ids=ids, progress=False)
    q = perplexity(model, None, "w4a8_int_channel", ids=ids, progress=False)
    assert abs(rows[0]["nll"] - fp["nll"]) < 1e-5
    assert rows[1]["nll"] != q["nll"]
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())


@pytest.mark.slow
def test_report_with_fptquant_configs(tmp_path):
    """Invariant: a +fptquant config gets its own replay rows and perplexity row, recorded from the
    merged model (its trace manifest says so), next to the plain config; the variant is described."""
    import json

    from fmtlab.sim.trace import open_trace

    name = "w8a8_int_tensor_static+fptquant(steps=3)"
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
    assert [d["variant"] for d in data["variants"]] == ["+fptquant(steps=3)"]
    tr = open_trace(str(tmp_path / "traces" / f"seq32_{FPTQuantVariant(steps=3).slug}"))
    assert tr.manifest["text"]["fptquant"] == {"steps": 3, "lr": 1e-2, "p": 4.0, "seed": 0}
    assert name in (tmp_path / "report.md").read_text()
