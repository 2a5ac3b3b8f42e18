"""KV cache in a number format (fmtlab.pytorch.kv_cache): identity, decode == prefill, hand examples."""

import copy

import numpy as np
import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.pytorch import calibrate, quantize_model
from fmtlab.pytorch.kv_prefix import cache_kwarg
from fmtlab.pytorch.kv_cache import KVCacheSpec, attach_kv_cache, install_on_cache, kv_cache_of, parse_kv_spec
from fmtlab.pytorch.kv_prefix import layer_kv
from torch_helpers import ATTENTION_ARCHS, tiny_causal_lm

VOCAB = 97
ARCHS = ATTENTION_ARCHS


def _model(arch: str):
    return tiny_causal_lm(arch, vocab=VOCAB)


@pytest.fixture(scope="module")
def models():
    return {a: _model(a) for a in ARCHS}


def _ids(b=2, t=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (b, t), generator=g)


def _cache_kv(cache, layer):
    return layer_kv(cache)[layer]


def _with_cache(model, cache) -> dict:
    """The forward keyword carrying a KV cache: ``cache=`` (transformers 5) or ``past_key_values=``."""
    return {cache_kwarg(model): cache}


def _cache(out):
    return getattr(out, "cache", None) or out.past_key_values


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_spec_is_bit_equal(models, arch):
    m = models[arch]
    ids = _ids()
    qm, summary = quantize_model(m, kv_cache="none")
    assert summary.kv_cache is not None and summary.kv_cache.spec.identity
    with torch.no_grad():
        assert torch.equal(qm(ids).logits, m(ids).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_equals_prefill_per_token(models, arch):
    """Per-token scales: T decode steps store the bits one prefill stores, and give its logits."""
    qm, _ = quantize_model(models[arch], kv_cache="int4_sym_per_token")
    ids = _ids()
    with torch.no_grad():
        full = qm(ids)
        out = qm(ids[:, :5])
        cache, steps = _cache(out), [out.logits]
        for t in range(5, ids.shape[1]):
            o = qm(ids[:, t:t + 1], **_with_cache(qm, cache))
            steps.append(o.logits)
        ref = m_ref = models[arch](ids).logits
    dec = torch.cat(steps, 1)
    assert not torch.allclose(full.logits, m_ref, atol=1e-3)  # the format does something
    torch.testing.assert_close(dec, full.logits, rtol=0, atol=2e-6)
    full_cache = _cache(full)
    for layer in range(2):
        if arch == "gemma3" and layer == 0:  # sliding window: only the last window is kept
            continue
        for a, b in zip(_cache_kv(cache, layer), _cache_kv(full_cache, layer)):
            # the same codes; a scale may differ by an ulp (k_proj of 1 row vs 12 rows rounds apart)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    del ref


@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_decoding_logits_are_a_prefill_over_its_cache(models, arch):
    """Every decode step reads only the cache: a prefill whose attention reads the decoded cache's
    final contents gives the decode steps' logits."""
    from transformers import DynamicCache

    class Replay(DynamicCache):
        def __init__(self, kv):
            super().__init__()
            self.kv = kv

        def update(self, k, v, layer_idx, *args, **kwargs):
            K, V = self.kv[layer_idx]
            assert K.shape == k.shape
            return super().update(K, V, layer_idx, *args, **kwargs)

    qm, _ = quantize_model(models[arch], kv_cache="int4_per_token_asym")
    ids = _ids()
    with torch.no_grad():
        cache, steps = None, []
        for t in range(ids.shape[1]):
            o = qm(ids[:, t:t + 1], **_with_cache(qm, cache))
            cache = _cache(o)
            steps.append(o.logits)
        replay = Replay([_cache_kv(cache, layer) for layer in range(2)])
        pre = qm(ids, **_with_cache(qm, replay)).logits
    torch.testing.assert_close(torch.cat(steps, 1), pre, rtol=0, atol=2e-6)


@pytest.mark.parametrize("spec", ["int8_sym_per_tensor", "k=int4_sym_per_channel,v=fp8_e4m3_per_tensor"])
def test_decoding_equals_prefill_over_frozen_scales(models, spec):
    """Dynamic per-tensor / per-channel scales are set by the prefill and frozen for decoding: the
    logits of decoding equal a prefill over the whole sequence with those scales given statically."""
    m = models["llama"]
    qm, _ = quantize_model(m, kv_cache=spec)
    ids = _ids()
    with torch.no_grad():
        out = qm(ids[:, :6])
        cache, steps = _cache(out), [out.logits]
        for t in range(6, ids.shape[1]):
            steps.append(qm(ids[:, t:t + 1], **_with_cache(qm, cache)).logits)
        dec = torch.cat(steps, 1)
        frozen = cache.fmtlab_kv_scales
        for b in range(ids.shape[0]):  # the same prefill, sequence by sequence, over static scales
            sm, _ = quantize_model(m, kv_cache=spec + "@static")
            kvq = kv_cache_of(sm)
            for layer in range(2):
                for r, role in enumerate(("keys", "values")):
                    st = kvq.static[2 * layer + r]
                    s, z = frozen[(layer, role)][b]
                    assert z is None
                    st.scale.copy_(s)
                    st.calibrated.fill_(True)
            pre = sm(ids[b:b + 1])
            torch.testing.assert_close(dec[b:b + 1], pre.logits, rtol=0, atol=2e-6)
            for layer in range(2):
                for a, c in zip(_cache_kv(cache, layer), _cache_kv(_cache(pre), layer)):
                    assert torch.equal(a[b:b + 1], c)


def _kvq(spec, heads=1, dim=4):
    from fmtlab.pytorch.kv_cache import KVCacheQuantizer

    return KVCacheQuantizer(parse_kv_spec(spec), 1, heads, dim)


def test_hand_example_per_token():
    # int8_sym: s = amax / 127; rows with amax 127 (s = 1) and 254 (s = 2); round half to even
    k = torch.tensor([[127.0, -3.4, 0.5, 2.5], [254.0, 3.0, -5.0, 1.0]]).reshape(1, 1, 2, 4)
    want = torch.tensor([[127.0, -3.0, 0.0, 2.0], [254.0, 4.0, -4.0, 0.0]]).reshape(1, 1, 2, 4)
    assert torch.equal(_kvq("int8_sym_per_token").quantize(k, 0, "keys", {}), want)


def test_hand_example_per_tensor_frozen_for_decoding():
    # one scale per sequence over heads and tokens: seq 0 amax 254 (s = 2), seq 1 amax 127 (s = 1)
    kvq = _kvq("int8_sym_per_tensor", heads=2, dim=2)
    k = torch.tensor([[[[254.0, 3.0]], [[1.0, -5.0]]],
                      [[[127.0, 3.4]], [[1.5, -5.0]]]])  # [2 seqs, 2 heads, 1 token, 2]
    want = torch.tensor([[[[254.0, 4.0]], [[0.0, -4.0]]],
                         [[[127.0, 3.0]], [[2.0, -5.0]]]])
    frozen: dict = {}
    assert torch.equal(kvq.quantize(k, 0, "keys", frozen), want)
    # a decode token: the prefill's scales stay; 300 saturates at 127 * s
    step = torch.tensor([[[[300.0, 3.0]], [[0.9, 0.0]]], [[[300.0, 3.0]], [[0.9, 0.0]]]])
    want = torch.tensor([[[[254.0, 4.0]], [[0.0, 0.0]]], [[[127.0, 3.0]], [[1.0, 0.0]]]])
    assert torch.equal(kvq.quantize(step, 0, "keys", frozen), want)


def test_hand_example_per_channel_keys():
    # one scale per (head, channel) over the tokens: channel 0 amax 127 (s = 1), channel 1 254 (s = 2)
    k = torch.tensor([[127.0, 2.5], [1.4, -254.0], [-0.6, 3.0]]).reshape(1, 1, 3, 2)
    want = torch.tensor([[127.0, 2.0], [1.0, -254.0], [-1.0, 4.0]]).reshape(1, 1, 3, 2)
    assert torch.equal(_kvq("int8_sym_per_channel", dim=2).quantize(k, 0, "keys", {}), want)


def test_hand_example_mx_block_along_head_dim():
    # mxfp4: 32 elements share 2**(floor(log2 amax) - 2); amax 6 -> scale 1, E2M1 grid {0,.5,1,1.5,2,3,4,6}
    row = torch.zeros(32)
    row[:4] = torch.tensor([6.0, 2.6, 0.7, 5.0])
    want = torch.zeros(32)
    want[:4] = torch.tensor([6.0, 3.0, 0.5, 4.0])  # 5 is a tie between 4 and 6: even mantissa (4)
    out = _kvq("mxfp4", dim=32).quantize(row.reshape(1, 1, 1, 32), 0, "values", {})
    assert torch.equal(out.reshape(32), want)


def test_hand_example_group_along_head_dim():
    # int8_sym groups of 2 along head_dim: amax 127 (s = 1) and 254 (s = 2)
    v = torch.tensor([127.0, 0.6, 254.0, 2.9]).reshape(1, 1, 1, 4)
    want = torch.tensor([127.0, 1.0, 254.0, 2.0]).reshape(1, 1, 1, 4)
    assert torch.equal(_kvq("int8_sym_g2").quantize(v, 0, "values", {}), want)


def test_static_scales_calibrated(models):
    m = models["llama"]
    qm, _ = quantize_model(m, kv_cache="fp8_e4m3_per_tensor@static")
    calib = _ids(4, 10, seed=3)
    with pytest.raises(FmtlabError, match="never calibrated"):
        qm(calib[:1])
    calibrate(qm, calib, batch_size=2)
    with torch.no_grad():
        cache = _cache(m(calib, use_cache=True))
    kvq = kv_cache_of(qm)
    for layer in range(2):
        k, v = _cache_kv(cache, layer)
        for r, x in enumerate((k, v)):
            want = (x.abs().max() / torch.tensor(448.0)).to(torch.float32)
            assert torch.equal(kvq.static[2 * layer + r].scale, want.reshape(1))


def test_prefix_entries_stay_float(models):
    from fmtlab.pytorch.kv_prefix import KVPrefix

    m = models["llama"]
    prefix = KVPrefix.from_tokens(m, [1, 2, 3])
    qm, _ = quantize_model(m, kv_cache="int4_sym_per_token", kv_prefix=prefix)
    with torch.no_grad():
        out = qm(_ids(2, 6))
    for layer in range(2):
        k, v = _cache_kv(_cache(out), layer)
        assert torch.equal(k[:, :, :3], prefix.keys[layer].expand(2, -1, -1, -1))
        assert torch.equal(v[:, :, :3], prefix.values[layer].expand(2, -1, -1, -1))
        sq = kv_cache_of(qm).spec.keys
        assert torch.equal(k[:, :, 3:], sq(k[:, :, 3:].reshape(-1, k.shape[-1])).reshape(k[:, :, 3:].shape))


def test_requantize_replaces_and_detaches(models):
    m = models["qwen2"]
    qm, s1 = quantize_model(m, kv_cache="int4_sym_per_token")
    qm2, s2 = quantize_model(qm, kv_cache="fp8_e4m3_per_tensor")
    assert kv_cache_of(qm2).spec.name == "fp8_e4m3_per_tensor"
    assert kv_cache_of(qm).spec.name == "int4_sym_per_token"  # the copy did not touch the original
    qm3, s3 = quantize_model(qm2)
    assert kv_cache_of(qm3) is None and s3.kv_cache is None
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(qm3(ids).logits, m(ids).logits)


def test_specs_parse_and_reject():
    s = parse_kv_spec("kivi4")
    assert s.keys.name.startswith("int4") and str(s.keys.granularity) == "channel(axis=1)"
    assert parse_kv_spec("int8_sym_per_tensor@static").name == "int8_sym_per_tensor@static"
    assert parse_kv_spec("k=int8_sym_per_token,v=none").values is None
    with pytest.raises(FmtlabError, match="per token"):
        parse_kv_spec("int8_sym_per_token@static")
    with pytest.raises(FmtlabError, match="dynamic' or 'static"):
        parse_kv_spec("int8_sym_per_tensor@sometimes")
    with pytest.raises(FmtlabError):
        parse_kv_spec("no_such_format_per_token")
    assert isinstance(parse_kv_spec({"keys": "int8_sym_per_token"}), KVCacheSpec)
    with pytest.raises(FmtlabError, match="keys/values/scales"):
        parse_kv_spec({"key": "int8"})


def test_install_on_cache_is_idempotent(models):
    from transformers import DynamicCache

    m = copy.deepcopy(models["llama"])
    kvq = attach_kv_cache(m, "int8_sym_per_token")
    c = DynamicCache()
    assert install_on_cache(install_on_cache(c, kvq), kvq).update is c.update
    x = torch.randn(1, 2, 3, 16)
    k, _ = c.update(x, x, 0)
    assert torch.equal(k, kvq.spec.keys(x.reshape(-1, 16)).reshape(x.shape))
    assert not np.array_equal(k.numpy(), x.numpy())


def test_static_keys_only(models):
    qm, _ = quantize_model(models["llama"], kv_cache="k=int8_sym_per_tensor,v=none@static")
    res = calibrate(qm, _ids(2, 8, seed=4), batch_size=2)
    assert res.layers == 2  # one static K scale per layer, no V slot observed
    with torch.no_grad():
        cache = _cache(qm(_ids(1, 6)))
        ref = _cache(models["llama"](_ids(1, 6), use_cache=True))
    assert torch.equal(_cache_kv(cache, 0)[1], _cache_kv(ref, 0)[1])
    assert not torch.equal(_cache_kv(cache, 0)[0], _cache_kv(ref, 0)[0])


def test_layer_kv_refuses_what_is_not_a_cache():
    k, v = torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 3, 4)
    assert layer_kv(((k, v),))[0][1] is v
    with pytest.raises(FmtlabError, match="not a transformers KV cache"):
        layer_kv(object())
    with pytest.raises(FmtlabError, match="not a transformers KV cache"):
        layer_kv((k,))
