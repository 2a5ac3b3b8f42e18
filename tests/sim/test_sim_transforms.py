"""Each transform preserves the layer function before quantization: X W^T == T(X) T'(W)^T (+ hp terms)."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import IntQ

from fmtlab.errors import FmtlabError
from fmtlab.sim.transform_base import Context, Decomposition
from fmtlab.sim.transforms import (AQAS, AuxChannels, Compose, ExcludeTokens, Hadamard, LLMInt8, PerTokenScale,
                                   SmoothQuant, get_transform, hadamard_matrix)


def _xw(t=48, k=96, n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[:, 5] *= 40.0  # an outlier channel
    x[0, :] *= 8.0  # a sink-like first token
    x[3, 17] = -300.0  # a massive single value
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    pos = np.tile(np.arange(t // 2), 2)
    return x, w, Context(positions=pos, act_q=IntQ(8).fake_quantize, weight_q=IntQ(4, per_row=True).fake_quantize)


ALL = [LLMInt8(), LLMInt8(2.0), AuxChannels(6.0), AuxChannels(ratio=4.0), SmoothQuant(0.5), SmoothQuant(0.85),
       AQAS(alphas=(0.3, 0.5, 0.7), refine_channels=2), Hadamard(), Hadamard(seed=None), PerTokenScale(),
       ExcludeTokens(), ExcludeTokens(3), Compose(ExcludeTokens(), SmoothQuant(0.5), Hadamard()),
       Compose(PerTokenScale(), LLMInt8()), Compose(Hadamard(), AuxChannels(2.0))]


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_function_preserving(t):
    x, w, ctx = _xw()
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    d = t.fit(x, w, ctx).decompose(x, w, ctx)
    got = d.reconstruct()
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_fitted_on_calibration_still_preserving(t):
    """Static scales fitted on other data still give an exact rewrite of new data."""
    xc, w, ctx = _xw(seed=1)
    x, _, _ = _xw(seed=2)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    got = t.fit(xc, w, ctx).decompose(x, w, ctx).reconstruct()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_llm_int8_splits_outlier_columns():
    x, w, _ = _xw()
    d = LLMInt8(6.0).decompose(x, w)
    cols = np.flatnonzero(np.abs(x).max(axis=0) >= 6.0)
    assert 5 in cols and 17 in cols
    assert np.all(d.x[:, cols] == 0) and np.all(d.w[:, cols] == 0)
    assert d.hp[0].x.shape == (x.shape[0], cols.size)
    assert np.abs(d.x).max() < 6.0


def test_aux_channels_bounds_and_width():
    x, w, _ = _xw()
    d = AuxChannels(6.0).decompose(x, w)
    assert np.abs(d.x).max() <= 6.0 + 1e-5
    n = np.maximum(np.ceil(np.abs(x).max(axis=0) / 6.0), 1)
    assert d.x.shape[1] == int(n.sum()) and d.w.shape[1] == d.x.shape[1]


def test_smoothquant_scales_formula():
    x, w, _ = _xw()
    t = SmoothQuant(0.5).fit(x, w)
    s = np.sqrt(np.abs(x).max(0)) / np.sqrt(np.abs(w).max(0))
    np.testing.assert_allclose(t.scales, s, rtol=1e-5)


def test_aqas_does_no_worse_than_smoothquant_half():
    x, w, ctx = _xw()
    ref = x @ w.T
    t = AQAS(alphas=(0.0, 0.25, 0.5, 0.75, 1.0)).fit(x, w, ctx)

    def err(tr):
        return float(np.sum((tr.decompose(x, w, ctx).output(ctx.act_q, ctx.weight_q, hp_dtype=None) - ref) ** 2))

    assert err(t) <= err(SmoothQuant(0.5).fit(x, w)) * (1 + 1e-6)
    assert t.alpha in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_hadamard_orthonormal_and_spreads_outliers():
    for k in (96, 576, 1536, 7):
        r = hadamard_matrix(k).astype(np.float64)
        np.testing.assert_allclose(r @ r.T, np.eye(k), atol=1e-6)
    x, w, _ = _xw()
    d = Hadamard().decompose(x, w)
    assert np.abs(d.x).max() < np.abs(x).max() / 2


def test_per_token_scale_rows_have_unit_absmax():
    x, w, _ = _xw()
    d = PerTokenScale().decompose(x, w)
    np.testing.assert_allclose(np.abs(d.x).max(axis=1), 1.0, rtol=1e-6)


def test_exclude_tokens_rows():
    x, w, ctx = _xw()
    d = ExcludeTokens().decompose(x, w, ctx)
    first = np.flatnonzero(ctx.positions == 0)
    assert np.all(d.x[first] == 0) and list(d.hp[0].rows) == list(first)
    d2 = ExcludeTokens().decompose(x, w, Context(positions=ctx.positions, prefix_len=3))
    assert len(d2.hp[0].rows) == 6
    with pytest.raises(FmtlabError, match="positions"):
        ExcludeTokens().decompose(x, w, Context())


def test_quantized_output_uses_fp16_hp_path():
    x, w, _ = _xw()
    d = LLMInt8().decompose(x, w)
    y16 = d.output(None, None)  # hp terms rounded to fp16 operands
    y32 = d.output(None, None, hp_dtype=None)
    assert not np.array_equal(y16, y32)
    np.testing.assert_allclose(y16, y32, rtol=0, atol=1e-2 * np.abs(y32).max())


def test_get_transform_parsing():
    assert get_transform(None) is None and get_transform("identity") is None
    t = get_transform("smoothquant(alpha=0.8)")
    assert isinstance(t, SmoothQuant) and t.alpha == 0.8
    c = get_transform("exclude_sink+llm_int8(threshold=4)")
    assert isinstance(c, Compose) and c.transforms[1].threshold == 4.0
    assert get_transform("exclude_first").n_first == 1
    with pytest.raises(FmtlabError, match="unknown transform"):
        get_transform("nope")
    with pytest.raises(FmtlabError, match="bad arguments"):
        get_transform("hadamard(bogus=1)")
    with pytest.raises(FmtlabError, match="alpha"):
        SmoothQuant(1.5)


def test_shape_check():
    with pytest.raises(FmtlabError, match="X \\[tokens, K\\]"):
        LLMInt8().decompose(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


def test_decomposition_then_composes_row_scales():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    outer = PerTokenScale().decompose(x, w)
    inner = LLMInt8(0.5).decompose(outer.x, outer.w)
    d = outer.then(inner)
    assert isinstance(d, Decomposition)
    np.testing.assert_allclose(d.reconstruct(), x @ w.T, atol=1e-5)
