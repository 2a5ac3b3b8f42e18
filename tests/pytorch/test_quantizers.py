"""TorchQuantizer is bit-identical to the numpy/numba Quantizer.

Invariant: for every preset and a set of hand-built quantizers (all granularities: tensor,
channel (axis 0 and 1), token, group (last axis and axis 0), MX blocks with the FLOOR / CEIL /
EVEN / RCEIL rules, NVFP4 with and without its tensor scale; scale rules absmax, percentile,
MSE, static, min/max with zero points, pow2; all four roundings), float32 and float64 input, and
inputs with NaN, Inf, all-zero slots, float32-subnormal and huge values:
fake_quantize bits, codes, scales, zero points, block scale codes, the NVFP4 tensor scale and
dequantize bits are equal, and both paths raise on the same bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats import (
    MSE, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer, SharedExp,
    Static, get_quantizer, list_quantizers,
)
from fmtlab.pytorch import TorchQuantizer, fake_quantize
from fmtlab.pytorch.specs import resolve

from torch_helpers import bits_of

EXTRA = {
    "mxfp8_ceil": lambda: get_quantizer("mxfp8_e4m3", scale_rule="ceil"),
    "mxfp4_even": lambda: get_quantizer("mxfp4", scale_rule="even"),
    "mxfp6_rceil": lambda: get_quantizer("mxfp6_e2m3", scale_rule="rceil"),
    "mxint8_even": lambda: get_quantizer("mxint8", scale_rule="even"),
    "mxint8_rceil": lambda: get_quantizer("mxint8", scale_rule="rceil"),
    "mxfp6_midmax": lambda: get_quantizer("mxfp6_e3m2", scale_rule="midmax"),
    "mxfp8_e5m2_axis0": lambda: Quantizer("fp8_e5m2", PerBlock(32, axis=0)),
    "nvfp4_no_tensor_scale": lambda: Quantizer("fp4_e2m1", PerBlock(16, scale_format="fp8_e4m3")),
    "int8_channel_axis1": lambda: get_quantizer("int8_per_channel", axis=1),
    "int4_group32_axis0": lambda: Quantizer("int4", PerGroup(32, axis=0)),
    "fp8_token_p99.9": lambda: get_quantizer("fp8_e4m3_per_token_p99.9"),
    "int8_token_pow2": lambda: get_quantizer("int8_per_token_pow2"),
    "log4_channel_mse": lambda: get_quantizer("log4_per_channel_mse"),  # the preset's grid (100)
    "fp4_g32_mse": lambda: Quantizer("fp4_e2m1", PerGroup(32), MSE(grid=25)),
    "dint4_g128_mse": lambda: Quantizer("dint4", PerGroup(128), MSE(grid=25, min_ratio=0.5)),
    "int4_channel_mse_pow2": lambda: Quantizer("int4", PerChannel(0), MSE(grid=20), pow2=True),
    "int8_static": lambda: Quantizer("int8", PerTensor(), Static(0.05)),
    "uint8_static_zp": lambda: Quantizer("uint8", PerTensor(), Static(0.05, 128)),
    "int8_token_asym_away": lambda: get_quantizer("int8_per_token_asym", rounding="nearest_away"),
    "int4_g32_asym_tz": lambda: Quantizer("int4", PerGroup(32), MinMax(), rounding="toward_zero"),
    "fp8_tensor_tz": lambda: get_quantizer("fp8_e4m3_per_tensor", rounding="toward_zero"),
    "fp6_token_away": lambda: Quantizer("fp6_e3m2", PerToken(), rounding="nearest_away"),
    "int4_token_stoch": lambda: Quantizer("int4", PerToken(), rounding="stochastic", seed=3),
    "int4_g32_asym_stoch": lambda: Quantizer("int4", PerGroup(32), MinMax(), rounding="stochastic", seed=3),
    "fp8_channel_stoch": lambda: Quantizer("fp8_e4m3", PerChannel(0), rounding="stochastic", seed=9),
    "log4_token_stoch": lambda: Quantizer("log4", PerToken(), rounding="stochastic", seed=9),
    "mxfp4_stoch": lambda: get_quantizer("mxfp4", rounding="stochastic", seed=4),
    "mxfp8_axis0_stoch": lambda: Quantizer("fp8_e4m3", PerBlock(32, axis=0), SharedExp("ceil"),
                                           rounding="stochastic", seed=4),
    "nvfp4_stoch": lambda: get_quantizer("nvfp4", rounding="stochastic", seed=4),
    "dint4_group_percentile": lambda: Quantizer("dint4", PerGroup(64), Percentile(99.0)),
    "log4_b1.414_token": lambda: Quantizer("log4_b1.4142135623730951", PerToken()),
}
QUANTIZERS = {**{n: (lambda n=n: get_quantizer(n)) for n in list_quantizers()}, **EXTRA}
CASES = ("normal", "nan", "inf", "zeros", "tiny", "huge")


def _input(case: str, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 256)) * np.exp(rng.standard_normal((32, 256)) * 1.5)
    if case == "tiny":
        x = x * 1e-40
    elif case == "huge":
        x = x * 1e30
    x = x.astype(dtype)
    if case == "nan":
        x[1, 3], x[2, :], x[6, 9] = np.nan, np.nan, -np.nan
    elif case == "inf":
        x[1, 3] = np.inf
    elif case == "zeros":
        x[:, :64] = 0.0
        x[5, 7] = -0.0
    elif case == "tiny":
        x[0, 0] = np.finfo(dtype).tiny / 4
    return x


def _compare(q: Quantizer, x: np.ndarray):
    tq = TorchQuantizer(q)
    xt = torch.from_numpy(x)
    try:
        want = q.fake_quantize(x)
    except FmtlabError as exc:
        with pytest.raises(FmtlabError):
            tq.fake_quantize(xt)
        return type(exc)
    got = tq.fake_quantize(xt)
    np.testing.assert_array_equal(bits_of(got), bits_of(want), err_msg="fake_quantize")
    qt, tqt = q.quantize(x), tq.quantize(xt)
    np.testing.assert_array_equal(tqt.codes.numpy().astype(np.int64), qt.codes.astype(np.int64), err_msg="codes")
    np.testing.assert_array_equal(bits_of(tqt.scales), bits_of(qt.scales), err_msg="scales")
    if qt.zero_points is None:
        assert tqt.zero_points is None
    else:
        np.testing.assert_array_equal(tqt.zero_points.numpy(), qt.zero_points, err_msg="zero points")
    if qt.scale_codes is None:
        assert tqt.scale_codes is None
    else:
        np.testing.assert_array_equal(tqt.scale_codes.numpy(), qt.scale_codes, err_msg="scale codes")
    assert tqt.tensor_scale == qt.tensor_scale
    deq = tq.dequantize(tqt, torch.float32 if x.dtype == np.float32 else torch.float64)
    np.testing.assert_array_equal(bits_of(deq), bits_of(q.dequantize(qt)), err_msg="dequantize")
    return None


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantizer_bit_identical(name, dtype):
    q = QUANTIZERS[name]()
    for i, case in enumerate(CASES):
        if case in ("tiny", "huge") and ("mse" in name or "percentile" in name):
            continue  # same code paths as "normal"; keeps the MSE searches few
        _compare(q, _input(case, dtype, seed=i))


def test_3d_activations_and_half_inputs():
    """[batch, tokens, features] activations and float16/bfloat16 input (computed in float32,
    as numpy does, and returned in the input dtype)."""
    x = np.random.default_rng(0).standard_normal((2, 8, 64)).astype(np.float32)
    for name in ("int8_per_token", "mxfp4", "nvfp4", "fp8_e4m3_per_tensor"):
        _compare(get_quantizer(name), x)
    q = get_quantizer("mxfp8_e4m3")
    xh = torch.from_numpy(x).to(torch.bfloat16)
    got = TorchQuantizer(q).fake_quantize(xh)
    assert got.dtype == torch.bfloat16
    want = q.fake_quantize(xh.float().numpy())
    assert torch.equal(got, torch.from_numpy(want).to(torch.bfloat16))


def test_stochastic_seed_and_draws_per_call():
    q = get_quantizer("int4_per_token", rounding="stochastic", seed=1)
    x = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    tq = TorchQuantizer(q)
    a = tq.fake_quantize(torch.from_numpy(x), seed=77)
    want = get_quantizer("int4_per_token", rounding="stochastic", seed=77).fake_quantize(x)
    np.testing.assert_array_equal(a.numpy(), want)
    draws = np.random.default_rng(77).random(x.size)
    b = tq.fake_quantize(torch.from_numpy(x), draws=torch.from_numpy(draws))
    assert torch.equal(a, b)


def test_construction_and_resolve():
    assert TorchQuantizer("mxfp4").name == "mxfp4"
    assert TorchQuantizer("int8", granularity=PerToken()).granularity == PerToken()
    assert TorchQuantizer("int4_g128", group_size=64).granularity.size == 64
    with pytest.raises(FmtlabError):
        TorchQuantizer("no_such_quantizer")
    w = resolve("int4", "weights")
    a = resolve("int4", "activations")
    assert w.granularity == PerChannel(0) and a.granularity == PerToken()
    assert resolve("nvfp4").name == "nvfp4" and resolve(None) is None and resolve("fp32") is None
    assert isinstance(resolve(get_quantizer("mxfp4")), TorchQuantizer)


def test_functional_with_quantizers_and_clipped_mask():
    x = torch.tensor([[0.1, -0.2, 10.0, 0.3]], requires_grad=True)
    q = Quantizer("int8", PerTensor(), Static(0.01))  # range [-1.28, 1.27]
    y = fake_quantize(x, q, grad="clipped")
    np.testing.assert_array_equal(y.detach().numpy(), q.fake_quantize(x.detach().numpy()))
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 0.0, 1.0]]
    xb = torch.randn(2, 32, requires_grad=True)
    fake_quantize(xb, "mxfp4").sum().backward()
    assert torch.equal(xb.grad, torch.ones_like(xb))
    with pytest.raises(ValueError, match="seed"):
        fake_quantize(x, "int8_per_token", rounding="stochastic")
    z = fake_quantize(x.detach(), "int8_per_token", rounding="stochastic", seed=3)
    want = get_quantizer("int8_per_token", rounding="stochastic", seed=3).fake_quantize(x.detach().numpy())
    np.testing.assert_array_equal(z.numpy(), want)


def test_bad_input_errors():
    tq = TorchQuantizer("int4_g128")
    with pytest.raises(FmtlabError, match="does not divide"):
        tq.fake_quantize(torch.randn(4, 100))
    with pytest.raises(FmtlabError, match="empty"):
        tq.fake_quantize(torch.zeros(0, 128))
    with pytest.raises(FmtlabError, match="Inf"):
        TorchQuantizer("int8_per_tensor").fake_quantize(torch.tensor([1.0, float("inf")]))
    with pytest.raises(FmtlabError, match="block formats"):
        TorchQuantizer("mxfp4").compute_scales(torch.ones(32))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "nvfp4"])
def test_block_nan_policy_matches_numpy(name):
    """nan=None (default): NaN blocks, bit-identical to numpy; nan='raise' raises FormatError in
    both paths; nan='zero' reads NaN as 0 in both, bit-identical."""
    from fmtlab.errors import FormatError
    from fmtlab.formats import get_quantizer
    from fmtlab.pytorch.quantizers import TorchQuantizer

    x = np.ones((2, 32), np.float32)
    x[0, 3] = np.nan
    for nan in (None, "zero"):
        q = get_quantizer(name, nan=nan)
        ours = TorchQuantizer(q).fake_quantize(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(ours.view(np.uint32), q.fake_quantize(x).view(np.uint32))
    with pytest.raises(FormatError, match="NaN"):
        TorchQuantizer(get_quantizer(name, nan="raise")).fake_quantize(torch.from_numpy(x))


def test_pow2_overflow_raises_like_numpy():
    """pow2 scales near float32's max: the torch path raises as the numpy path does (no +-Inf)."""
    from fmtlab.errors import FmtlabError
    from fmtlab.formats import Quantizer
    from fmtlab.pytorch.quantizers import TorchQuantizer

    x = np.float32([[3.4e38, -3.4e38, 1.0, 3.3e38]])
    q = Quantizer("int8", "tensor", pow2=True)
    with pytest.raises(FmtlabError, match="beyond the float32 range"):
        q.fake_quantize(x)
    with pytest.raises(FmtlabError, match="beyond the float32 range"):
        TorchQuantizer(q).fake_quantize(torch.from_numpy(x))
    with pytest.raises(FmtlabError, match="beyond the float32 range"):
        tq = TorchQuantizer(q)
        tq.dequantize(tq.quantize(torch.from_numpy(x)))
