"""quantize_model(accumulator=...): every rewired layer's dot products as the accumulator computes them."""

import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.pytorch import QuantLinear, calibrate, quantize_model


def _ids(b=2, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (b, t), generator=g)


def test_int32_matches_float_gemm_and_narrow_overflows(llama):
    ids = _ids()
    kw = dict(weights="int8_per_channel", activations="int8_per_token")
    ref_m, _ = quantize_model(llama, **kw)
    m32, _ = quantize_model(llama, **kw, accumulator="int32")
    m10, _ = quantize_model(llama, **kw, accumulator="int10")
    with torch.no_grad():
        ref, y32, y10 = ref_m(ids).logits, m32(ids).logits, m10(ids).logits
    torch.testing.assert_close(y32, ref, rtol=1e-4, atol=1e-4)
    q32 = [m for m in m32.modules() if isinstance(m, QuantLinear)]
    assert sum(m.acc_counts[0] for m in q32) == 0 and all(m.acc_counts[1] > 0 for m in q32)
    q10 = [m for m in m10.modules() if isinstance(m, QuantLinear)]
    assert sum(m.acc_counts[0] for m in q10) > 0
    assert (y10 - ref).abs().max() > 1e-2


def test_float_accumulators_and_static_scales(llama):
    ids = _ids()
    ref_m, _ = quantize_model(llama, weights="fp8_e4m3_per_channel", activations="fp8_e4m3_per_token")
    mb, _ = quantize_model(llama, weights="fp8_e4m3_per_channel", activations="fp8_e4m3_per_token",
                           accumulator="bf16_k32")
    with torch.no_grad():
        ref, yb = ref_m(ids).logits, mb(ids).logits
    d = (yb - ref).abs().max().item()
    assert 0 < d < 0.5
    st, _ = quantize_model(llama, weights="int8_per_channel", activations="int8", activation_scales="static",
                           accumulator="int32")
    calibrate(st, _ids(4, 8, seed=5), batch_size=2)
    st_ref, _ = quantize_model(llama, weights="int8_per_channel", activations="int8", activation_scales="static")
    calibrate(st_ref, _ids(4, 8, seed=5), batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(st(ids).logits, st_ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_accumulator_rejects_transform_and_bad_names(llama):
    with pytest.raises(FmtlabError, match="transform"):
        quantize_model(llama, weights="int8_per_channel", activations="int8_per_token", transform="smoothquant",
                       accumulator="int32")
    with pytest.raises(FmtlabError):
        quantize_model(llama, weights="int8_per_channel", activations="int8_per_token", accumulator="int")
    m, _ = quantize_model(llama, weights="int4_g32", activations="int8_per_token", accumulator="int32")
    with pytest.raises(FmtlabError, match="integer element values"), torch.no_grad():
        m(_ids())
