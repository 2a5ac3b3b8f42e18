"""The torch path on CUDA is bit-identical to the numba path (skipped without a CUDA device).

Invariant: for every format, rounding and method, codes computed on the GPU equal
``fmt.encode`` on the CPU (same inputs as the CPU tests, same seed for stochastic rounding:
the draws are made by numpy and moved to the device); a rewired model and its perplexity run on
the GPU and agree with the CPU to float tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmtlab.formats import NanInput, Rounding, get_format
from fmtlab.formats import strategies as fst
from fmtlab.pytorch import FormatFakeQuantize, encode, evaluate_perplexity, quantize, quantize_model

from torch_helpers import ALL_FORMATS, bits_of, needs_cuda

pytestmark = needs_cuda


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_cuda_bit_identical(name, dtype):
    fmt = get_format(name)
    x = fst.boundary_points(fmt, dtype)
    nan = NanInput.RAISE if fmt.has_nan else NanInput.ZERO
    xt = torch.from_numpy(np.array(x)).cuda()
    for rounding in Rounding:
        want = fmt.encode(x, rounding, seed=5, nan=nan)
        for method in ("auto", "arith", "table"):
            got = encode(xt, fmt, rounding, seed=5, nan=nan, method=method)
            assert got.is_cuda
            np.testing.assert_array_equal(got.cpu().numpy(), want, err_msg=f"{name} {rounding} {method}")
        q = quantize(xt, fmt, rounding, seed=5, nan=nan)
        np.testing.assert_array_equal(bits_of(q), bits_of(fmt.decode(want, dtype=dtype)))


def test_cuda_fake_quantize_module_and_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    fq = FormatFakeQuantize(fmt="fp8_e4m3").cuda()
    x = torch.randn(64, 32, device="cuda")
    y = fq(x)
    fq_cpu = FormatFakeQuantize(fmt="fp8_e4m3")
    assert torch.equal(y.cpu(), fq_cpu(x.cpu()))
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    qm, _ = quantize_model(model, weights="int4", activations="fp8_e4m3")
    ids = torch.randint(0, 97, (4, 32))
    cpu = evaluate_perplexity(qm, ids, progress=False)
    gpu = evaluate_perplexity(qm.cuda(), ids, progress=False)
    assert abs(cpu.nll - gpu.nll) < 1e-3


@pytest.mark.parametrize("name", ["int8_per_channel", "int4_g128_asym", "fp8_e4m3_per_token", "mxfp4",
                                  "mxint8", "nvfp4", "log4_per_channel", "dint4_g128", "int8_per_token_p99.9"])
def test_cuda_quantizers_bit_identical(name):
    """Quantizers on CUDA == numpy path (MSE is left out: its sequential float64 SSE sums are not
    reproduced by CUDA's parallel cumsum, so near-ties may pick another clip value)."""
    from fmtlab.formats import get_quantizer
    from fmtlab.pytorch import TorchQuantizer

    q = get_quantizer(name)
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    got = TorchQuantizer(q).fake_quantize(torch.from_numpy(x).cuda())
    np.testing.assert_array_equal(bits_of(got), bits_of(q.fake_quantize(x)))
