"""CushionCache (fmtlab.methods.cushion), the KV prefix (fmtlab.pytorch.kv_prefix) in record /
quantize_model / calibrate / evaluate_perplexity, and the massive-activation intervention
(fmtlab.methods.massive), on the tiny seeded Llama of tests/torch_helpers.py (the `llama` fixture)."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from torch_helpers import VOCAB  # noqa: E402

from fmtlab.errors import FmtlabError  # noqa: E402
from fmtlab.pytorch import calibrate, quantize_model  # noqa: E402
from fmtlab.pytorch.activations import StaticActivation  # noqa: E402
from fmtlab.pytorch.perplexity import evaluate_perplexity  # noqa: E402
from fmtlab.methods.cushion import max_activation, search_prefix, tune_prefix  # noqa: E402
from fmtlab.pytorch.kv_prefix import KVPrefix, kv_prefix_attached, kv_prefix_of  # noqa: E402
from fmtlab.methods.massive import find_massive, massive_intervention  # noqa: E402


class Tok:
    """A byte tokenizer (ids < VOCAB) with BOS 1 / EOS 2 and the methods fmtlab uses."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False, **kw):
        return {"input_ids": self.encode(text)}

    def encode(self, text, add_special_tokens=False):
        return [3 + b % (VOCAB - 3) for b in text.encode("utf-8")]

    def decode(self, ids):
        return "".join(chr(32 + i % 90) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


TEXTS = ["The quick brown fox jumps over the lazy dog. " * 8, "Pack my box with five dozen liquor jugs! " * 8]


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (4, 16), generator=g)


@pytest.fixture(scope="module")
def greedy(llama, ids):
    return search_prefix(llama, Tok(), ids, threshold=0.0, max_tokens=3, n_candidates=6)


def test_search_curve_non_increasing_and_prefix_reproduces_it(llama, ids, greedy):
    """Invariant: each accepted step lowers the max activation (curve strictly decreasing after
    curve[0], the start token alone), the prefix starts with BOS, and re-measuring the returned
    KV prefix gives the curve's last value."""
    r = greedy
    assert r.tokens[0] == Tok.bos_token_id and len(r.curve) == len(r.tokens) and 1 <= len(r.tokens) <= 3
    assert all(b < a for a, b in zip(r.curve, r.curve[1:]))
    assert r.curve[-1] <= r.curve[0]
    assert max_activation(llama, ids, r.kv_prefix) == pytest.approx(r.curve[-1], rel=1e-6)
    assert r.kv_prefix.tokens == r.tokens and r.kv_prefix.length == len(r.tokens)
    assert kv_prefix_of(llama) is None  # nothing left attached


def test_threshold_stops_the_search(llama, ids, greedy):
    """A step is taken iff its relative improvement reaches the threshold: just above the first
    step's gain the prefix stays the start token (and the rejected value is reported), just
    below it the same first token is taken."""
    if len(greedy.tokens) < 2:
        pytest.skip("the greedy search found no improving token on this tiny model")
    gain = (greedy.curve[0] - greedy.curve[1]) / greedy.curve[0]
    above = search_prefix(llama, Tok(), ids, threshold=min(0.999, gain * 1.001), max_tokens=3, n_candidates=6)
    assert above.tokens == greedy.tokens[:1] and above.rejected == pytest.approx(greedy.curve[1], rel=1e-6)
    below = search_prefix(llama, Tok(), ids, threshold=gain * 0.999, max_tokens=2, n_candidates=6)
    assert below.tokens == greedy.tokens[:2] and below.rejected is None  # stopped by max_tokens


@pytest.mark.parametrize("kw", [{"threshold": 1.0}, {"threshold": -0.1}, {"max_tokens": 0}, {"n_candidates": 0},
                                {"candidates": [VOCAB + 5]}, {"start": "nope"}, {"tune_steps": -1}])
def test_search_bad_arguments(llama, ids, kw):
    with pytest.raises(FmtlabError):
        search_prefix(llama, Tok(), ids, **kw)


def test_search_needs_texts(llama):
    with pytest.raises(FmtlabError):
        search_prefix(llama, Tok(), [])


def _fed_logits(model, prefix, ids):
    full = torch.cat([torch.tensor(prefix.tokens).expand(ids.shape[0], -1), ids], dim=1)
    with torch.no_grad():
        return model(full).logits[:, prefix.length:]


def test_kv_prefix_equals_feeding_the_prefix_tokens(llama, ids, greedy):
    """Both float paths: the logits behind the KV prefix equal those of the prefix tokens fed as
    text with their positions dropped, and so does evaluate_perplexity (per window)."""
    p = greedy.kv_prefix
    ref = _fed_logits(llama, p, ids)
    with torch.no_grad(), kv_prefix_attached(llama, p):
        got = llama(ids).logits
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    res = evaluate_perplexity(llama, ids, kv_prefix=p, progress=False, batch_size=3)
    logp = torch.log_softmax(ref[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double()
    np.testing.assert_allclose(res.seq_nll, nll.sum(1).numpy(), rtol=1e-5)
    assert res.ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    plain = evaluate_perplexity(llama, ids, progress=False)
    assert plain.ppl != pytest.approx(res.ppl, rel=1e-6)  # the prefix is really there


def test_kv_prefix_in_record(llama, greedy, tmp_path):
    """record(kv_prefix=) stores only the window tokens, each computed behind the prefix."""
    from fmtlab.models.record import record

    p = greedy.kv_prefix
    tr = record(llama, Tok(), TEXTS, out=tmp_path / "t", seq_len=16, n_sequences=2, residual=True,
                progress=False, kv_prefix=p)
    assert tr.manifest["n_tokens"] == 32 and tr.manifest["kv_prefix"]["tokens"] == list(p.tokens)
    wins = torch.tensor(tr.tensor("tokens:input_ids").reshape(2, 16))
    full = torch.cat([torch.tensor(p.tokens).expand(2, -1), wins], dim=1)
    with torch.no_grad():
        h = llama(full, output_hidden_states=True).hidden_states[1][:, p.length:]
    got = tr.tensor("model.layers.0:residual").reshape(2, 16, -1)
    np.testing.assert_allclose(got, h.numpy(), atol=2e-5, rtol=1e-5)
    with pytest.raises(FmtlabError, match="attention"):
        record(llama, Tok(), TEXTS, out=tmp_path / "u", seq_len=16, n_sequences=2, attention=True,
               progress=False, kv_prefix=p)


def test_quantize_model_carries_the_prefix(llama, ids, greedy):
    """quantize_model(kv_prefix=p) then calibrate/evaluate == calibrate/evaluate with kv_prefix=p:
    the same frozen static scales (bit-exact) and perplexity; attaching a second prefix raises."""
    p = greedy.kv_prefix
    a, _ = quantize_model(llama, "int8_per_tensor", "int8_per_tensor", activation_scales="static", kv_prefix=p)
    b, _ = quantize_model(llama, "int8_per_tensor", "int8_per_tensor", activation_scales="static")
    calibrate(a, ids)
    calibrate(b, ids, kv_prefix=p)
    sa = {n: m.scale.clone() for n, m in a.named_modules() if isinstance(m, StaticActivation)}
    sb = {n: m.scale.clone() for n, m in b.named_modules() if isinstance(m, StaticActivation)}
    assert sa.keys() == sb.keys() and sa
    for n in sa:
        assert torch.equal(sa[n].view(torch.int32), sb[n].view(torch.int32)), n
    assert evaluate_perplexity(a, ids, progress=False).ppl == evaluate_perplexity(b, ids, kv_prefix=p, progress=False).ppl
    with pytest.raises(FmtlabError, match="already has a KV prefix"):
        evaluate_perplexity(a, ids, kv_prefix=p, progress=False)
    assert kv_prefix_of(llama) is None


def test_tune_prefix_keeps_model_frozen(llama, ids, greedy):
    """Tuning changes only the prefix keys/values (and lowers its loss on a fixed batch): the
    model's weights are bit-identical after."""
    before = {n: t.detach().clone() for n, t in llama.state_dict().items()}
    p = greedy.kv_prefix
    tuned, losses = tune_prefix(llama, p, ids, steps=4, lr=1e-2, lam=1.0, batch_size=4)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert tuned.tuned and tuned.tokens == p.tokens
    assert any(not torch.equal(k, k0) for k, k0 in zip(tuned.keys, p.keys))
    for n, t in llama.state_dict().items():
        assert torch.equal(t, before[n]), n
    with pytest.raises(FmtlabError):
        tune_prefix(llama, p, ids, steps=0)


def test_kv_prefix_rejects_bad_shapes():
    with pytest.raises(FmtlabError):
        KVPrefix((1, 2), (torch.zeros(1, 2, 3, 4),), (torch.zeros(1, 2, 3, 4),))
    with pytest.raises(FmtlabError):
        KVPrefix((1,), (), ())


# ----------------------------------------------------------------------- massive activations

@pytest.fixture()
def sink(llama):
    """The tiny Llama with a synthetic massive activation: block 0 adds 300 to channel 5 of
    the first token (the shape of a real attention sink)."""
    def add(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, 0, 5] += 300.0
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = llama.model.layers[0].register_forward_hook(add)
    yield llama
    handle.remove()


def test_massive_mean_keeps_zero_destroys(sink, ids):
    """find_massive locates block 0 / channel 5 / position 0; zeroing it moves the logits far
    more than setting it to its calibration mean."""
    sites = find_massive(sink, Tok(), TEXTS, seq_len=16, n_sequences=2)
    assert sites is not None and sites.block == 0 and sites.channels == (5,) and set(sites.positions) == {0}
    with torch.no_grad():
        ref = sink(ids).logits
        with massive_intervention(sink, sites, "mean") as st_mean:
            mean = sink(ids).logits
        with massive_intervention(sink, sites, "zero") as st_zero:
            zero = sink(ids).logits
        after = sink(ids).logits
    assert st_mean["replaced"] == ids.shape[0] == st_zero["replaced"]
    d_mean, d_zero = (mean - ref).norm(), (zero - ref).norm()
    assert d_zero > 0 and d_mean < 0.1 * d_zero
    torch.testing.assert_close(after, ref, atol=0, rtol=0)  # the hook is gone
    with pytest.raises(FmtlabError):
        with massive_intervention(sink, sites, "median"):
            pass


def test_find_massive_none_without_outliers(llama):
    assert find_massive(llama, Tok(), TEXTS, seq_len=16, n_sequences=2) is None


def test_claims_run_quick_on_the_tiny_model(sink):
    """Both registered claims run end to end (quick sizes) and return a verdict with intervals."""
    from fmtlab.analysis.methods import ClaimResult, Verdict
    from fmtlab.analysis.methods.section import make_context, run_claims

    ctx = make_context(sink, Tok(), seq_len=16, n_calib=2, n_eval=3, quick=True, calib_texts=TEXTS[:1],
                       eval_texts=TEXTS[1:])
    out = dict((c.key, r) for c, r in run_claims(["cushion", "massive"], ctx))
    assert set(out) == {"cushion", "massive"}
    for r in out.values():
        assert isinstance(r, ClaimResult) and isinstance(r.verdict, Verdict) and r.seconds >= 0
    c = out["cushion"].numbers
    assert c["ppl_w8a8_static"]["lo"] <= c["ppl_w8a8_static"]["value"] <= c["ppl_w8a8_static"]["hi"]
    assert out["massive"].numbers["block"] == 0 and out["massive"].verdict is not Verdict.NOT_APPLICABLE


@pytest.fixture()
def positional_sink(llama):
    """The tiny Llama with a synthetic attention-sink outlier: the input of block 0's down_proj
    gets +300 in channel 5 at absolute position 0 (as SmolLM2's layer-11 down_proj does at the
    first token), whatever that token is."""
    state = {}

    def layer_pre(module, args, kwargs):
        state["pos"] = kwargs["position_ids"]

    def down_pre(module, args):
        x = args[0].clone()
        x[..., 5] = x[..., 5] + 300.0 * (state["pos"] == 0).to(x.dtype)
        return (x,)

    hs = [llama.model.layers[0].register_forward_pre_hook(layer_pre, with_kwargs=True),
          llama.model.layers[0].mlp.down_proj.register_forward_pre_hook(down_pre)]
    yield llama
    for h in hs:
        h.remove()


def test_cushion_helps_static_w8a8_on_a_positional_sink(positional_sink, ids):
    """Where the first position carries the outlier, the searched prefix takes it: the max
    activation of the following tokens falls >= 20x, and the error of per-tensor static W8A8
    logits against the float logits (both behind the same prefix) falls >= 5x."""
    m = positional_sink
    r = search_prefix(m, Tok(), ids, n_candidates=6)
    assert r.baseline > 20 * r.curve[-1]
    p = r.kv_prefix

    def w8a8_error(prefix):
        q, _ = quantize_model(m, "int8_per_tensor", "int8_per_tensor", activation_scales="static", kv_prefix=prefix)
        calibrate(q, ids)
        with torch.no_grad(), kv_prefix_attached(m, prefix):
            ref = m(ids).logits
        with torch.no_grad():
            return float((q(ids).logits - ref).norm() / ref.norm())

    assert w8a8_error(p) * 5 < w8a8_error(None)
