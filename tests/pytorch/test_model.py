"""``quantize_model`` rewiring (nn.Linear and GPT-2 Conv1D), overrides, skip, transforms,
training through the rewired model, ``evaluate_perplexity`` and a torch.compile smoke test.

Tiny randomly initialised transformers models are built in the tests (2 layers, hidden 64).
Invariant: a rewired layer computes linear(Q_a(x), Q_w(W), b) with W in [out, in] layout and
Q_a applied to the [tokens, features] view, bit for bit.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fmtlab.errors import FmtlabError
from fmtlab.pytorch import LayerConfig, QuantLinear, evaluate_perplexity, quantize_model
from fmtlab.pytorch.specs import resolve

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

from torch_helpers import VOCAB


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))


def _qlayers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def test_gpt2_conv1d_rewired_and_copy_untouched(gpt2, ids):
    qm, summary = quantize_model(gpt2, weights="int4", activations="fp8_e4m3")
    q = _qlayers(qm)
    assert len(q) == 8 and all(m.kind == "conv1d" for m in q.values())
    assert "lm_head" in summary.skipped and len(summary) == 8
    assert not _qlayers(gpt2)  # inplace=False: the original is not rewired
    assert "int4" in str(summary) and "transformer.h.0.attn.c_attn" in str(summary)
    with torch.no_grad():
        out, ref = qm(ids).logits, gpt2(ids).logits
    assert out.shape == ref.shape and not torch.equal(out, ref)
    assert (out - ref).abs().max() < 1.0


def test_layer_math_bit_exact(gpt2):
    """A rewired Conv1D computes linear(Q_a(x2d), Q_w(W^T), b) exactly."""
    qm, _ = quantize_model(gpt2, weights="fp4_e2m1", activations="int8")
    layer = qm.transformer.h[0].mlp.c_fc
    assert isinstance(layer.inner, Conv1D)
    x = torch.randn(2, 5, 64)
    wq, aq = resolve("fp4_e2m1", "weights"), resolve("int8", "activations")
    want = F.linear(aq(x.reshape(-1, 64)).reshape(x.shape), wq(layer.inner.weight.t()), layer.inner.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), want)


def test_llama_linear_overrides_skip_and_patterns(llama, ids):
    qm, summary = quantize_model(
        llama, weights="int4", activations="fp8_e4m3",
        overrides={"*.mlp.*": {"weights": "int8"},           # dict: merged with the defaults
                   "layers.1.self_attn.o_proj": None,         # None: stays float
                   "re:layers\\.0\\.self_attn\\.[qk]_proj": LayerConfig(weights="fp4_e2m1")},
        skip=["lm_head", "*.v_proj"])
    rows = {r["name"]: r for r in summary.rows}
    assert rows["model.layers.0.mlp.up_proj"]["weights"].startswith("int8")
    assert rows["model.layers.0.mlp.up_proj"]["activations"].startswith("fp8_e4m3")
    assert rows["model.layers.0.self_attn.q_proj"]["weights"].startswith("fp4_e2m1")
    assert rows["model.layers.0.self_attn.q_proj"]["activations"] == "none"
    assert rows["model.layers.1.self_attn.q_proj"]["weights"].startswith("int4")
    assert "model.layers.1.self_attn.o_proj" in summary.skipped
    assert {"model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj", "lm_head"} <= set(summary.skipped)
    assert isinstance(qm.model.layers[1].self_attn.o_proj, nn.Linear)
    with torch.no_grad():
        assert torch.isfinite(qm(ids).logits).all()


def test_inplace_and_errors(llama):
    import copy

    m = copy.deepcopy(llama)
    out, summary = quantize_model(m, weights="int8", inplace=True)
    assert out is m and len(summary) == 14
    again, s2 = quantize_model(m, weights="int8")  # re-quantized, not wrapped twice
    assert len(s2) == 14 and len(s2.requantized) == 14 and "previous fake-quant replaced" in str(s2)
    assert not any(isinstance(q.inner, QuantLinear) for q in _qlayers(again).values())
    with pytest.raises(FmtlabError, match="nn.Module"):
        quantize_model("model", weights="int8")
    with pytest.raises(FmtlabError, match="override keys"):
        quantize_model(llama, weights="int8", overrides={"*": {"weight": "int4"}})
    with pytest.raises(Exception, match="unknown format"):
        quantize_model(llama, weights="notaformat")
    with pytest.raises(FmtlabError, match="mlp.down_proj.*does not divide"):
        quantize_model(llama, weights="int4_g64", overrides={"*.down_proj": {"weights": "int4_g96"}})


def test_requantize_replaces_config(llama, ids):
    """Issue 15 item 7: quantize_model over a quantized model replaces the fake-quant config
    (before: 0 layers rewired, mxfp4 over int4 silently stayed int4). The result is bit-identical
    to quantizing the float model directly; layers the new call leaves in float are unwrapped."""
    q4, _ = quantize_model(llama, weights="int4")
    qmx, s = quantize_model(q4, weights="mxfp4", activations="mxfp4")
    direct, _ = quantize_model(llama, weights="mxfp4", activations="mxfp4")
    assert len(s) == 14 and sorted(s.requantized) == sorted(s.changed)
    assert all(r["weights"] == "mxfp4" for r in s.rows)
    with torch.no_grad():
        assert torch.equal(qmx(ids).logits, direct(ids).logits)
    back, s2 = quantize_model(qmx, weights="int8", overrides={"*.mlp.*": None})
    assert len(s2.restored) == 6 and set(s2.restored) <= set(s2.skipped)
    assert isinstance(back.model.layers[0].mlp.up_proj, nn.Linear)
    assert isinstance(back.model.layers[0].self_attn.q_proj, QuantLinear)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, quantize_model(llama, weights="int8", overrides={"*.mlp.*": None})[0](ids).logits)


def test_root_linear_is_rewired():
    """A bare nn.Linear root: the result is a new QuantLinear around (a copy of) it."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    x = torch.randn(2, 3, 32)
    q, s = quantize_model(lin, weights="int4", activations="int8_per_tensor")
    assert isinstance(q, QuantLinear) and s.changed == [""] and "<root>" in str(s)
    assert q.inner is not lin and isinstance(lin, nn.Linear)  # a copy unless inplace
    wq, aq = resolve("int4", "weights"), resolve("int8_per_tensor", "activations")
    with torch.no_grad():
        want = F.linear(torch.stack([aq(x[0]), aq(x[1])]), wq(lin.weight), lin.bias)
        assert torch.equal(q(x), want)
    q2, s2 = quantize_model(q, weights="fp8_e4m3", inplace=True)  # a QuantLinear root re-quantizes
    assert isinstance(q2, QuantLinear) and q2.inner is q.inner and s2.requantized == [""]
    qi, _ = quantize_model(lin, weights="int4", inplace=True)
    assert qi.inner is lin


def test_callable_specs_and_identity(llama, ids):
    calls = []

    def spy(x, grad="ste"):
        calls.append(tuple(x.shape))
        return x

    qm, summary = quantize_model(llama, weights=None, activations=spy)
    with torch.no_grad():
        torch.testing.assert_close(qm(ids).logits, llama(ids).logits, rtol=0, atol=1e-6)
    assert calls and all(len(s) == 2 for s in calls)  # activations arrive as [tokens, features]
    _, s = quantize_model(llama, weights="none", activations="fp32")
    assert len(s) == 0


def test_training_through_rewired_model(gpt2, ids):
    """STE: the float weights under the quantizers get gradients and a step changes them."""
    qm, _ = quantize_model(gpt2, weights="int4", activations="int8", grad="clipped")
    qm.train()
    opt = torch.optim.SGD(qm.parameters(), lr=1e-2)
    layer = qm.transformer.h[1].mlp.c_proj
    w0 = layer.inner.weight.detach().clone()
    loss = qm(ids, labels=ids).loss
    loss.backward()
    assert layer.inner.weight.grad is not None and layer.inner.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(layer.inner.weight, w0)


def test_weight_cache_invalidated_on_change(llama):
    qm, _ = quantize_model(llama, weights="int4")
    layer = qm.model.layers[0].mlp.down_proj
    x = torch.randn(3, 128)
    with torch.no_grad():
        a = layer(x)
        assert torch.equal(layer(x), a)
        layer.inner.weight.mul_(2)
        b = layer(x)
    assert not torch.equal(a, b)


def test_transform_from_simulator(llama, ids):
    """An fmtlab.sim outlier transform (Hadamard rotation) is applied per layer; with 8-bit
    quantizers the output stays close to the float model."""
    pytest.importorskip("fmtlab.sim.transforms")
    qm, summary = quantize_model(llama, weights="int8", activations="int8", transform="hadamard")
    assert summary.transform == "hadamard"
    with torch.no_grad():
        out, ref = qm(ids).logits, llama(ids).logits
    assert (out - ref).abs().max() < 0.1


def test_evaluate_perplexity_ids_and_windows(gpt2, ids):
    res = evaluate_perplexity(gpt2, ids, batch_size=2, progress=False)
    assert res.tokens == ids.shape[0] * (ids.shape[1] - 1) and res.sequences == 3
    with torch.no_grad():
        want = F.cross_entropy(gpt2(ids).logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))
    assert math.isclose(res.nll, want.item(), rel_tol=1e-5)
    assert math.isclose(float(res), math.exp(res.nll))
    assert 50 < res.ppl < 200  # a random model is close to uniform over 97 tokens
    res2 = evaluate_perplexity(gpt2, ids.tolist(), n_sequences=2, progress=False)
    assert res2.sequences == 2
    with pytest.raises(FmtlabError, match="tokenizer"):
        evaluate_perplexity(gpt2, ["some text"])
    with pytest.raises(FmtlabError, match="at least 2"):
        evaluate_perplexity(gpt2, torch.zeros(2, 1, dtype=torch.long))


def _have_compiler() -> str | None:
    if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("g++")):
        return "no C++ compiler for torch.compile's inductor backend"
    return None


# one quantizer of every family: INT per-channel / per-token / per-tensor / groups / asym,
# percentile, FP8, log, dINT, MX (FP and INT elements) and NVFP4 (block + FP32 tensor scale)
COMPILE_FAMILIES = ("int4_per_channel", "int8_per_token", "int8_per_tensor", "int4_g32", "int8_per_token_asym",
                    "int8_per_tensor_p99", "fp8_e4m3_per_token", "log4_per_channel", "dint4_g32", "mxfp4",
                    "mxint8", "nvfp4")


@pytest.mark.slow
@pytest.mark.skipif(_have_compiler() is not None, reason=str(_have_compiler()))
def test_torch_compile_every_family_fwd_and_bwd():
    """Issue 15 item 9: torch.compile (inductor, CPU) of fake-quant for every quantizer family,
    forward and clipped-STE backward, is bit-identical to eager (the quantizer runs as one opaque
    custom op; before, MX / NVFP4 crashed with InductorError). A rewired model mixing the
    families compiles and trains; its output equals eager up to inductor's float fusion."""
    from fmtlab.pytorch import TorchQuantizer

    qs = [TorchQuantizer(n) for n in COMPILE_FAMILIES]
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 3
    up = torch.randn(len(qs), 4, 64, generator=torch.Generator().manual_seed(1))

    def fwd_bwd(t):
        t = t.detach().requires_grad_()
        ys = [q(t, grad="clipped") for q in qs]
        sum((y * u).sum() for y, u in zip(ys, up)).backward()
        return [y.detach() for y in ys], t.grad

    ys, g = fwd_bwd(x)
    cys, cg = torch.compile(fwd_bwd)(x)
    for name, a, b in zip(COMPILE_FAMILIES, cys, ys):
        assert torch.equal(a, b), name
    assert torch.equal(cg, g)

    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    fams = {"0": ("int4_per_channel", "int8_per_tensor"), "1": ("mxfp4", "mxfp4"),
            "2": ("nvfp4", "nvfp4"), "3": ("int8_per_channel", "fp8_e4m3")}
    qm, _ = quantize_model(m, overrides={k: {"weights": w, "activations": a} for k, (w, a) in fams.items()},
                           grad="clipped")
    xb = torch.randn(2, 3, 64)
    compiled = torch.compile(qm)
    out = compiled(xb)
    out.square().sum().backward()
    gc = qm[1].inner.weight.grad.clone()
    qm.zero_grad()
    ref = qm(xb)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc, qm[1].inner.weight.grad, rtol=1e-4, atol=1e-5)


def _smollm2_cached() -> bool:
    try:
        from fmtlab.models.loading import _SMOLLM2_CACHE, cache_dir
    except Exception:  # noqa: BLE001
        return False
    return os.path.exists(os.path.join(cache_dir(), _SMOLLM2_CACHE, "model.safetensors"))


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_cached(), reason="SmolLM2-135M not converted yet (fmtlab.models.loading cache)")
def test_smollm2_default_model_fp8():
    """The embedded default model: W8A8 FP8 (per-channel / per-token absmax) stays close to fp32
    on a few 64-token windows of held-out text."""
    from fmtlab.sim.data import default_texts
    from fmtlab.models.loading import load_default_model

    model, tok = load_default_model()
    texts = default_texts("eval")
    base = evaluate_perplexity(model, texts, tok, seq_len=64, n_sequences=3, batch_size=3, progress=False)
    qm, summary = quantize_model(model, weights="fp8_e4m3", activations="fp8_e4m3")
    assert len(summary) == 30 * 7
    q = evaluate_perplexity(qm, texts, tok, seq_len=64, n_sequences=3, batch_size=3, progress=False)
    assert base.tokens == q.tokens == 3 * 63
    assert 1.0 < base.ppl < 200
    assert abs(math.log(q.ppl / base.ppl)) < 0.1
