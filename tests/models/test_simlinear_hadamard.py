"""SimLinear's Hadamard shortcut (W R and its quantization once per layer, X R per sequence) gives
the same layer output, bit for bit, as the transform's full decomposition per sequence (numpy
GEMMs); with torch GEMMs, X R lies within the float32 GEMM error bound of numpy's and the output
differs only where an activation lands that close to a rounding boundary."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.models.perplexity import SimLinear
from fmtlab.sim.quant import resolve
from fmtlab.sim.transform_base import Context
from fmtlab.sim.transforms import get_transform


@pytest.mark.parametrize("wq,aq", [("int8_per_channel", "int8_per_tensor"), ("mxfp4", "mxfp4")])
def test_hadamard_shortcut_equals_decomposition(wq, aq):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 64)) * 0.05).astype(np.float32)
    ft = get_transform("hadamard")
    lin = SimLinear(w, None, ft, resolve(aq), resolve(wq), np.float16, "l", gemm="numpy")
    for seed in (1, 2):  # the second sequence reuses the cached W' codes
        xs = np.random.default_rng(seed).standard_normal((16, 64)).astype(np.float32)
        xs[:, 3] *= 30
        got = lin._seq(xs)
        d = ft.decompose(xs, w, Context(positions=np.arange(16), act_q=resolve(aq), weight_q=resolve(wq)))
        want = d.output(xq=resolve(aq)(d.x), wq=resolve(wq)(d.w), hp_dtype=np.float16)
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("wq,aq", [("int8_per_channel", "int8_per_tensor"), ("mxfp4", "mxfp4")])
def test_hadamard_torch_gemm_within_the_float32_bound(wq, aq):
    import torch

    rng = np.random.default_rng(5)
    K = 576
    w = (rng.standard_normal((96, K)) * 0.05).astype(np.float32)
    ft = get_transform("hadamard")
    lin_t = SimLinear(w, None, ft, resolve(aq), resolve(wq), np.float16, "l", gemm="torch")
    lin_n = SimLinear(w, None, ft, resolve(aq), resolve(wq), np.float16, "l", gemm="numpy")
    r = ft.matrix(K)
    u = 2.0 ** -24
    gamma = K * u / (1 - K * u)
    n_diff = 0
    for seed in (1, 2, 3):
        xs = np.random.default_rng(seed).standard_normal((64, K)).astype(np.float32)
        xs[:, 3] *= 30
        xr_t = (torch.from_numpy(xs) @ torch.from_numpy(r)).numpy()
        bound = 2 * gamma * (np.abs(xs).astype(np.float64) @ np.abs(r).astype(np.float64))
        assert np.all(np.abs(xr_t.astype(np.float64) - (xs @ r).astype(np.float64)) <= bound)
        y_t = np.asarray(lin_t._seq(xs))
        y_n = np.asarray(lin_n._seq(xs))
        assert y_t.shape == y_n.shape and y_t.dtype == np.float32
        qt, qn = resolve(aq)(xr_t), resolve(aq)(xs @ r)
        n_diff += int(np.count_nonzero(qt != qn))
        # same quantized activations -> the outputs differ by the output GEMM's summation order only
        yq = (torch.from_numpy(qt) @ torch.from_numpy(np.ascontiguousarray(lin_n.wq_fixed.T))).numpy()
        np.testing.assert_array_equal(y_t, yq)
        err = np.abs(y_t.astype(np.float64) - y_n) if n_diff == 0 else None
        if err is not None:
            out_bound = 2 * gamma * (np.abs(qn).astype(np.float64) @ np.abs(lin_n.wq_fixed.T).astype(np.float64))
            assert np.all(err <= out_bound)
    assert n_diff <= 0.001 * 3 * 64 * K  # codes flip only next to a rounding boundary


@pytest.mark.parametrize("transform", [None, "hadamard"])
def test_forward_writes_slices_equal_to_stacked_sequences(transform):
    """forward() writes each sequence's torch GEMM into its output slice: the same bits as the
    per-sequence outputs stacked (bias added after)."""
    import torch

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((200, 64)) * 0.05).astype(np.float32)
    ft = get_transform(transform) if transform else None
    bias = torch.from_numpy(rng.standard_normal(200).astype(np.float32))
    lin = SimLinear(w, bias, ft, resolve("int8_per_token"), resolve("int8_per_channel"), np.float16, "l")
    assert lin.writes_into_out
    x = torch.from_numpy(rng.standard_normal((3, 17, 64)).astype(np.float32))
    got = lin(x)
    want = torch.stack([lin._seq(np.ascontiguousarray(x[b].numpy())) for b in range(3)]) + bias
    assert torch.equal(got, want)
