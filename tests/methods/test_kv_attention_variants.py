"""``+kv`` and ``+attn`` model variants: parsing, fit (static KV scales), apply on a copy, perplexity."""

import numpy as np
import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.methods import variants as V
from fmtlab.methods.attention_variant import AttentionVariant
from fmtlab.methods.kv_cache_variant import KVCacheVariant


class _Tok:
    def __call__(self, text, add_special_tokens=False, **kw):
        return {"input_ids": [b % 250 for b in text.encode("utf-8")]}


_TEXTS = ("The quick brown fox jumps over the lazy dog. " * 40, "Pack my box with five dozen liquor jugs! " * 40)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def test_parse_and_spell():
    cfg, v = V.parse_variant_config("w8a8_int_token+kv(spec=int4_sym_per_token)")
    assert v == KVCacheVariant(spec="int4_sym_per_token") and cfg.name == "w8a8_int_token+kv(spec=int4_sym_per_token)"
    cfg, v = V.parse_variant_config("fp32+attn")
    assert v == AttentionVariant() and str(v) == "+attn"
    with pytest.raises(FmtlabError):
        V.parse_variant_config("fp32+kv(spec=int8_sym_per_token@static)")  # per-token scales cannot be static
    with pytest.raises(FmtlabError):
        V.parse_variant_config("fp32+attn(spec=fp9)")


@pytest.mark.parametrize("variant", [KVCacheVariant("int4_sym_per_token"), KVCacheVariant("fp8_e4m3_per_tensor@static", 16, 2),
                                     AttentionVariant("fp8_fa3")])
def test_fit_apply_on_a_copy_and_score(variant):
    from fmtlab.models.perplexity import perplexity

    m = _llama()
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(ids).logits
    sess = V.VariantSession(m, _Tok(), calib=V.CalibData("toy", _TEXTS))
    ap = sess.applied(variant)
    assert ap.model is not m
    with torch.no_grad():
        y = ap.model(ids).logits
        assert torch.equal(m(ids).logits, ref)  # the caller's model is unchanged
    assert 0 < (y - ref).abs().max().item() < 1.0
    row = sess.descriptions()[0]
    assert row["variant"] == str(variant) and "nothing to fit" in row["fitted"] or "static" in row["fitted"]
    rows = sess.perplexity_rows(variant, [V.make_config("w8a8_int_token")], ids, None, 16, 2, None)
    r0 = perplexity(m, _Tok(), "w8a8_int_token", ids=ids, progress=False)
    assert np.isfinite(rows[0]["ppl"]) and rows[0]["ppl"] != r0["ppl"]
