"""FPTQuant: function-preserving transforms, their L_p fit, merge and the static quantization path.

Float32 bound used throughout: merging must keep every logit within
``PRESERVE_ATOL * max(1, max |logit|)`` of the original (float32 rounding of the merged weights and
of the reordered sums; measured ~7e-6 here, a wrong transform gives >1e-2).
"""

import pytest
import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.methods.fptquant import (FPTQuantTransforms, LocalLoss, changed_keys, fit_fptquant, function_preserving,
                                     llama_shape, lp_loss, merge_fptquant, merged_layer_weights)
from fmtlab.methods.fptquant_quant import (TokenScaledStatic, prepare_static, quantize_fptquant, token_rms,
                                           train_end_to_end)
from fmtlab.pytorch.specs import resolve

PRESERVE_ATOL = 1e-4
VOCAB_T = 96


def _tiny(tie: bool = False, outliers: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB_T, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    m = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-unit RMSNorm gains, so that folding them is exercised
        for layer in m.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 2.0, generator=g)
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0, generator=g)
            if outliers:  # a few outlier residual channels and outlier MLP channels
                layer.input_layernorm.weight[:3] = 20.0
                layer.mlp.up_proj.weight[:4] *= 30.0
        m.model.norm.weight.uniform_(0.5, 2.0, generator=g)
    return m


def _ids(seed: int, n: int = 2, t: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB_T, (n, t), generator=torch.Generator().manual_seed(seed))


def _randomize(tr: FPTQuantTransforms, seed: int = 2, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0.0, std, generator=g)


def _bound(model, ids) -> float:
    with torch.no_grad():
        return PRESERVE_ATOL * max(1.0, float(model(ids).logits.abs().max()))


ALONE = {"qk": dict(qk=True, v=False, up=False, residual=False),
         "v": dict(qk=False, v=True, up=False, residual=False),
         "up": dict(qk=False, v=False, up=True, residual=False),
         "residual": dict(qk=False, v=False, up=False, residual=True),
         "all": dict(qk=True, v=True, up=True, residual=True)}
CHANGED = {"qk": ("q_proj", "k_proj"), "v": ("v_proj", "o_proj"), "up": ("up_proj", "down_proj"),
           "residual": ("q_proj", "o_proj", "gate_proj", "down_proj"), "all": ("q_proj", "v_proj", "up_proj")}


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("which", list(ALONE))
def test_each_transform_is_function_preserving(which, tie):
    """Invariant: merging any one transform (random, far from the identity) or all of them keeps the
    logits within the float32 bound, and the transform really changed the weights it targets."""
    m = _tiny(tie=tie)
    ids = _ids(1)
    tr = fit_fptquant(m, steps=0, seed=0, **ALONE[which])
    _randomize(tr)
    merged = merge_fptquant(m, tr)
    assert function_preserving(m, merged, ids) <= _bound(m, ids)
    for name in CHANGED[which]:
        path = f"model.layers.0.{'self_attn' if name in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{name}"
        a, b = m.get_submodule(path), merged.get_submodule(path)
        assert float((a.weight - b.weight).detach().abs().max()) > 1e-3, name


def test_function_preserving_detects_a_broken_merge():
    """The check is sensitive: a key-only change (no inverse on the queries) moves the logits."""
    m = _tiny()
    ids = _ids(1)
    tr = fit_fptquant(m, steps=0, **ALONE["qk"])
    _randomize(tr, std=1.0)
    broken = merge_fptquant(m, tr)
    with torch.no_grad():
        broken.model.layers[0].self_attn.k_proj.weight.copy_(
            merged_layer_weights({"k": m.model.layers[0].self_attn.k_proj.weight.detach(),
                                  "q": m.model.layers[0].self_attn.q_proj.weight.detach()},
                                 dict(tr.layers[0]), tr.shape)["k"])
        broken.model.layers[0].self_attn.q_proj.weight.copy_(m.model.layers[0].self_attn.q_proj.weight)
    assert function_preserving(m, broken, ids) > 10 * _bound(m, ids)


def test_merge_leaves_the_model_unless_inplace():
    m = _tiny(tie=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tr = fit_fptquant(m, steps=0)
    merged = merge_fptquant(m, tr)
    assert merged is not m and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight  # untied by the rotation
    assert merge_fptquant(m, tr, inplace=True) is m


def test_fit_reduces_the_lp_loss():
    """The local fit lowers each layer's L_4 loss of its merged weights, and the merged model's
    weights have a lower total L_4 loss than with the rotation alone."""
    m = _tiny(outliers=True)
    tr = fit_fptquant(m, steps=60)
    assert len(tr.history) == 2 and all(len(h) == 61 for h in tr.history)
    assert all(h[-1] < 0.98 * h[0] for h in tr.history)
    rot = merge_fptquant(m, fit_fptquant(m, steps=0, qk=False, v=False, up=False))
    fit = merge_fptquant(m, tr)

    def total(model):
        ws = {}
        for i, layer in enumerate(model.model.layers):
            for k, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj),
                           ("o", layer.self_attn.o_proj), ("up", layer.mlp.up_proj), ("down", layer.mlp.down_proj)):
                ws[f"{k}{i}"] = mod.weight.detach()
        return float(lp_loss(ws, 4.0, tuple(ws)))

    assert total(fit) < total(rot)


def test_local_loss_fast_path_matches_the_direct_loss():
    """LocalLoss (closed forms in fourth moments for p = 4) equals lp_loss of the merged weights,
    value and gradient, for random transforms; p != 4 takes the direct path."""
    m = _tiny()
    tr = fit_fptquant(m, steps=0)
    _randomize(tr, std=0.5)
    from fmtlab.methods.fptquant import base_layer_weights

    base = base_layer_weights(m, 1, tr.rotation, torch.float64)
    params = {k: v.detach().to(torch.float64).requires_grad_(True) for k, v in tr.layers[1].items()}
    keys = changed_keys(tr)
    for p in (4.0, 3.0):
        fast = LocalLoss(base, tr.shape, keys, p)(params)
        direct = lp_loss(merged_layer_weights(base, params, tr.shape), p, keys)
        assert torch.allclose(fast, direct, rtol=1e-12, atol=0)
        gf = torch.autograd.grad(fast, list(params.values()))
        gd = torch.autograd.grad(direct, list(params.values()))
        for a, b in zip(gf, gd):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_merge_is_deterministic_with_a_seed():
    """Same seed: bit-identical merged weights; another seed: another rotation."""
    m = _tiny()
    a = merge_fptquant(m, fit_fptquant(m, steps=10, seed=0)).state_dict()
    b = merge_fptquant(m, fit_fptquant(m, steps=10, seed=0)).state_dict()
    c = merge_fptquant(m, fit_fptquant(m, steps=10, seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_bad_arguments_raise():
    m = _tiny()
    for kw in (dict(steps=-1), dict(steps=1.5), dict(lr=0.0), dict(lr=float("nan")), dict(p=0.5)):
        with pytest.raises(FmtlabError):
            fit_fptquant(m, **kw)
    with pytest.raises(FmtlabError, match="e2e_steps"):
        prepare_static(m, "fptquant", torch.zeros(2, 8, dtype=torch.long), steps=0, e2e_steps=-2)
    with pytest.raises(FmtlabError, match="calib_batches"):
        train_end_to_end(m, fit_fptquant(m, steps=0), [], steps=1)
    with pytest.raises(FmtlabError, match="Llama"):
        fit_fptquant(nn.Linear(4, 4))
    with pytest.raises(FmtlabError, match="FPTQuantTransforms"):
        merge_fptquant(m, {"qk": 1})
    other = _tiny()
    other.model.layers = other.model.layers[:1]
    with pytest.raises(FmtlabError, match="shape"):
        merge_fptquant(other, fit_fptquant(m, steps=0))
    singular = fit_fptquant(m, steps=0)
    with torch.no_grad():  # M = I + v_delta = 0 for KV head 0 of layer 1
        singular.layers[1]["v_delta"][0] = -torch.eye(singular.shape.head_dim)
    with pytest.raises(FmtlabError, match="singular"):
        merge_fptquant(m, singular)
    q, _ = quantize_fptquant(m, "int4_per_channel", "int8")
    with pytest.raises(FmtlabError, match="nn.Linear"):
        llama_shape(q)
    with pytest.raises(FmtlabError, match="batch"):
        function_preserving(m, m, torch.zeros(3, dtype=torch.long))
    with pytest.raises(FmtlabError, match="unknown"):
        prepare_static(m, "spinquant", _ids(0))
    with pytest.raises(FmtlabError, match="per-token patterns"):
        quantize_fptquant(m, "int4_per_channel", "int8", per_token=("no_such_layer",))


def test_token_scaled_static_quantizes_normalised_rows():
    """TokenScaledStatic: output = RMS(x) * Q_static(x / RMS(x)); calibration observes the
    normalised rows; rows of very different magnitude keep their relative error."""
    q = resolve("int8", "static_activations")
    ts = TokenScaledStatic(q, 8, "t")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 8, generator=g) * torch.tensor([1e-3, 1e-2, 1.0, 10.0, 100.0, 1e3]).reshape(1, 6, 1)
    with pytest.raises(FmtlabError, match="never calibrated"):
        ts(x)
    ts.observing = True
    assert torch.equal(ts(x), x)
    ts.observing = False
    ts.freeze()
    s = token_rms(x)
    assert float(ts.scale) == float(q.scales_from_statistic(q.statistic((x / s)[0]).to(torch.float32)))
    y = ts(x)
    rel = ((y - x).norm(dim=-1) / x.norm(dim=-1)).max()
    assert float(rel) < 0.02
    assert token_rms(torch.zeros(2, 3)).eq(1).all()


def test_fptquant_reduces_static_w4a4_error_on_planted_outliers():
    """Synthetic case (outlier residual channels and MLP channels planted in a tiny Llama): static
    INT4 W4A4 logits error relative to float is less than half of the no-transform and of the
    Hadamard-alone error (measured: 0.41 / 0.31 vs 0.09)."""
    m = _tiny(outliers=True)
    cal, ev = _ids(10, 4, 32), _ids(11, 4, 32)
    with torch.no_grad():
        ref = m(ev).logits

        def err(method):
            out = prepare_static(m, method, cal, activations="int4", steps=50)(ev).logits
            return float((out - ref).pow(2).mean() / ref.pow(2).mean())

        none, had, fpt = err("none"), err("hadamard"), err("fptquant")
    assert fpt < 0.5 * none and fpt < 0.5 * had, (none, had, fpt)


def test_end_to_end_training_updates_transforms_and_preserves_function():
    """A few straight-through KL steps change the trainable transforms, keep the residual rotation,
    and the merged float model stays function preserving."""
    m = _tiny(outliers=True)
    ids = _ids(4, 4, 16)
    tr = fit_fptquant(m, steps=5)
    before = [p.detach().clone() for p in tr.parameters()]
    rot = tr.rotation.clone()
    losses = train_end_to_end(m, tr, [ids[:2], ids[2:]], steps=3, lr=1e-2, activations="int4")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.parameters()))
    assert torch.equal(rot, tr.rotation)
    assert function_preserving(m, merge_fptquant(m, tr), ids) <= _bound(m, ids)
    with pytest.raises(FmtlabError):
        train_end_to_end(m, tr, [], steps=1)


def test_blockwise_residual_rotation_equals_the_dense_product():
    """hidden = 96 = 3 x 32: the rotation is block-diagonal and applied blockwise; the folded and
    rotated weights equal the dense float64 products W diag(g) R and R^T W (to float64 rounding),
    and the merged model is function preserving."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fmtlab.methods.fptquant import base_layer_weights, residual_rotation

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=96, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=VOCAB_T, max_position_embeddings=64)).eval()
    with torch.no_grad():
        m.model.layers[0].input_layernorm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    r = residual_rotation(96, 0)
    assert torch.count_nonzero(r) == 3 * 32 * 32
    base = base_layer_weights(m, 0, r)
    layer = m.model.layers[0]
    g = layer.input_layernorm.weight.detach().double()
    dense_q = (layer.self_attn.q_proj.weight.detach().double() * g) @ r
    dense_o = r.t() @ layer.self_attn.o_proj.weight.detach().double()
    assert torch.allclose(base["q"], dense_q, rtol=0, atol=1e-12)
    assert torch.allclose(base["o"], dense_o, rtol=0, atol=1e-12)
    ids = _ids(5)
    tr = fit_fptquant(m, steps=0)
    _randomize(tr)
    assert function_preserving(m, merge_fptquant(m, tr), ids) <= _bound(m, ids)


def test_quantize_fptquant_pipeline_with_calibrate_and_evaluate_perplexity():
    """quantize_fptquant installs the per-token scale on o_proj / down_proj only (static scales
    elsewhere), calibrate freezes every static quantizer, evaluate_perplexity runs on the result;
    weight-only prepare_static needs no calibration."""
    from fmtlab.pytorch import StaticActivation, calibrate, evaluate_perplexity

    m = _tiny()
    merged = merge_fptquant(m, fit_fptquant(m, steps=5))
    q, summary = quantize_fptquant(merged, "int4_per_channel", "int8")
    kinds = {n.rsplit(".", 1)[-1]: type(mod.act_q) for n, mod in q.named_modules() if hasattr(mod, "act_q")}
    assert kinds["o_proj"] is TokenScaledStatic and kinds["down_proj"] is TokenScaledStatic
    assert kinds["q_proj"] is StaticActivation and kinds["up_proj"] is StaticActivation
    assert "lm_head" in summary.skipped
    res = calibrate(q, _ids(7, 2, 16))
    assert res.layers == 7 * 2
    ppl = evaluate_perplexity(q, _ids(8, 2, 16), progress=False)
    assert ppl.ppl > 1 and ppl.sequences == 2
    w_only = prepare_static(m, "fptquant", _ids(7, 2, 16), activations=None, merged=merged)
    assert torch.isfinite(w_only(_ids(8)).logits).all()
