"""Replay: rows against direct computation, configs, aggregates, outputs, calibration traces."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sim_helpers import TEXTS, CharTokenizer, IntQ, tiny_llama

from fmtlab.errors import FmtlabError
from fmtlab.sim.metrics import error_stats
from fmtlab.formats.names import parse_call
from fmtlab.sim.quant import resolve
from fmtlab.models.record import record
from fmtlab.sim.replay import PRESETS, ReplayConfig, make_config, replay
from fmtlab.sim.trace import TraceWriter


def _hand_trace(path):
    """One linear layer with X [4 tokens, 2] and W [1, 2], plus a residual tensor."""
    x = np.float32([[1, 0.01], [2, 0], [-4, 0.5], [0, 8]])
    w = np.float32([[0.5, -1]])
    wr = TraceWriter(str(path))
    wr.add("L:input", x)
    wr.add("L:weight", w)
    wr.add("B:residual", x * 10)
    wr.add("tokens:position", np.int32([0, 1, 0, 1]))
    manifest = {"seq_len": 2, "n_tokens": 4, "prefix_len": 0,
                "layers": {"L": {"op": "linear", "type": "proj", "block": 0, "in_features": 2, "out_features": 1,
                                 "input": "L:input", "weight": "L:weight", "output": None, "bias": None}},
                "activations": {"B:residual": {"kind": "residual", "block": 0, "tensor": "B:residual"}}}
    return wr.close(manifest), x, w


def _per_seq(q, x, seq_len=2):
    """Reference: a dynamic quantizer applied to each recorded sequence's rows separately."""
    return np.concatenate([q.fake_quantize(x[i:i + seq_len]) for i in range(0, len(x), seq_len)])


def test_rows_match_direct_computation(tmp_path):
    """Rows equal a direct computation in which dynamic activation scales are taken per sequence
    (the hand trace holds 2 sequences of 2 tokens); weights are quantized once."""
    tr, x, w = _hand_trace(tmp_path / "h")
    aq, wq = IntQ(4), IntQ(4, per_row=True)
    res = replay(tr, [ReplayConfig("fp32"), ReplayConfig("q", wq, aq)], progress=False, workers=1)
    assert [(r["tensor"], r["config"]) for r in res.rows] == [("L", "fp32"), ("L", "q"),
                                                              ("B:residual", "fp32"), ("B:residual", "q")]
    fp, q = res.rows[0], res.rows[1]
    assert fp["out_sqnr_db"] == math.inf and fp["a_underflow_rate"] == 0 and fp["a_clip_rate"] == 0
    xq, wqv = _per_seq(aq, x), wq.fake_quantize(w)
    ea = error_stats(x, xq, np.concatenate([aq.clip_mask(x[:2]), aq.clip_mask(x[2:])]))
    assert q["a_sqnr_db"] == pytest.approx(ea["sqnr_db"]) and q["a_underflow_rate"] == ea["underflow_rate"]
    # by hand: scales 2/7 and 8/7; 0.01 and 0.5 flush to zero -> 2 of 6 nonzero inputs underflow
    assert q["a_underflow_rate"] == pytest.approx(2 / 6)
    y, yq = x @ w.T, xq @ wqv.T
    assert q["out_sqnr_db"] == pytest.approx(10 * math.log10(np.sum(y.astype(np.float64) ** 2)
                                                             / np.sum((yq - y).astype(np.float64) ** 2)), rel=1e-5)
    assert q["in_absmax"] == 8 and q["in_top_channels"][0] == [1, 8.0] and q["in_top_tokens"][0] == [1, 8.0]
    r = res.rows[3]
    assert r["kind"] == "residual" and math.isnan(r["out_sqnr_db"]) and math.isnan(r["w_mse"])
    assert r["a_sqnr_db"] == pytest.approx(error_stats(x * 10, _per_seq(aq, x * 10))["sqnr_db"])
    ps = res.sequence_arrays("q")
    assert ps["a_nonzero"].tolist() == [[3.0], [3.0]] and ps["a_under"].tolist() == [[1.0], [1.0]]
    assert ps["out_noise"].sum() == pytest.approx(np.sum((yq - y).astype(np.float64) ** 2), rel=1e-6)


def test_plain_callable_has_unknown_clipping(tmp_path):
    tr, x, w = _hand_trace(tmp_path / "h")
    res = replay(tr, ReplayConfig("c", None, lambda a: np.round(a)), progress=False, kinds=["linear"])
    row = res.rows[0]
    assert math.isnan(row["a_clip_rate"]) and row["a_underflow_rate"] == pytest.approx(2 / 6)
    assert row["w_sqnr_db"] == math.inf


def test_clipping_reported(tmp_path):
    tr, x, w = _hand_trace(tmp_path / "h")
    row = replay(tr, ReplayConfig("c", None, IntQ(8, clip_ratio=0.4)), progress=False, kinds=["linear"]).rows[0]
    # per sequence: range 0.4 * 2 = 0.8 clips 1 and 2; range 0.4 * 8 = 3.2 clips |-4| and |8|
    # -> 4 of 8 elements, energy (1 + 4 + 16 + 64) / total
    assert row["a_clip_rate"] == pytest.approx(4 / 8)
    total = float(np.sum(x.astype(np.float64) ** 2))
    assert row["a_clipped_energy_frac"] == pytest.approx(85 / total, rel=1e-6)
    assert 0 < row["a_clip_error_share"] <= 1


@pytest.fixture(scope="module")
def tiny_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("rp")
    m = tiny_llama()
    a = record(m, CharTokenizer(), TEXTS, str(d / "a"), seq_len=16, n_sequences=2, residual=True, progress=False)
    b = record(m, CharTokenizer(), TEXTS[::-1], str(d / "b"), seq_len=8, n_sequences=2, residual=True, progress=False)
    return a, b


CONFIGS = [ReplayConfig("fp32"), ReplayConfig("int8", IntQ(8, True), IntQ(8)),
           ReplayConfig("llm_int8", IntQ(8, True), IntQ(8, True), "llm_int8(threshold=0.5)"),
           ReplayConfig("sq", IntQ(8, True), IntQ(8), "smoothquant"),
           ReplayConfig("nosink", IntQ(8, True), IntQ(8), "exclude_sink+hadamard")]


def test_replay_model_threads_equal_serial(tiny_traces, tmp_path):
    a, b = tiny_traces
    r1 = replay(a, CONFIGS, progress=False, workers=1, calib=b)
    r2 = replay(a.path, CONFIGS, progress=False, workers=3, calib=b.path)
    assert len(r1.rows) == (14 + 2) * len(CONFIGS)
    for x, y in zip(r1.rows, r2.rows):
        assert x["tensor"] == y["tensor"] and x["config"] == y["config"]
        assert x["out_sqnr_db"] == y["out_sqnr_db"] or (math.isnan(x["out_sqnr_db"]) and math.isnan(y["out_sqnr_db"]))
    by = {r["config"]: r for r in r1.by_model if r["kind"] == "linear"}
    assert by["fp32"]["pooled_out_sqnr_db"] == math.inf
    assert by["int8"]["n_tensors"] == 14 and 10 < by["int8"]["pooled_out_sqnr_db"] < 60
    types = {r["layer_type"] for r in r1.by_layer_type if r["config"] == "int8"}
    assert "self_attn.q_proj" in types and "residual" in types
    files = r1.write(str(tmp_path / "out"))
    rows = list(csv.DictReader(open(files[0])))
    assert len(rows) == len(r1.rows) and rows[0]["config"] == "fp32"
    doc = json.load(open(files[3]))
    assert set(doc) >= {"meta", "rows", "by_layer_type", "by_model"}
    assert doc["by_model"][0]["pooled_out_sqnr_db"] == "inf"
    assert "pooled" in r1.summary()


def test_layer_filter_max_tokens_and_calibration(tiny_traces):
    a, b = tiny_traces
    """A fitted transform (SmoothQuant) needs a calibration trace: without one it raises instead
    of fitting on the scored data; fitted on another trace it differs from self-calibration."""
    r = replay(a, CONFIGS[3], layers="down_proj", kinds=["linear"], max_tokens=5, progress=False, calib=b)
    assert [row["tensor"] for row in r.rows] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert all(row["rows"] == 5 for row in r.rows)
    rc = replay(a, CONFIGS[3], layers="down_proj", kinds=["linear"], calib=b, progress=False)
    rs = replay(a, CONFIGS[3], layers="down_proj", kinds=["linear"], calib=a, progress=False)
    assert rc.rows[0]["out_sqnr_db"] != rs.rows[0]["out_sqnr_db"]  # scales fitted elsewhere
    with pytest.raises(FmtlabError, match="needs calibration data"):
        replay(a, CONFIGS[3], layers="down_proj", kinds=["linear"], progress=False)
    with pytest.raises(FmtlabError, match="trace label 'a'"):  # one model row would average both runs
        rc + rs
    rs = replay(a, CONFIGS[3], layers="down_proj", kinds=["linear"], calib=a, progress=False, label="a-self")
    both = rc + rs
    assert len(both.rows) == 4 and len(both.by_model) == 2


def test_config_parsing_and_errors(tiny_traces):
    a, _ = tiny_traces
    c = make_config("mine:w=int4_per_channel;a=int8_per_token;t=llm_int8(threshold=4)")
    assert c == ReplayConfig("mine", "int4_per_channel", "int8_per_token", "llm_int8(threshold=4)")
    assert make_config("fp32") is PRESETS["fp32"]
    assert make_config(("x", None, None)).name == "x"
    with pytest.raises(FmtlabError, match="unknown config"):
        make_config("nope")
    with pytest.raises(FmtlabError, match="unknown field"):
        make_config("n:q=1")
    with pytest.raises(FmtlabError, match="unique"):
        replay(a, ["fp32", "fp32"], progress=False)
    with pytest.raises(FmtlabError, match="kinds"):
        replay(a, "fp32", kinds=["bogus"], progress=False)
    with pytest.raises(FmtlabError, match="nothing to replay"):
        replay(a, "fp32", layers="no-such-layer", progress=False)
    assert parse_call("int8_per_token(axis=-1, x=true, s=a)") == ("int8_per_token", {"axis": -1, "x": True, "s": "a"})
    assert resolve(None).identity and resolve("fp32").identity
    with pytest.raises(FmtlabError, match="spec"):
        resolve(3)


@pytest.mark.parametrize("name", ["int8_per_tensor", "int8_per_token", "int4_per_channel", "mxfp8_e4m3", "mxfp4",
                                  "nvfp4", "dint4_per_channel", "int4_g128_asym"])
def test_fmtlab_quantizer_masks_agree_with_its_report(name):
    """Our per-element clip mask and underflow count equal the quantizer's own QuantReport."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[:, 3] *= 300.0
    x[5, 7] = 1e-6
    q = resolve(name)
    xq, mask = q.with_mask(x)
    rep = q.obj.quantize(x).report
    s = error_stats(x, xq, mask)
    assert int(mask.sum()) == rep.clipped
    assert s["underflow_rate"] == pytest.approx(rep.frac_flushed)
    np.testing.assert_array_equal(xq, q.obj.fake_quantize(x))


def test_one_sequence_alone_equals_its_rows_in_a_multi_sequence_replay(tiny_traces, tmp_path):
    """Dynamic scales are per sequence: replaying the first recorded sequence alone
    (max_tokens = seq_len) gives bit-identical per-sequence activation sums (quantized codes do
    not depend on the other sequences) to its part of the full replay, for per-tensor, per-token,
    LLM.int8() and MX configs; output energies agree to float32 GEMM blocking (BLAS sums a
    [16, K] and a [32, K] product in different orders)."""
    a, _ = tiny_traces
    cfgs = [CONFIGS[1], CONFIGS[2], ReplayConfig("mx", "mxfp4", "mxfp4")]
    full = replay(a, cfgs, kinds=["linear", "residual"], progress=False)
    one = replay(a, cfgs, kinds=["linear", "residual"], progress=False, max_tokens=16)
    assert len(full.per_sequence) == len(one.per_sequence) > 0
    for ef, eo in zip(full.per_sequence, one.per_sequence):
        assert (ef["config"], ef["tensor"]) == (eo["config"], eo["tensor"])
        assert len(ef["a_noise"]) == 2 and len(eo["a_noise"]) == 1
        for k in ("a_noise", "a_under", "a_nonzero", "a_signal"):
            assert ef[k][0] == eo[k][0], (k, ef["tensor"], ef["config"])
        if "out_signal" in ef:
            sig = eo["out_signal"][0]
            assert ef["out_signal"][0] == pytest.approx(sig, rel=1e-5)
            nz = eo["out_noise"][0]
            assert abs(ef["out_noise"][0] - nz) <= 1e-5 * nz + 1e-9 * sig, (ef["tensor"], ef["config"])


def test_static_per_tensor_config_needs_and_uses_calibration(tiny_traces):
    """w8a8_int_tensor_static: without a calibration trace it raises; with one, the activation
    scale is frozen from the calibration trace (absmax), so its result differs from the dynamic
    per-tensor config and from calibrating on a different trace."""
    a, b = tiny_traces
    st = PRESETS["w8a8_int_tensor_static"]
    assert st.act_calib == "absmax" and "static" in st.describe()
    with pytest.raises(FmtlabError, match="static activation scales"):
        replay(a, st, kinds=["linear"], progress=False)
    rb = replay(a, [st, "w8a8_int_tensor"], kinds=["linear"], layers="q_proj", calib=b, progress=False)
    ra = replay(a, st, kinds=["linear"], layers="q_proj", calib=a, progress=False)
    sb, dyn = rb.rows[0], rb.rows[1]
    assert sb["config"] == "w8a8_int_tensor_static" and dyn["config"] == "w8a8_int_tensor"
    assert sb["a_mse"] != dyn["a_mse"] and sb["a_mse"] != ra.rows[0]["a_mse"]
    assert make_config("s:w=int8_per_tensor;a=int8_per_tensor;c=percentile(99.9)").act_calib == "percentile(99.9)"
    with pytest.raises(FmtlabError, match="act_calib"):
        ReplayConfig("bad", None, "int8_per_tensor", act_calib="median")
    with pytest.raises(FmtlabError, match="per-tensor"):
        replay(a, ReplayConfig("tok", None, "int8_per_token", act_calib="absmax"), kinds=["linear"],
               layers="q_proj", calib=b, progress=False)
