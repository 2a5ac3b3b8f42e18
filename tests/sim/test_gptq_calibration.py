"""Hessians (fmtlab.sim.hessian), block scale searches, AWQ, and the model side of GPTQ."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import Quantizer
from fmtlab.formats.presets import get_quantizer
from fmtlab.sim.awq import awq
from fmtlab.sim.gptq import gptq, hessian_error, prepare_hessian, rtn
from fmtlab.sim.hessian import HessianAccumulator, HessianCache, calibration_key, trace_hessians
from fmtlab.sim.scale_search import block_scale_search, searched_fake_quantize


def _layer(seed, R=16, C=64, n=256):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, C)) * rng.lognormal(0, 1, C)
    X = X @ (np.eye(C) + 0.3 * rng.standard_normal((C, C)))
    W = (rng.standard_normal((R, C)) * 0.05).astype(np.float32)
    return W, X, 2 * X.T @ X / n


def test_accumulator_streams_2xtx_over_n():
    _, X, H = _layer(0)
    acc = HessianAccumulator(64)
    for part in np.array_split(X, 5):
        acc.add(part)
    np.testing.assert_allclose(acc.hessian(), H, rtol=1e-12, atol=1e-12)
    with pytest.raises(FmtlabError, match="features"):
        acc.add(X[:, :3])
    with pytest.raises(FmtlabError, match="no calibration rows"):
        HessianAccumulator(4).hessian()


def test_cache_roundtrip_and_key_mismatch(tmp_path):
    _, _, H = _layer(1)
    key = calibration_key("m", {"texts": "calib"})
    c = HessianCache(tmp_path, key)
    assert c.get("a.b") is None
    c.put("a.b", H, 256)
    H2, n = c.get("a.b")
    assert n == 256 and np.array_equal(H2, H)
    other = HessianCache(tmp_path, calibration_key("m", {"texts": "other"}))
    assert other.get("a.b") is None
    with pytest.raises(FmtlabError, match="16 hex"):
        HessianCache(tmp_path, "../x")


def test_prepared_hessian_gives_the_same_bits():
    W, _, H = _layer(2)
    q = get_quantizer("nvfp4")
    a = gptq(W, H, q).weight
    b = gptq(W, prepare_hessian(H), q).weight
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name,search", [("nvfp4", "mse"), ("mxfp4", "mse")])
def test_block_scale_search_never_loses_to_the_rule(name, search):
    """The rule's own scale is a candidate and ties keep it: per block, the searched weight error
    is at most the rule's; under GPTQ the search composes (result is on the quantizer's grid)."""
    W, _, H = _layer(3)
    q = get_quantizer(name)
    Ws = searched_fake_quantize(W, q, search)
    Wr = rtn(W, q)
    K = q.granularity.size
    es = ((Ws.astype(np.float64) - W) ** 2).reshape(-1, K).sum(axis=1)
    er = ((Wr.astype(np.float64) - W) ** 2).reshape(-1, K).sum(axis=1)
    assert np.all(es <= er) and es.sum() < er.sum()
    res = gptq(W, H, q, scale_search=search)
    assert np.array_equal(q.dequantize(res.qtensor(q)), res.weight)
    assert hessian_error(W, res.weight, H) < hessian_error(W, Wr, H)
    s = block_scale_search(W, q, search)
    assert s.shape == (W.size // K,) and np.all(s > 0)


def test_gptq_under_the_four_over_six_rule():
    """The formats' Four Over Six rule (catalogue) runs under GPTQ like any rule: the result is
    that quantizer's own (dequantize of codes / scales), and below RTN on a correlated layer."""
    W, _, H = _layer(6)
    q = get_quantizer("nvfp4", scale_rule="four_over_six")
    res = gptq(W, H, q)
    assert np.array_equal(q.dequantize(res.qtensor(q)), res.weight)
    assert hessian_error(W, res.weight, H) < hessian_error(W, rtn(W, q), H)
    assert res.tensor_scale == pytest.approx(float(np.abs(W).max()) / (256 * 6), rel=1e-6)


def test_scale_search_bad_input():
    W, _, _ = _layer(4)
    with pytest.raises(FmtlabError, match="block quantizer"):
        block_scale_search(W, get_quantizer("int4_per_channel"))
    with pytest.raises(FmtlabError, match="Four Over Six"):
        block_scale_search(W, get_quantizer("nvfp4", scale_rule="four_over_six"))
    with pytest.raises(FmtlabError, match="unknown scale search"):
        block_scale_search(W, get_quantizer("nvfp4"), "max")


@settings(max_examples=15)
@given(st.integers(0, 2 ** 31), st.sampled_from(["int4_per_channel", "nvfp4", "dint4_per_channel"]))
def test_awq_never_above_rtn(seed, name):
    """alpha = 0 is on the grid and makes s = 1, i.e. RTN itself: AWQ's calibration error is at
    most RTN's, for any quantizer."""
    W, _, H = _layer(seed % 1000, R=8, C=32, n=64)
    q = get_quantizer(name)
    r = awq(W, H, q, n_grid=5)
    assert r.errors[0] == pytest.approx(hessian_error(W, rtn(W, q), H), rel=1e-12)
    assert hessian_error(W, r.weight, H) <= hessian_error(W, rtn(W, q), H) * (1 + 1e-12)


def test_awq_under_gptq_and_scales_merge():
    W, X, H = _layer(5)
    q = get_quantizer("int4_per_channel")
    r = awq(W, H, q, method="gptq")
    # the merged form: inputs divided by s, the quantized scaled weight on the quantizer's grid
    Xs = X / r.scales
    np.testing.assert_allclose(Xs @ r.scaled.T.astype(np.float64), X @ r.weight.T.astype(np.float64),
                               rtol=1e-4, atol=1e-4)
    assert hessian_error(W, r.weight, H) < hessian_error(W, rtn(W, q), H)


# ---- the torch side ---------------------------------------------------------------------------
def test_model_hessians_trace_hessians_and_fit(tmp_path):
    pytest.importorskip("transformers")
    from sim_helpers import TEXTS, CharTokenizer, tiny_llama

    from fmtlab.methods.gptq import (apply_weights, collect_hessians, fit_weights, input_moments,
                                     load_weights, save_weights)
    from fmtlab.models.record import record

    model, tok = tiny_llama(), CharTokenizer()
    hs = collect_hessians(model, tok, TEXTS, seq_len=32, n_sequences=4, batch_size=2, cache_dir=tmp_path / "h")
    names = list(hs)
    assert len(names) == 14
    q0, k0 = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert hs[q0] is hs[k0]  # one input, one array
    again = collect_hessians(model, tok, TEXTS, seq_len=32, n_sequences=4, batch_size=2, cache_dir=tmp_path / "h")
    assert all(np.array_equal(again[n], hs[n]) for n in names) and again[q0] is again[k0]
    # the trace route gives the same Hessians (float32 rows, float64 sums)
    tr = record(model, tok, TEXTS, out=tmp_path / "t", seq_len=32, n_sequences=4, outputs=False,
                progress=False, text_info={"source": "test", "split": "calib"})
    th = trace_hessians(tr)
    for n in names:
        np.testing.assert_allclose(th[n], hs[n], rtol=1e-5, atol=1e-7)
    ev = record(model, tok, TEXTS, out=tmp_path / "e", seq_len=32, n_sequences=2, outputs=False,
                progress=False, text_info={"source": "test", "split": "eval"})
    with pytest.raises(FmtlabError, match="eval"):
        trace_hessians(ev)
    with pytest.raises(FmtlabError, match="calib"):
        collect_hessians(model, tok, TEXTS, split="eval")
    fitted = fit_weights(model, "int4_per_channel", hs, method="gptq")
    rt = fit_weights(model, "int4_per_channel", method="rtn")
    mom = input_moments(model, tok, TEXTS, seq_len=32, n_sequences=4)
    wins = sum(hessian_error(W0, fitted[n], mom[n].hessian()) < hessian_error(W0, rt[n], mom[n].hessian())
               for n, W0 in ((n, dict(model.named_modules())[n].weight.detach().numpy()) for n in names))
    assert wins >= 10
    save_weights(tmp_path / "w.safetensors", fitted, {"method": "gptq", "weights": "int4_per_channel"})
    back = load_weights(tmp_path / "w.safetensors", {"method": "gptq"})
    assert set(back) == set(fitted) and all(np.array_equal(back[n], fitted[n]) for n in names)
    assert load_weights(tmp_path / "w.safetensors", {"method": "rtn"}) is None
    m2 = apply_weights(model, fitted)
    assert np.array_equal(dict(m2.named_modules())[q0].weight.detach().numpy(), fitted[q0])
    assert not np.array_equal(dict(model.named_modules())[q0].weight.detach().numpy(), fitted[q0])


def test_linear_input_map_and_transformed_hessian():
    """SmoothQuant / AQAS: A = diag(1/s), W' = W diag(s); Hadamard: A = R; A^T H A is the Hessian
    of X A. Row-wise, token-dependent or split transforms are refused."""
    from fmtlab.sim.hessian import transformed_hessian
    from fmtlab.sim.transform_base import linear_input_map
    from fmtlab.sim.transforms import Hadamard, LLMInt8, PerTokenScale, SmoothQuant

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 16)) * rng.lognormal(0, 1, 16)
    W = rng.standard_normal((8, 16)).astype(np.float32)
    H = 2 * X.T @ X / 64
    sq = SmoothQuant(0.5).fit(X.astype(np.float32), W)
    A, Wt = linear_input_map(sq, W)
    assert np.count_nonzero(A - np.diag(np.diagonal(A))) == 0
    np.testing.assert_allclose(np.diagonal(A), 1 / sq.scales, rtol=1e-6)
    np.testing.assert_array_equal(Wt, W * sq.scales)
    Xa = X @ A
    np.testing.assert_allclose(transformed_hessian(H, A), 2 * Xa.T @ Xa / 64, rtol=1e-10)
    R = Hadamard(seed=1)
    A2, Wt2 = linear_input_map(R, W)
    np.testing.assert_allclose(A2, R.matrix(16), rtol=0, atol=0)
    Xr = X @ A2
    np.testing.assert_allclose(transformed_hessian(H, A2), 2 * Xr.T @ Xr / 64, rtol=1e-9, atol=1e-9)
    for t in (LLMInt8(), PerTokenScale()):
        with pytest.raises(FmtlabError, match="linear map"):
            linear_input_map(t, W)
