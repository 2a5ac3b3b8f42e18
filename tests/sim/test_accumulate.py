"""The accumulator in the accuracy path (fmtlab.sim.accumulate) against the bit-accurate datapath."""

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_quantizer
from fmtlab.hw.datapath import dot
from fmtlab.sim.accumulate import accumulate, accumulated_matmul, operand, parse


def _data(m=6, n=5, k=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, 3] *= 40  # an outlier channel, so that narrow accumulators overflow
    w = rng.standard_normal((n, k)).astype(np.float32)
    return x, w


def _pairs(qa, qw, x, w):
    """Codes for datapath.dot over all (row of x, row of w) pairs: [M, N, K] each."""
    cx, cw = qa.quantize(x).codes, qw.quantize(w).codes
    return np.broadcast_to(cw[None], (x.shape[0],) + cw.shape), np.broadcast_to(cx[:, None], (x.shape[0], w.shape[0], x.shape[1]))


@pytest.mark.parametrize("acc", ["fp32", "bf16", "fp16", "e5m7", "bf16_rtz", "e8m13_rtz", "hopper_fp8_mma"])
def test_float_k1_equals_datapath_bit_for_bit(acc):
    x, w = _data(k=300)
    qa, qw = get_quantizer("fp8_e4m3_per_token"), get_quantizer("fp8_e4m3_per_channel")
    r = accumulate(operand(qa, x), operand(qw, w), acc)
    W, X = _pairs(qa, qw, x, w)
    ref = dot(W, X, "fp8_e4m3", "fp8_e4m3", acc)
    assert np.array_equal(r.acc.view(np.int64), ref.value.view(np.int64))
    assert np.array_equal(r.overflow, ref.overflows > 0)


@pytest.mark.parametrize("acc", ["int32", "int17", "int16", "int16_sat", "int17_sat"])
def test_integer_equals_datapath_bit_for_bit(acc):
    x, w = _data()
    x[:3] = np.abs(x[:3])  # some rows with aligned signs: their dot products outgrow int16
    w[:2] = np.abs(w[:2])
    qa, qw = get_quantizer("int8_per_token"), get_quantizer("int8_per_channel")
    r = accumulate(operand(qa, x), operand(qw, w), acc)
    W, X = _pairs(qa, qw, x, w)
    ref = dot(W, X, "int8", "int8", acc)
    assert np.array_equal(r.acc, ref.value)
    if acc.endswith("_sat"):
        assert np.array_equal(r.overflow, ref.overflows > 0)
    else:  # wrap: a dot product overflows when its exact value leaves the range
        lo, hi = -(2 ** (int(acc[3:]) - 1)), 2 ** (int(acc[3:]) - 1)
        assert np.array_equal(r.overflow, (ref.exact < lo) | (ref.exact >= hi))
    if acc in ("int16", "int16_sat"):
        assert r.overflow.any()  # the test data does reach the narrow accumulators' limits


def test_hand_example_int8_wrap_and_saturate():
    x = operand(None, np.array([[100.0, 100.0, -50.0]], np.float32))
    x = type(x)(x.values, x.row_scale, True)
    w = type(x)(np.array([[100.0, 100.0, 100.0]]), np.ones(1), True)
    # exact 20000 - 5000 = 15000; int15 wraps 20000 at step 2 but the exact final fits: 15000
    assert accumulate(x, w, "int15").acc[0, 0] == 15000
    # int15_sat: 10000, then 20000 -> 16383 (saturated), then 16383 - 5000 = 11383
    r = accumulate(x, w, "int15_sat")
    assert r.acc[0, 0] == 11383 and r.overflow[0, 0]
    # int14 (range [-8192, 8192)): 15000 wraps to 15000 - 16384 = -1384
    assert accumulate(x, w, "int14").acc[0, 0] == -1384


def test_chunked_float_hand_example():
    # bf16 (8 fraction bits incl. hidden: spacing 2 at 256): 256 + 1 + 1: sequential rounds each
    # +1 away (ties to even: 257 -> 256), a chunk of 2 adds 2 exactly: 258
    x = operand(None, np.array([[256.0, 1.0, 1.0]], np.float32))
    w = operand(None, np.ones((1, 3), np.float32))
    assert accumulate(x, w, "bf16").acc[0, 0] == 256.0
    assert accumulate(x, w, "bf16_k2").acc[0, 0] == 256.0  # chunks (256 + 1), (1): 257 -> 256, +1 -> 256
    x2 = operand(None, np.array([[1.0, 1.0, 256.0]], np.float32))
    assert accumulate(x2, w, "bf16_k2").acc[0, 0] == 258.0
    assert accumulate(x, w, "fp32").acc[0, 0] == 258.0


def test_matmul_fp32_close_to_gemm_and_int32_exact():
    x, w = _data(k=64)
    qa, qw = get_quantizer("int8_per_token"), get_quantizer("int8_per_channel")
    ref = qa.fake_quantize(x).astype(np.float64) @ qw.fake_quantize(w).astype(np.float64).T
    y, ovf = accumulated_matmul(x, w, qa, qw, "int32")
    assert not ovf.any()
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)
    y16, ovf16 = accumulated_matmul(x * 50, w, qa, qw, "int14")
    assert ovf16.any()


def test_groups_and_blocks_keep_scales_in_products():
    x, w = _data(k=64)
    for name in ("int4_g32", "mxfp8", "nvfp4"):
        q = get_quantizer(name)
        y, _ = accumulated_matmul(x, w, q, q, "fp32_k64")
        ref = q.fake_quantize(x).astype(np.float64) @ q.fake_quantize(w).astype(np.float64).T
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(FmtlabError, match="integer element values"):
        accumulated_matmul(x, w, get_quantizer("int4_g32"), get_quantizer("int4_g32"), "int32")


def test_parse_and_reject():
    assert parse(None) is None and parse("none") is None
    assert parse("bf16_k32").chunk == 32
    with pytest.raises(FmtlabError, match="float accumulators"):
        parse("int16_k4")
    with pytest.raises(FmtlabError):
        parse("int")
    x, w = _data(k=8)
    with pytest.raises(FmtlabError, match="asymmetric"):
        operand(get_quantizer("int8_per_token_asym"), x)


def test_replay_with_accumulator_by_hand(tmp_path):
    """A replay row under int8 W8A8 with an accumulator: int32 equals the float GEMM; a 10-bit
    accumulator wraps the one dot product that leaves [-512, 512) (hand-computed)."""
    from fmtlab.sim.replay import ReplayConfig, make_config, replay
    from fmtlab.sim.trace import TraceWriter

    x = np.float32([[127, 127], [127, -1]])  # one sequence of 2 tokens; per-token scale 1
    w = np.float32([[127, 127]])  # per-channel scale 1
    wr = TraceWriter(str(tmp_path / "t"))
    wr.add("L:input", x)
    wr.add("L:weight", w)
    manifest = {"seq_len": 2, "n_tokens": 2, "prefix_len": 0,
                "layers": {"L": {"op": "linear", "type": "proj", "block": 0, "in_features": 2, "out_features": 1,
                                 "input": "L:input", "weight": "L:weight", "output": None, "bias": None}},
                "activations": {}}
    tr = wr.close(manifest)
    cfgs = [make_config("i32:w=int8_per_channel;a=int8_per_token;acc=int32"),
            make_config("i16:w=int8_per_channel;a=int8_per_token;acc=int16")]
    res = replay(tr, cfgs, progress=False, workers=1)
    r32, r16 = res.rows
    assert r32["out_sqnr_db"] == np.inf and r32["note"] == "accumulator int32: 0/2 dot products overflow"
    # token 0: 127*127*2 = 32258 fits int16; token 1: 16129 - 127 = 16002 fits too
    assert r16["out_sqnr_db"] == np.inf
    res = replay(tr, [make_config("i15:w=int8_per_channel;a=int8_per_token;acc=int15")], progress=False, workers=1)
    # int15 range [-16384, 16384): 32258 wraps to 32258 - 32768 = -510; 16002 fits
    assert res.rows[0]["note"] == "accumulator int15: 1/2 dot products overflow"
    sig, noise = 32258.0 ** 2 + 16002.0 ** 2, (32258.0 + 510.0) ** 2
    assert res.rows[0]["out_sqnr_db"] == pytest.approx(10 * np.log10(sig / noise), rel=1e-6)
    with pytest.raises(FmtlabError, match="transform"):
        ReplayConfig("bad", "int8_per_channel", "int8_per_token", "smoothquant", accumulator="int32")
    with pytest.raises(FmtlabError):
        make_config("bad:w=int8_per_channel;a=int8_per_token;acc=int")


def test_perplexity_config_with_accumulator():
    """models.perplexity scores a replay config's accumulator: int32 equals the exact integer GEMM
    (close to float32), a narrow one overflows and changes the perplexity."""
    import torch
    from sim_helpers import tiny_llama

    from fmtlab.models.perplexity import perplexity

    m = tiny_llama()
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    base = perplexity(m, None, "w8a8_int_token", ids=ids, progress=False)["ppl"]
    p32 = perplexity(m, None, "a32:w=int8_per_channel;a=int8_per_token;acc=int32", ids=ids, progress=False)["ppl"]
    p10 = perplexity(m, None, "a10:w=int8_per_channel;a=int8_per_token;acc=int10", ids=ids, progress=False)["ppl"]
    assert abs(p32 - base) < 1e-3 * base
    assert abs(p10 - base) > 1e-3 * base


def test_fixed_point_grids_in_units_of_their_step():
    """dINT4 weights (half-integer steps) x INT8 activations: the integer accumulator counts in units
    of 2^-1 and equals the datapath's W-bit register bit for bit."""
    x, w = _data(k=64)
    x[:3] = np.abs(x[:3])
    w[:2] = np.abs(w[:2])
    qa, qw = get_quantizer("int8_per_token"), get_quantizer("dint4_per_channel")
    xo, wo = operand(qa, x), operand(qw, w)
    assert xo.integer and wo.integer
    W, X = _pairs(qa, qw, x, w)
    for acc in ("int14", "int20", "int14_sat"):
        r = accumulate(xo, wo, acc)
        ref = dot(W, X, "dint4", "int8", acc)
        assert np.array_equal(r.acc * 2.0 ** -1, ref.value), acc
    assert not operand(get_quantizer("fp8_e4m3_per_token"), x).integer


@pytest.mark.parametrize("acc", ["fp16", "bf16", "e5m2", "fp16_rtz", "e8m13_rtz", "fp32"])
def test_vectorized_step_equals_scalar_fp_step(acc):
    """The vectorized accumulation step equals hw.dp_kernels.fp_step on random pairs spanning
    subnormals, ties, cancellation and overflow."""
    from fmtlab.hw import dp_kernels as DK
    from fmtlab.hw.accumulators import parse_accumulator
    from fmtlab.hw.datapath import float_params
    from fmtlab.sim.accumulate import _fp_steps

    man, emin, emax, rtz, f64 = float_params(parse_accumulator(acc))
    rng = np.random.default_rng(1)
    n = 20000
    a = np.ldexp(rng.standard_normal(n), rng.integers(emin - man - 3, emax + 2, n))
    a = np.array([DK.round_fmt(float(v), man, emin, emax, rtz) for v in a])  # accumulators lie on the grid
    p = np.ldexp(rng.standard_normal(n), rng.integers(emin - man - 6, emax + 2, n))
    p[::7] = -a[::7] * (1 + 2.0 ** -30)  # near-cancellation
    p[::11] = np.ldexp(1.0, rng.integers(emin - man, emax, n))[::11] * 1.5  # ties
    want = np.array([DK.fp_step(float(x), float(y), man, emin, emax, rtz, f64) for x, y in zip(a, p)])
    got = a.copy()
    ovf = np.zeros(n, dtype=bool)
    _fp_steps(got, p, man, emin, emax, rtz, f64, ovf)
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert np.array_equal(ovf, np.isinf(want) & np.isfinite(a) & np.isfinite(p))
    # the fused kernels' steps: the branch-free row pass (+ its subnormal fix-up) and the scalar one
    from fmtlab.sim._acc_kernels import float_acc_partials, float_acc_rows

    for run in ("partials", "rows"):
        out = np.zeros((1, n))
        kovf = np.zeros((1, n), dtype=bool)
        if run == "partials":  # round(0 + a) = a (on the grid), then round(a + p)
            float_acc_partials(np.stack([a, p])[:, None, :], man, emin, emax, rtz, f64, out, kovf)
        else:  # products 1 * a, 1 * p, chunk 1
            float_acc_rows(np.ones((1, 2)), np.stack([a, p]), 1, 0, 2, man, emin, emax, rtz, f64, out, kovf)
        assert np.array_equal(out[0].view(np.int64), want.view(np.int64)), run
        assert np.array_equal(kovf[0], np.isinf(want) & np.isfinite(a) & np.isfinite(p)), run


@pytest.mark.parametrize("acc", ["bf16", "fp16", "fp32", "tf32", "e5m2_rtz", "fp64"])
@pytest.mark.parametrize("chunk", [1, 7, 8, 32, 200])
def test_fused_float_kernel_equals_the_chunked_numpy_reference(acc, chunk):
    """The numba kernel (k ascending within a chunk) equals the former float64-GEMM-per-chunk
    implementation bit for bit (values and overflow flags) on FP8 E4M3 element products, whose
    chunk sums are exact in float64; N not a multiple of the kernel's 8 columns, K of the chunk."""
    from fmtlab.formats import get_quantizer
    from fmtlab.hw.accumulators import parse_accumulator
    from fmtlab.sim.accumulate import _float_acc, _float_acc_numpy, operand

    rng = np.random.default_rng(chunk)
    x = (rng.standard_normal((9, 101)) * np.exp(rng.standard_normal((9, 101)))).astype(np.float32)
    w = rng.standard_normal((11, 101)).astype(np.float32)
    q = get_quantizer("fp8_e4m3_per_token")
    xo, wo = operand(q, x), operand(q, w)
    fa = parse_accumulator(acc)
    got, govf = _float_acc(xo.values, wo.values, fa, chunk)
    want, wovf = _float_acc_numpy(xo.values, wo.values, fa, chunk)
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    np.testing.assert_array_equal(govf, wovf)
    if acc == "fp16":
        assert govf.any()  # raw E4M3 x E4M3 products overflow fp16 (448^2 > 65504)
    lo_got, _ = _float_acc(xo.values, wo.values, fa, chunk, 13, 77)
    lo_want, _ = _float_acc_numpy(xo.values, wo.values, fa, chunk, 13, 77)
    np.testing.assert_array_equal(lo_got.view(np.uint64), lo_want.view(np.uint64))


def test_fused_float_kernel_in_row_and_column_blocks(monkeypatch):
    """Partials formed in small row x column blocks give the same bits as in one block."""
    import fmtlab.sim.accumulate as A
    from fmtlab.formats import get_quantizer
    from fmtlab.hw.accumulators import parse_accumulator

    rng = np.random.default_rng(5)
    q = get_quantizer("fp8_e4m3_per_token")
    xo = A.operand(q, rng.standard_normal((13, 90)).astype(np.float32))
    wo = A.operand(q, rng.standard_normal((21, 90)).astype(np.float32))
    fa = parse_accumulator("bf16")
    want, wovf = A._float_acc_numpy(xo.values, wo.values, fa, 16)
    for budget in (8 * 6 * 3, 8 * 6 * 25):  # 3 columns of one row per block; one whole row per block
        monkeypatch.setattr(A, "_PARTS_BYTES", budget)
        got, govf = A._float_acc(xo.values, wo.values, fa, 16)
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
        np.testing.assert_array_equal(govf, wovf)
