"""+gptq / +awq model variants and quantize_model(weight_method=...) on a tiny Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fmtlab.errors import FmtlabError

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))  # the shared tiny models

from fmtlab.methods import variants as V  # noqa: E402
from fmtlab.methods.weight_fit_variant import AWQVariant, GPTQVariant  # noqa: E402
from sim_helpers import TEXTS, CharTokenizer, tiny_llama  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj"


def test_bind_moves_the_weight_quantizer_into_the_variant():
    cfg, v = V.parse_variant_config("w4a8_int_channel+gptq")
    assert cfg.name == "w4a8_int_channel+gptq" and cfg.weight is None and cfg.act == "int8_per_token"
    assert v == GPTQVariant(weights="int4_per_channel")
    cfg2, v2 = V.parse_variant_config("nvfp4+awq(gptq=true,n_grid=4)")
    assert cfg2.weight is None and cfg2.act == "nvfp4" and v2 == AWQVariant("nvfp4", n_grid=4, gptq=True)
    assert v2.method == "awq+gptq"
    cfg3, v3 = V.parse_variant_config("w4a8_dint_aqas+gptq")  # the dINT paper's AQAS + dINT4 + OPTQ
    assert cfg3.transform == "aqas" and cfg3.weight == "dint4_per_channel" and v3.transformed
    with pytest.raises(FmtlabError, match="not a fixed linear map"):
        V.parse_variant_config("w8a8_llm_int8+gptq")
    with pytest.raises(FmtlabError, match="transform"):
        V.parse_variant_config("w4a8_dint_aqas+awq")
    with pytest.raises(FmtlabError, match="no weight quantizer"):
        V.parse_variant_config("fp32+gptq")
    with pytest.raises(FmtlabError, match="differs"):
        V.parse_variant_config("w4a8_int_channel+gptq(weights=nvfp4)")
    assert "+gptq" in V.known_variants() and "+awq" in V.known_variants()


def test_fit_once_cache_on_disk_and_apply(tmp_path, monkeypatch):
    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    model, tok = tiny_llama(), CharTokenizer()
    _, v = V.parse_variant_config("w4a8_int_channel+gptq(seq_len=32,n_sequences=4)")
    calib = V.CalibData("test", tuple(TEXTS))
    logs: list[str] = []
    f1 = V.FitCache().get(v, model, tok, calib, logs.append)
    assert "below RTN on" in f1.summary and "gptq weights under int4_per_channel" in f1.summary
    assert any("fitting gptq" in s for s in logs)
    assert list((tmp_path / "fitted-weights").glob("gptq-*.safetensors"))
    assert list((tmp_path / "hessians").rglob("*.safetensors"))
    logs.clear()
    f2 = V.FitCache().get(v, model, tok, calib, logs.append)  # a new run: read back, not refitted
    assert any("read from" in s for s in logs)
    assert all(np.array_equal(f1.state[k], f2.state[k]) for k in f1.state)
    ap = V.handler_for(v).apply(v, f1.state, model)
    w_new = dict(ap.model.named_modules())[Q0].weight.detach().numpy()
    w_old = dict(model.named_modules())[Q0].weight.detach().numpy()
    assert np.array_equal(w_new, f1.state[Q0]) and not np.array_equal(w_new, w_old)
    assert ap.text_info == {"weights": "int4_per_channel", "weight_method": "gptq"}


def test_quantize_model_weight_methods():
    from fmtlab.methods.gptq import collect_hessians, quantize_model
    from fmtlab.sim.gptq import hessian_error

    model, tok = tiny_llama(), CharTokenizer()
    hs = collect_hessians(model, tok, TEXTS, seq_len=32, n_sequences=4)
    W0 = dict(model.named_modules())[Q0].weight.detach().numpy()
    errs = {}
    for method in ("rtn", "gptq", "awq", "awq+gptq"):
        calib = None if method == "rtn" else hs
        qm, summary = quantize_model(model, "int4_per_channel", "int8_per_token", weight_method=method, calib=calib)
        ql = dict(qm.named_modules())[Q0]
        Wq = ql.quantized_weight().detach().numpy()
        errs[method] = hessian_error(W0, Wq, hs[Q0])
        assert summary.rows and summary.rows[0]["activations"] is not None
    assert errs["gptq"] < errs["rtn"] and errs["awq"] <= errs["rtn"] * (1 + 1e-9)
    qm, _ = quantize_model(model, "int4_per_channel", weight_method="gptq", calib=TEXTS, tokenizer=tok,
                           seq_len=32, n_sequences=4)
    with pytest.raises(FmtlabError, match="tokenizer"):
        quantize_model(model, "int4_per_channel", weight_method="gptq", calib=TEXTS)
    with pytest.raises(FmtlabError, match="method must be"):
        quantize_model(model, "int4_per_channel", weight_method="smooth", calib=hs)


def test_gptq_behind_aqas_fits_in_the_transformed_space(tmp_path, monkeypatch):
    """``w4a8_dint_aqas+gptq``: AQAS is fitted per layer as for the RTN config (same scales s);
    the layer's weight is then GPTQ of W diag(s) under dINT4 with diag(1/s) H diag(1/s), on the
    quantizer's grid, with a calibration error in the transformed space never above RTN's; the
    perplexity runs, replay is refused."""
    import torch

    from fmtlab.methods.gptq import weight_quantizer
    from fmtlab.models.perplexity import perplexity, sim_quantized
    from fmtlab.models.record import record
    from fmtlab.sim.gptq import gptq, hessian_error

    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    model, tok = tiny_llama(), CharTokenizer()
    cfg, v = V.parse_variant_config("w4a8_dint_aqas+gptq(seq_len=32,n_sequences=4)")
    fitted = V.FitCache().get(v, model, tok, V.CalibData("test", tuple(TEXTS)))
    ap = V.handler_for(v).apply(v, fitted.state, model)
    assert ap.model is model and ap.replay_refusal and "weight_fit" in ap.perplexity_kw
    fit = ap.perplexity_kw["weight_fit"]
    cal = record(model, tok, TEXTS, str(tmp_path / "cal"), seq_len=16, n_sequences=2, progress=False,
                 text_info={"split": "calib"})
    q = weight_quantizer("dint4_per_channel")
    H = fitted.state.hessians[Q0]
    with sim_quantized(model, cfg, cal, weight_fit=fit) as qm:
        lin = dict(qm.named_modules())[Q0]
        s = lin.ft.scales.astype(np.float64)
        W0 = lin.w
        Hs = H / s[:, None] / s[None, :]
        Wt = (W0 * lin.ft.scales).astype(np.float32)
        expect = gptq(Wt, Hs, q).weight
        assert np.array_equal(lin.wq_fixed, expect)
        assert hessian_error(Wt, lin.wq_fixed, Hs) <= hessian_error(Wt, q.fake_quantize(Wt), Hs)
    with sim_quantized(model, cfg, cal) as qm:  # the RTN config: the same AQAS scales
        assert np.array_equal(dict(qm.named_modules())[Q0].ft.scales, lin.ft.scales)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    row = perplexity(model, tok, cfg, ids=ids, calib=cal, progress=False, **ap.perplexity_kw)
    rtn_row = perplexity(model, tok, "w4a8_dint_aqas", ids=ids, calib=cal, progress=False)
    assert np.isfinite(row["ppl"]) and row["ppl"] != rtn_row["ppl"]
    sess = V.VariantSession(model, tok, calib=V.CalibData("test", tuple(TEXTS)))  # Hessians from the disk cache
    with pytest.raises(FmtlabError, match="replaying"):
        sess.replay(v, [cfg], tmp_path / "e", tmp_path / "c", 16, 2, None, None)


def test_fitted_weights_replay_on_the_plain_traces(tmp_path, monkeypatch):
    """``+gptq`` in replay: the config with FittedWeights as its weight quantizer replays on the
    plain model's traces (no recording behind the variant), its weights are the fit's bit for bit,
    and a weight that was not fitted raises."""
    from fmtlab.methods.gptq import FittedWeights
    from fmtlab.models.record import record

    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    model, tok = tiny_llama(), CharTokenizer()
    tr = record(model, tok, TEXTS, str(tmp_path / "ev"), seq_len=16, n_sequences=2, progress=False,
                text_info={"split": "eval"})
    cal = record(model, tok, TEXTS, str(tmp_path / "cal"), seq_len=16, n_sequences=2, progress=False,
                 text_info={"split": "calib"})
    cfg, v = V.parse_variant_config("w4a8_int_channel+gptq(seq_len=32,n_sequences=4)")
    sess = V.VariantSession(model, tok, calib=V.CalibData("test", tuple(TEXTS)))
    res = sess.replay(v, [cfg], tmp_path / "nope-ev", tmp_path / "nope-cal", 16, 2, None, None,
                      base_trace=tr, base_calib=cal, progress=False, workers=1)
    assert not (tmp_path / "nope-ev").exists()  # nothing recorded behind the variant
    rows = [r for r in res.rows if r["kind"] == "linear"]
    assert rows and all(r["config"] == cfg.name for r in rows)
    base = V.replay(tr, ["w4a8_int_channel"], calib=cal, progress=False, workers=1)
    b = {r["tensor"]: r for r in base.rows if r["kind"] == "linear"}
    assert any(r["out_sqnr_db"] != b[r["tensor"]]["out_sqnr_db"] for r in rows)
    fitted = sess.fitted(v).state
    alt = V.handler_for(v).replay_config(v, fitted, model, cfg)
    w0 = dict(model.named_modules())[Q0].weight.detach().numpy()
    assert np.array_equal(alt.weight.fake_quantize(w0), fitted[Q0])
    with pytest.raises(FmtlabError, match="not fitted"):
        alt.weight.fake_quantize(w0 + 1)
    with pytest.raises(FmtlabError, match="different fits"):
        FittedWeights({"a": w0 * 0, "b": w0 * 0 + 1}, {"a": w0, "b": w0}, "x").fake_quantize(w0)
