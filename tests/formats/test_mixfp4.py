"""MixFP4 (arXiv 2605.31035): NVFP4 blocks choosing E2M1 or E1M2 elements, flag in bit 7 of the
E4M3 scale code. Held to an independent per-block restatement (oracle encodes), exhaustively over
every E4M3 scale magnitude x element type x element code for dequantize, with hypothesis laws,
the torch path bit for bit, and the golden vectors read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode

F32 = np.float32
E2M1, E1M2, E4M3 = get_format("fp4_e2m1"), get_format("fp4_e1m2"), get_format("fp8_e4m3")


def _candidate(xi, g, fmt):
    s_rel = F32(F32(F32(np.abs(xi).max()) / F32(fmt.max)) / g)
    sc = max(1, int(oracle_encode(E4M3, np.array([s_rel]), "nearest_even", "saturate")[0]))
    S = F32(g * F32(E4M3.values()[sc]))
    codes = oracle_encode(fmt, (xi / S).astype(F32), "nearest_even", "saturate")
    out = (fmt.values()[codes] * np.float64(S)).astype(F32)
    return sc, codes, out


def _restated(x, metric="mse"):
    g = F32(F32(np.abs(x).max()) / F32(F32(448.0) * F32(6.0)))
    res = []
    for xi in x.reshape(-1, 16):
        c2, c1 = _candidate(xi, g, E2M1), _candidate(xi, g, E1M2)
        err = {"mse": lambda d: np.sum(d * d), "l1": lambda d: np.sum(np.abs(d)),
               "abs_max": lambda d: np.max(np.abs(d))}[metric]
        d2 = c2[2].astype(np.float64) - xi
        d1 = c1[2].astype(np.float64) - xi
        if err(d1) < err(d2):
            res.append((c1[0] | 0x80, c1[1], c1[2]))
        else:
            res.append(c2)
    return g, res


def _data(seed, rows=48):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, (rows, 16)) * np.exp2(rng.integers(-6, 6, (rows, 1)))
    x[::3] = rng.uniform(-1, 1, (len(x[::3]), 16)) * np.exp2(rng.integers(-6, 2, (len(x[::3]), 1)))
    return x.astype(F32)


@pytest.mark.parametrize("metric", ["mse", "l1", "abs_max"])
def test_matches_the_per_block_restatement(metric):
    q = get_quantizer("mixfp4", scale_rule=f"mixfp4({metric})")
    x = _data(1)
    qt = q.quantize(x)
    fq = q.fake_quantize(x)
    g, want = _restated(x, metric)
    assert F32(qt.tensor_scale) == g
    flags = 0
    for i, (sc, codes, out) in enumerate(want):
        assert int(qt.scale_codes.reshape(-1)[i]) == sc
        np.testing.assert_array_equal(qt.codes[i], codes)
        np.testing.assert_array_equal(fq[i].view(np.uint32), out.view(np.uint32))
        flags += sc >> 7
    assert 0 < flags < len(want)  # both element types occur
    np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), fq.view(np.uint32))


def test_dequantize_exhaustive_over_scale_codes_types_and_element_codes():
    """Every E4M3 scale magnitude (1..0x7E) x element type x element code decodes to
    g * e4m3(scale) * element value, the element read in the flagged format."""
    q = get_quantizer("mixfp4")
    x = np.zeros((0x7E * 2, 16), F32)
    x[0, 0] = F32(448 * 6.0)  # any tensor: we only reuse its QTensor's layout below
    qt = q.quantize(x)
    sc = np.array([(c | f) for f in (0, 0x80) for c in range(1, 0x7F)], np.uint8).reshape(-1, 1)
    codes = np.tile(np.arange(16, dtype=np.uint8), (len(sc), 1))
    S = (F32(qt.tensor_scale) * E4M3.values()[sc[:, 0] & 0x7F].astype(F32)).astype(F32)
    import dataclasses
    qt2 = dataclasses.replace(qt, codes=codes, scale_codes=sc, scales=S.reshape(-1, 1))
    got = q.dequantize(qt2)
    elem = np.where((sc >> 7).astype(bool), E1M2.values()[codes], E2M1.values()[codes])
    want = (elem * S[:, None].astype(np.float64)).astype(F32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_never_worse_than_nvfp4_per_block_and_ties_go_to_e2m1():
    x = _data(2, 96)
    fq = get_quantizer("mixfp4").fake_quantize(x).astype(np.float64)
    nv = get_quantizer("nvfp4").fake_quantize(x).astype(np.float64)
    assert np.all(np.sum((fq - x) ** 2, axis=1) <= np.sum((nv - x) ** 2, axis=1))
    # a tie (an all-zero block: both errors 0) keeps E2M1; so does a block E2M1 holds exactly
    t = np.zeros((2, 16), F32)
    t[0, 0] = F32(448 * 6.0)
    assert get_quantizer("mixfp4").quantize(t).scale_codes.reshape(-1)[1] < 0x80
    t[1, :4] = [1.0, -1.5, 0.0, 1.5]
    assert get_quantizer("mixfp4").quantize(t).scale_codes.reshape(-1)[1] < 0x80
    # a block only E1M2 holds exactly (0.25 steps) takes E1M2
    t[1, :4] = [1.75, 0.25, -1.25, 0.75]
    qt = get_quantizer("mixfp4").quantize(t)
    assert qt.scale_codes.reshape(-1)[1] >= 0x80
    np.testing.assert_array_equal(qt.dequantize()[1], t[1])


def test_bad_element_and_granularity():
    with pytest.raises(FmtlabError, match="fp4_e2m1"):
        get_quantizer("nvfp4", format="fp6_e2m3", scale_rule="mixfp4")
    with pytest.raises(FmtlabError, match="FP8-scaled"):
        get_quantizer("int8_per_channel", scale_rule="mixfp4")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(-20, 20))
def test_laws(seed, e):
    """dequantize(quantize) == fake_quantize; sign symmetry; E1M2 codes only in flagged blocks'
    range; the block error never exceeds NVFP4's."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 32)) * 2.0 ** e).astype(F32)
    q = get_quantizer("mixfp4")
    qt = q.quantize(x)
    fq = q.fake_quantize(x)
    np.testing.assert_array_equal(q.dequantize(qt).view(np.uint32), fq.view(np.uint32))
    np.testing.assert_array_equal((-q.fake_quantize(-x)).view(np.uint32), fq.view(np.uint32))
    nv = get_quantizer("nvfp4").fake_quantize(x).astype(np.float64).reshape(-1, 16)
    d = fq.astype(np.float64).reshape(-1, 16) - x.reshape(-1, 16)
    assert np.all(np.sum(d * d, axis=1) <= np.sum((nv - x.reshape(-1, 16)) ** 2, axis=1))
    assert qt.report.nonfinite_blocks == 0


def test_torch_bit_identical():
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize
    from fmtlab.pytorch.quantizers import TorchQuantizer

    q = get_quantizer("mixfp4")
    x = _data(3, 64).reshape(32, 32)
    for a in (x, x.astype(np.float64)):
        got = fake_quantize(torch.from_numpy(a.copy()), q).numpy()
        np.testing.assert_array_equal(got.view(np.uint8), q.fake_quantize(a).view(np.uint8))
    tq = TorchQuantizer(q)
    tqt = tq.quantize(torch.from_numpy(x))
    qt = q.quantize(x)
    np.testing.assert_array_equal(tqt.codes.numpy(), qt.codes)
    np.testing.assert_array_equal(tqt.scale_codes.numpy().reshape(-1), qt.scale_codes.reshape(-1))
    np.testing.assert_array_equal(tq.dequantize(tqt).numpy().view(np.uint32),
                                  q.dequantize(qt).view(np.uint32))
    # stochastic rounding: the same draws, the same bits
    qs = get_quantizer("mixfp4", rounding="stochastic", seed=5)
    got = fake_quantize(torch.from_numpy(x.copy()), qs).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), qs.fake_quantize(x).view(np.uint32))


def test_vectors_carry_the_flag(tmp_path):
    from fmtlab.cli import main
    from fmtlab.formats.vectors import read_hex

    assert main(["vectors", "mixfp4", "--out", str(tmp_path), "--n", "64", "--seed", "2"]) == 0
    doc = json.loads((tmp_path / "mixfp4.json").read_text())
    assert "bit 7 = 1 marks an fp4_e1m2" in doc["conventions"]["block_rule"]
    words = read_hex(tmp_path / "mixfp4.blocks.hex")
    x = np.array([[(w >> (8 + 64 + 32 * (15 - k))) & 0xFFFFFFFF for k in range(16)] for w in words],
                 np.uint32).view(F32)
    sc = np.array([(w >> 64) & 0xFF for w in words])
    codes = np.array([[(w >> (4 * (15 - k))) & 0xF for k in range(16)] for w in words])
    fin = np.isfinite(x).all(axis=1)
    g = float.fromhex(doc["conventions"]["tensor_scale"])
    S = F32(g) * E4M3.values()[sc[fin] & 0x7F].astype(F32)
    elem = np.where((sc[fin] >> 7)[:, None].astype(bool), E1M2.values()[codes[fin]],
                    E2M1.values()[codes[fin]])
    out = (elem * S[:, None].astype(np.float64)).astype(F32)
    q = get_quantizer("mixfp4")
    # each finite block's vector dequantizes to fmtlab's fake-quant of that block within the file's
    # tensor (the vector tensor is quantized as one tensor)
    want = q.fake_quantize(x)[fin]
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    assert (sc[fin] >= 0x80).any() and (sc[fin] < 0x80).any()


def test_hw_prices_the_internal_e2m2_operand():
    """``fmtlab hw`` / explore price MixFP4 as its unified internal E2M2 block operand."""
    from fmtlab.hw import mac_cost
    from fmtlab.hw.config_pricing import hw_operand

    op, note = hw_operand("mixfp4")
    assert op == "mxe2m2_fin_b16" and "E2M2" in note
    assert hw_operand("mixfp4_16x16")[0] == "mxe2m2_fin_b16"
    mix = mac_cost(op, "mxfp4_e2m1_b16")
    nv = mac_cost(hw_operand("nvfp4")[0], "mxfp4_e2m1_b16")
    assert mix.area_ge > nv.area_ge  # the wider internal significand costs area


def test_consumers_read_the_flag_or_refuse():
    """The accumulator replay reads each block's element type (it decoded E1M2 codes as E2M1
    before); GPTQ and the block scale search refuse MixFP4 and 2-D tiles by name."""
    from fmtlab.sim.accumulate import operand
    from fmtlab.sim.gptq import gptq
    from fmtlab.sim.scale_search import block_scale_search

    x = _data(6, 64).reshape(32, 32)
    for name in ("mixfp4", "nvfp4_16x16", "mixfp4_16x16"):
        q = get_quantizer(name)
        op = operand(q, x)
        got = (op.values * op.row_scale[:, None]).astype(F32)
        np.testing.assert_array_equal(got.view(np.uint32), q.fake_quantize(x).view(np.uint32))
    H = np.eye(32)
    for name, needle in (("mixfp4", "MixFP4"), ("nvfp4_16x16", "2-D tiles")):
        with pytest.raises(FmtlabError, match=needle):
            gptq(x, H, get_quantizer(name))
    with pytest.raises(FmtlabError, match="mixfp4"):
        block_scale_search(x, get_quantizer("mixfp4"))
    with pytest.raises(FmtlabError, match="block quantizer along the input axis"):
        block_scale_search(x, get_quantizer("nvfp4_16x16"))


def test_replay_clip_mask_uses_each_blocks_element():
    """The replay's clip mask equals the QuantReport's count (E1M2 blocks clip at E1M2's bounds)."""
    from fmtlab.sim.quant import resolve

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(F32)
    x[:, :16] = rng.uniform(-1, 1, (64, 16))
    q = get_quantizer("mixfp4")
    out, clip = resolve("mixfp4").with_mask(x)
    np.testing.assert_array_equal(out.view(np.uint32), q.fake_quantize(x).view(np.uint32))
    rep = q.quantize(x).report
    assert int(clip.sum()) == rep.clipped > 0  # saturated-scale E1M2 blocks clip
