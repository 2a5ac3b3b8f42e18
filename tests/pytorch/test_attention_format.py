"""Attention matmuls in a format (fmtlab.pytorch.attention): identity, presets, hand examples."""

import copy

import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.pytorch import quantize_model
from fmtlab.pytorch.attention import AttentionSpec, _quant, parse_attention_spec, quantized_attention
from fmtlab.pytorch.kv_prefix import cache_kwarg
from fmtlab.pytorch.quantizers import TorchQuantizer

VOCAB = 97
_COMMON = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def _model(arch, impl="eager"):
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON, attn_implementation=impl))
    elif arch == "qwen2":
        m = tf.Qwen2ForCausalLM(tf.Qwen2Config(**_COMMON, attn_implementation=impl))
    else:
        m = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=4, attn_implementation=impl,
                                                     layer_types=["sliding_attention", "full_attention"]))
    return m.eval()


def _ids(b=2, t=12, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_identity_equals_eager_and_presets_run(arch):
    m = _model(arch)
    ids = _ids()
    with torch.no_grad():
        ref = m(ids).logits
        qm, s = quantize_model(m, attention="none")
        assert torch.equal(qm(ids).logits, ref)
        for preset in ("fp8_fa3", "sage_int8_fp8", "mxfp8"):
            qp, s = quantize_model(m, attention=preset)
            y = qp(ids).logits
            d = (y - ref).abs().max().item()
            assert 0 < d < 0.5, (preset, d)
            assert s.attention.name == preset
        back, s = quantize_model(qp)  # re-quantizing without attention= restores the implementation
        assert torch.equal(back(ids).logits, ref) and back.config._attn_implementation == "eager"
    assert m.config._attn_implementation == "eager"  # the original is untouched


def test_decoding_with_attention_format_matches_prefill():
    """Per-token / static granularities (sage P, Q, K rows) make decoding reproduce the prefill's
    last-row logits when K/V scales do not depend on the step: sage_int8_fp8 except V per channel
    and K smoothing, i.e. a custom spec of INT8 rows and static P."""
    m = _model("llama")
    rows = TorchQuantizer("int8_per_token")
    spec = AttentionSpec(rows, rows, None, rows, ("token", "token", "static", "token"), False, "rows")
    qm, _ = quantize_model(m, attention=spec)
    ids = _ids()
    with torch.no_grad():
        full = qm(ids).logits
        out = qm(ids[:, :5])
        cache, steps = getattr(out, "cache", None) or out.past_key_values, [out.logits]
        for t in range(5, ids.shape[1]):
            o = qm(ids[:, t:t + 1], **{cache_kwarg(qm): cache})
            steps.append(o.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=3e-6)


def test_hand_example_fp8_head_and_static_p():
    # per head: one E4M3 scale over the head's [T, D]: amax 448 -> scale 1; 3.3 -> 3.25 (E4M3 spacing 0.25 in [2, 4))
    e4m3 = TorchQuantizer("fp8_e4m3_per_token")
    x = torch.tensor([[448.0, 3.3], [0.0, -17.0]]).reshape(1, 1, 2, 2)
    assert torch.equal(_quant(e4m3, x, "head"), torch.tensor([[448.0, 3.25], [0.0, -16.0]]).reshape(1, 1, 2, 2))
    # P with the static scale 1/448: P = 1 -> 448 * (1/448) = 1 exactly; 0.3 -> 0.3 * 448 = 134.4 -> 128 (spacing 16)
    p = parse_attention_spec("fp8_fa3").p
    got = _quant(p, torch.tensor([1.0, 0.3]).reshape(1, 1, 1, 2), "static").reshape(2)
    s = torch.tensor(1.0 / 448.0, dtype=torch.float32)
    want = torch.stack([torch.tensor(448.0) * s, torch.tensor(128.0) * s]).to(torch.float32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_hand_example_smoothing_and_channel():
    # SageAttention: K smoothed by its mean over tokens does not change softmax(Q Kᵀ)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8) + 3.0, torch.randn(1, 2, 5, 8)

    class M(torch.nn.Module):
        head_dim, num_key_value_groups, training = 8, 1, False

    mod = M()
    mod.fmtlab_attention = AttentionSpec(smooth_k=True, grans=("token", "token", "static", "channel"))
    smooth, _ = quantized_attention(mod, q, k, v, None, scaling=0.35)  # no quantizers: smoothing only
    mod.fmtlab_attention = None
    plain, _ = quantized_attention(mod, q, k, v, None, scaling=0.35)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-6)
    # V per channel: one scale per (head, head_dim channel) over tokens: int8 amax 127 -> s = 1
    i8 = TorchQuantizer("int8_per_token")
    x = torch.tensor([[127.0, 2.6], [0.4, -254.0]]).reshape(1, 1, 2, 2)
    assert torch.equal(_quant(i8, x, "channel"), torch.tensor([[127.0, 2.0], [0.0, -254.0]]).reshape(1, 1, 2, 2))


def test_bad_specs():
    with pytest.raises(FmtlabError, match="fp8_fa3"):
        parse_attention_spec("fp8_attention_please")
    with pytest.raises(FmtlabError, match="granularity"):
        AttentionSpec(grans=("head", "head", "row", "head"))
    assert parse_attention_spec("fp32").identity
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(FmtlabError, match="no transformers attention"):
        quantize_model(copy.deepcopy(lin), attention="fp8_fa3")
