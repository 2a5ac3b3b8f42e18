"""record --qkv (Q, K, V after RoPE, P) and the numpy attention replay (fmtlab.sim.attention_replay):
the replay's quantization is bit for bit the torch path's (KV cache and attention presets) on tiny
random Llama, Qwen2 and Gemma 3 models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sim_helpers import TEXTS, CharTokenizer

from fmtlab.errors import FmtlabError
from fmtlab.models.record import record
from fmtlab.pytorch import calibrate, quantize_model
from fmtlab.pytorch.attention import parse_attention_spec
from fmtlab.pytorch.kv_cache import kv_cache_of
from fmtlab.pytorch.attention import quantize_pv as t_quantize_pv
from fmtlab.pytorch.attention import quantize_qk as t_quantize_qk
from fmtlab.sim import attention_replay as AR
from fmtlab.sim.attention_specs import attention_preset, kv_quantizers
from fmtlab.pytorch.kv_prefix import layer_kv
from torch_helpers import ATTENTION_ARCHS, tiny_causal_lm

ARCHS = ATTENTION_ARCHS
SEQ = 12


def _model(arch: str):
    return tiny_causal_lm(arch, vocab=256, head_dim=32)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    out = {}
    for arch in ARCHS:
        m = _model(arch)
        tr = record(m, CharTokenizer(), TEXTS, str(tmp_path_factory.mktemp(arch) / "t"), seq_len=SEQ,
                    n_sequences=3, batch_size=2, attention=True, qkv=True, progress=False)
        out[arch] = (m, tr)
    return out


def _cache_kv(cache, layer):
    return layer_kv(cache)[layer]


def _bits(a) -> np.ndarray:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("arch", ARCHS)
def test_record_qkv_manifest_and_softmax_check(traces, arch):
    m, tr = traces[arch]
    att = tr.manifest["attention"]
    assert list(att) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for name, meta in att.items():
        assert tr.tensor(meta["q"]).shape == (3, 4, SEQ, 32)
        assert tr.tensor(meta["k"]).shape == tr.tensor(meta["v"]).shape == (3, 2, SEQ, 32)
        assert tr.tensor(meta["probs"]).shape == (3, 4, SEQ, SEQ)
        if arch == "gemma3":
            assert meta["sliding_window"] == (4 if name.endswith("0.self_attn") else None)
    # recorded tensors are those of a model without the recording taps: the model is restored
    assert m.config._attn_implementation != "fmtlab_quant"
    # the replay's float32 softmax of the recorded Q, K reproduces the recorded P (mask, window, scaling)
    rows = AR.replay_attention(tr, ["kv=none"], n_boot=10)
    for r in rows[:-1]:
        assert r["p_check"] < 1e-5 and r["sqnr_db"] == math.inf


KV_SPECS = ("int8_sym_per_token", "int4_sym_per_token", "int4_per_token_asym", "fp8_e4m3_per_tensor",
            "int8_sym_per_tensor", "int4_g32", "mxfp8", "nvfp4", "kivi4")


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_replay_is_bit_equal_to_the_torch_cache(traces, arch):
    """Layer 0's cache after a quantized prefill (its input is the float model's) and every layer's
    torch KV quantization of the recorded tensors equal the replay's, bit for bit."""
    m, tr = traces[arch]
    ids = torch.tensor(np.array(tr.tensor("tokens:input_ids")))
    att = tr.manifest["attention"]
    for spec in KV_SPECS:
        qm, _ = quantize_model(m, kv_cache=spec)
        with torch.no_grad():
            out = qm(ids)
        cache = getattr(out, "cache", None) or out.past_key_values
        kvq = kv_cache_of(qm)
        kq, vq, _, _ = kv_quantizers(spec)
        for layer, meta in enumerate(att.values()):
            for role, rec, q_np in (("keys", meta["k"], kq), ("values", meta["v"], vq)):
                x = np.array(tr.tensor(rec), dtype=np.float32)
                got = AR.quantize_kv(q_np, x)
                assert not np.array_equal(got, x), spec  # the spec quantizes
                want = kvq.quantize(torch.from_numpy(x), layer, role, {})
                np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"{arch} {spec} {layer} {rec}")
                if layer == 0:
                    stored = _cache_kv(cache, 0)[role == "values"]
                    n = stored.shape[2]  # a sliding-window layer keeps its last window - 1 entries
                    np.testing.assert_array_equal(_bits(got[:, :, -n:]), _bits(stored), err_msg=f"{arch} {spec} {rec}")


@pytest.mark.parametrize("preset", ("fp8_fa3", "sage_int8_fp8", "mxfp8"))
@pytest.mark.parametrize("arch", ("llama", "gemma3"))
def test_attention_operands_bit_equal_to_torch(traces, arch, preset):
    _, tr = traces[arch]
    t_spec, n_spec = parse_attention_spec(preset), attention_preset(preset)
    for meta in tr.manifest["attention"].values():
        q = np.asarray(tr.tensor(meta["q"]), dtype=np.float32)
        k = np.repeat(np.asarray(tr.tensor(meta["k"]), dtype=np.float32), 2, axis=1)
        v = np.repeat(np.asarray(tr.tensor(meta["v"]), dtype=np.float32), 2, axis=1)
        p = np.asarray(tr.tensor(meta["probs"]), dtype=np.float32)
        nq, nk = AR.quantize_qk(n_spec, q, k)
        tq, tk = t_quantize_qk(t_spec, torch.from_numpy(q), torch.from_numpy(k))
        np_, nv = AR.quantize_pv(n_spec, p, v)
        tp, tv = t_quantize_pv(t_spec, torch.from_numpy(p), torch.from_numpy(v))
        for a, b in ((nq, tq), (nk, tk), (np_, tp), (nv, tv)):
            np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{arch} {preset}")
        assert not np.array_equal(nq, q) and not np.array_equal(np_, p)


def test_static_kv_scales_match_torch_calibration(traces, tmp_path):
    m, _ = traces["llama"]
    texts = ["A calibration text about something else entirely, " * 12, "Another one, with digits 0123456789. " * 12]
    cal = record(m, CharTokenizer(), texts, str(tmp_path / "cal"), seq_len=SEQ, n_sequences=4, batch_size=2,
                 qkv=True, progress=False, residual=False, layers="nothing_matches^", )
    qm, _ = quantize_model(m, kv_cache="fp8_e4m3_per_tensor@static")
    # the recording ran eager attention; later layers' K see the attention implementation's rounding
    if hasattr(qm, "set_attn_implementation"):
        qm.set_attn_implementation("eager")
    else:  # transformers 4.x
        qm.config._attn_implementation = "eager"
    calibrate(qm, torch.as_tensor(np.asarray(cal.tensor("tokens:input_ids"))), batch_size=2)
    kvq = qm.fmtlab_kv_cache_quant
    kq, vq, scales, _ = kv_quantizers("fp8_e4m3_per_tensor@static")
    assert scales == "static"
    for layer, name in enumerate(cal.manifest["attention"]):
        for r, (role, q) in enumerate((("k", kq), ("v", vq))):
            frozen = AR._static_kv(q, cal, name, role)
            assert np.float32(frozen.scale_rule.scale) == kvq.static[2 * layer + r].scale.numpy()[0]
            x = np.array(cal.tensor(cal.manifest["attention"][name][role]), dtype=np.float32)
            want = kvq.quantize(torch.from_numpy(x), layer, "keys" if role == "k" else "values", {})
            np.testing.assert_array_equal(_bits(AR.quantize_kv(frozen, x)), _bits(want))


def test_replay_rows_and_errors(traces, tmp_path):
    _, tr = traces["qwen2"]
    cfgs = ["kv=int8_sym_per_token", "kv=int4_sym_per_token", "attn=fp8_fa3", "kv=int8_sym_per_token;attn=mxfp8"]
    rows = AR.replay_attention(tr, cfgs, n_boot=50)
    assert len(rows) == len(cfgs) * 3
    by = {(r["config"], r["layer"]): r for r in rows}
    for layer in ("model.layers.0.self_attn", "model.layers.1.self_attn", "all"):
        a, b = by[("kv=int8_sym_per_token", layer)], by[("kv=int4_sym_per_token", layer)]
        assert a["sqnr_db"] > b["sqnr_db"] + 10
        assert a["sqnr_lo"] <= a["sqnr_db"] <= a["sqnr_hi"]
    r = by[("kv=int8_sym_per_token;attn=mxfp8", "model.layers.0.self_attn")]
    assert 0 <= r["kv_k_underflow"] < 1 and 0 <= r["p_clip"] < 1 and not math.isnan(r["q_underflow"])
    assert math.isnan(by[("attn=fp8_fa3", "model.layers.0.self_attn")]["kv_k_underflow"])
    assert rows == AR.replay_attention(tr, cfgs, n_boot=50)  # seeded: the same intervals
    with pytest.raises(FmtlabError, match="kv=SPEC"):
        AR.parse_attention_config("int8_sym_per_token")
    with pytest.raises(FmtlabError, match="attention spec must be one of"):
        AR.parse_attention_config("attn=fp4_fa9")
    with pytest.raises(FmtlabError, match="calibration trace"):
        AR.replay_attention(tr, ["kv=fp8_e4m3_per_tensor@static"], n_boot=10)
    plain = record(_model("llama"), CharTokenizer(), TEXTS, str(tmp_path / "plain"), seq_len=SEQ, n_sequences=2,
                   progress=False)
    assert not AR.has_attention(plain)
    with pytest.raises(FmtlabError, match="--qkv"):
        AR.replay_attention(plain, ["kv=int8_sym_per_token"])


def test_cli_replay_attention(traces, tmp_path, capsys):
    import json

    from fmtlab.cli import main

    _, tr = traces["gemma3"]
    out = tmp_path / "rows.json"
    assert main(["replay-attention", tr.path, "-c", "kv=int8_sym_per_token", "-c", "attn=sage_int8_fp8",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kv=int8_sym_per_token" in text and "model.layers.1.self_attn" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and {r["layer"] for r in rows} == {"model.layers.0.self_attn", "model.layers.1.self_attn", "all"}
    assert main(["replay-attention", tr.path, "-c", "kv=int8;bogus"]) == 2
    assert "kv=SPEC" in capsys.readouterr().err


def test_report_section_shows_the_attention_replay(traces, tmp_path):
    from types import SimpleNamespace

    from fmtlab.analysis.beyond_section import add_beyond_section
    from fmtlab.analysis.document import Document

    _, tr = traces["llama"]
    doc = Document("t")
    rows = add_beyond_section(doc, SimpleNamespace(ppl_rows=[], out=tmp_path, traces=[tr], calibs=[]))
    att = [r for r in rows if r["kind"] == "attention replay"]
    assert len(att) == 7 * 3 and (tmp_path / "tables" / "attention_replay.csv").exists()
    assert any(b[0] == "table" for b in doc.blocks)
