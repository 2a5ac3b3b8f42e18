"""The torch element path is bit-identical to the numpy/numba path (``fmt.encode``).

Invariant: for every format, rounding, overflow policy, input dtype and torch method ("auto" =
arithmetic fast path where one exists, "table" = generic searchsorted path),
``encode_torch(x) == fmt.encode(x)`` as integers and ``quantize_torch(x)`` has the same bit
pattern as ``fmt.quantize(x)``; inputs are every value, every rounding boundary and both float
neighbours of each, the virtual ends, +/-0, +/-Inf, NaN, extremes and subnormals of the input
dtype (``strategies.boundary_points``), plus random normal inputs at several scales.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FormatError
from fmtlab.formats import NanInput, Overflow, Rounding, get_format
from fmtlab.formats import strategies as fst
from fmtlab.pytorch import decode, encode, quantize
from fmtlab.pytorch._fastpaths import eligible

from torch_helpers import ALL_FORMATS, bits_of

ROUNDINGS = list(Rounding)


def _overflows(fmt):
    out = [None, Overflow.SATURATE]
    if fmt.has_inf:
        out.append(Overflow.INF)
    if fmt.has_nan:
        out.append(Overflow.NAN)
    return out


def _inputs(fmt, dtype) -> np.ndarray:
    pts = fst.boundary_points(fmt, dtype)
    rng = np.random.default_rng(len(fmt.name))
    span = fmt.max if np.isfinite(fmt.max) else 1.0
    rand = np.concatenate([rng.standard_normal(512) * s for s in (span, span / 64, 1.0, span * 4)])
    with np.errstate(over="ignore"):
        rand = rand.astype(dtype)
    return np.concatenate([pts, rand])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_encode_and_quantize_bit_identical(name, dtype):
    """Codes and fake-quant bits equal the numba path, every rounding x overflow x method."""
    fmt = get_format(name)
    full = _inputs(fmt, dtype)
    nan = NanInput.RAISE if fmt.has_nan else NanInput.ZERO
    methods = ["auto", "arith", "table"]
    # 16-bit formats: every point for the default convention (nearest-even, default overflow),
    # every 7th point (plus both ends: extremes, Inf, NaN) for the other combinations (time)
    sub = full if fmt.bits <= 8 else np.concatenate([full[:64], full[64:-64:7], full[-64:]])
    for rounding in ROUNDINGS:
        for overflow in _overflows(fmt):
            x = full if (rounding is Rounding.NEAREST_EVEN and overflow is None) else sub
            xt = torch.from_numpy(x)
            want = fmt.encode(x, rounding, overflow, seed=7, nan=nan)
            want_q = fmt.decode(want, dtype=dtype)
            for method in methods:
                got = encode(xt, fmt, rounding, overflow, seed=7, nan=nan, method=method)
                assert got.dtype == {1: torch.uint8, 2: torch.uint16}[want.dtype.itemsize]
                np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{name} {rounding} {overflow} {method}")
                got_q = quantize(xt, fmt, rounding, overflow, seed=7, nan=nan, method=method)
                np.testing.assert_array_equal(bits_of(got_q), bits_of(want_q),
                                              err_msg=f"fake-quant {name} {rounding} {overflow} {method}")


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "bf16", "log4", "dint4", "e8m0"])
@pytest.mark.parametrize("tdtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs(name, tdtype):
    """float16/bfloat16 tensors encode as their exact values (widening is exact)."""
    fmt = get_format(name)
    x = torch.from_numpy(_inputs(fmt, np.float32)).to(tdtype)
    x32 = x.float().numpy()
    nan = NanInput.RAISE if fmt.has_nan else NanInput.ZERO
    for rounding in ROUNDINGS:
        want = fmt.encode(x32, rounding, seed=3, nan=nan)
        np.testing.assert_array_equal(encode(x, fmt, rounding, seed=3, nan=nan).numpy(), want)
    if tdtype == torch.float16:  # numpy's own float16 path agrees too
        np.testing.assert_array_equal(encode(x, fmt, nan=nan).numpy(), fmt.encode(x.numpy(), nan=nan))


def test_integer_and_bool_inputs():
    fmt = get_format("int4")
    x = np.array([-9, -8, -1, 0, 3, 7, 8, 100], dtype=np.int64)
    np.testing.assert_array_equal(encode(torch.from_numpy(x), fmt).numpy(), fmt.encode(x))
    q = quantize(torch.from_numpy(x), fmt)
    assert q.dtype == torch.float64
    b = torch.tensor([True, False])
    np.testing.assert_array_equal(encode(b, fmt).numpy(), fmt.encode(np.array([True, False])))


def test_every_code_round_trips():
    """decode -> encode returns the canonical code of every finite value (all 8-bit formats)."""
    for name in ALL_FORMATS:
        fmt = get_format(name)
        if fmt.bits > 8:
            continue
        codes = torch.arange(1 << fmt.bits)
        vals = decode(codes, fmt)
        np.testing.assert_array_equal(bits_of(vals), bits_of(fmt.decode(codes.numpy())))
        fin = torch.isfinite(vals)
        got = encode(vals[fin], fmt)
        np.testing.assert_array_equal(got.numpy(), fmt.encode(vals[fin].numpy()))


def test_decode_dtypes_and_errors():
    fmt = get_format("fp8_e4m3")
    c = torch.arange(256, dtype=torch.uint8)
    np.testing.assert_array_equal(bits_of(decode(c, fmt, torch.float32)), bits_of(fmt.decode(c.numpy(), np.float32)))
    with pytest.raises(FormatError, match="codes must lie in"):
        decode(torch.tensor([256]), fmt)
    with pytest.raises(TypeError, match="integer"):
        decode(torch.tensor([1.0]), fmt)


def test_stochastic_same_seed_same_draws():
    """STOCHASTIC with the same int seed / Generator state / explicit draws gives the numba codes."""
    fmt = get_format("fp4_e2m1")
    x = np.random.default_rng(0).standard_normal((7, 33)).astype(np.float32) * 3
    want = fmt.encode(x, "stochastic", seed=11)
    np.testing.assert_array_equal(encode(torch.from_numpy(x), fmt, "stochastic", seed=11).numpy(), want)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(encode(torch.from_numpy(x), fmt, "stochastic", seed=g1).numpy(),
                                  fmt.encode(x, "stochastic", seed=g2))
    draws = np.random.default_rng(11).random(x.size)
    np.testing.assert_array_equal(encode(torch.from_numpy(x), fmt, "stochastic", draws=torch.from_numpy(draws)).numpy(), want)
    # one element uses its own draw (not a constant)
    for s in range(10):
        one = np.array([0.3])
        assert encode(torch.from_numpy(one), "int4", "stochastic", seed=s).item() == get_format("int4").encode(one, "stochastic", seed=s)[0]


def test_stochastic_needs_seed_and_right_draw_count():
    x = torch.ones(4)
    with pytest.raises(ValueError, match="seed"):
        encode(x, "int4", "stochastic")
    with pytest.raises(ValueError, match="one value per element"):
        encode(x, "int4", "stochastic", draws=torch.rand(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="numpy"):
        encode(x, "int4", "stochastic", seed=torch.Generator())


def test_errors_match_numpy_path():
    with pytest.raises(FormatError, match="no NaN code"):
        encode(torch.tensor([1.0, float("nan")]), "int8")
    with pytest.raises(FormatError, match="no Inf"):
        encode(torch.ones(2), "fp8_e4m3", overflow="inf")
    with pytest.raises(ValueError, match="unknown rounding"):
        encode(torch.ones(2), "int8", "banker")
    with pytest.raises(ValueError, match="method"):
        encode(torch.ones(2), "int8", method="fast")
    with pytest.raises(TypeError, match="complex"):
        encode(torch.ones(2, dtype=torch.complex64), "int8")
    with pytest.raises(TypeError, match="torch.Tensor"):
        encode(np.ones(2), "int8")
    assert encode(torch.tensor([float("nan")]), "int8", nan="zero").item() == 0


def test_shapes_and_noncontiguous():
    fmt = get_format("fp6_e2m3")
    base = torch.randn(6, 10, dtype=torch.float32) * 4
    x = base.t()[::2]  # non-contiguous view
    got = quantize(x, fmt)
    assert got.shape == x.shape
    np.testing.assert_array_equal(bits_of(got), bits_of(fmt.quantize(x.contiguous().numpy())))
    assert encode(torch.zeros(0, 3), fmt).shape == (0, 3)
    assert encode(torch.tensor(1.25), fmt).shape == ()


def test_fast_path_coverage():
    """The arithmetic path exists for minifloats (subnormals on) and INT in deterministic modes;
    the torch-cast twin for fp8/fp16/bf16 with NEAREST_EVEN on CPU for float32/16 inputs."""
    from fmtlab.pytorch._fastpaths import torch_twin

    x32, x64 = torch.ones(2), torch.ones(2, dtype=torch.float64)
    for name in ("fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp16", "bf16"):
        assert torch_twin(get_format(name), Rounding.NEAREST_EVEN, x32) is not None
    assert torch_twin(get_format("fp8_e4m3"), Rounding.NEAREST_EVEN, x64) is None
    assert torch_twin(get_format("fp8_e4m3"), Rounding.TOWARD_ZERO, x32) is None
    assert torch_twin(get_format("fp6_e2m3"), Rounding.NEAREST_EVEN, x32) is None
    assert eligible(get_format("fp8_e4m3"), Rounding.NEAREST_EVEN)
    assert eligible(get_format("int4"), Rounding.TOWARD_ZERO)
    assert not eligible(get_format("fp8_e4m3"), Rounding.STOCHASTIC)
    assert not eligible(get_format("e4m3_fn_ftz"), Rounding.NEAREST_EVEN)
    assert not eligible(get_format("log4"), Rounding.NEAREST_EVEN)


@settings(max_examples=150, deadline=None)
@given(fmt=fst.formats(max_bits=10), rounding=fst.roundings(), data=st.data())
def test_property_random_formats(fmt, rounding, data):
    """Random family members and inputs (hypothesis): torch == numba, both methods."""
    x = data.draw(fst.input_arrays(fmt, 32 if data.draw(st.booleans()) else 64))
    overflow = data.draw(fst.overflows(fmt))
    nan = NanInput.RAISE if fmt.has_nan else NanInput.ZERO
    seed = data.draw(fst.seeds())
    want = fmt.encode(x, rounding, overflow, seed=seed, nan=nan)
    for method in ("auto", "arith", "table"):
        got = encode(torch.from_numpy(np.array(x)), fmt, rounding, overflow, seed=seed, nan=nan, method=method)
        np.testing.assert_array_equal(got.numpy(), want)
