"""Formats without a torch core take the exact torch table path, bit-identical to numpy.

Invariants, for ``Table3`` (a Format subclass defined here that states only its value table:
family "test_table3", no KERNEL and no TORCH handler, codes in value order, NEAREST_EVEN ties to
the even code, overflow saturates, NaN raises unless nan="zero"):
- ``fmtlab.pytorch.encode`` / ``quantize`` / ``fake_quantize`` equal ``fmt.encode`` /
  ``fmt.quantize`` (``Format.encode_table``) as integers / bit patterns, every rounding mode,
  float32 and float64, on every value, every rounding boundary and both float neighbours of each,
  +/-0, +/-Inf, NaN;
- ``TorchQuantizer`` for every non-block granularity (tensor, channel axis 0 / 1, token, group on
  the last axis and on axis 0) and the absmax / percentile / MSE rules gives codes, scales and
  fake-quant bits equal to the numpy reference written out here from the shared layout spec:
  y = fl(x / s) on ``plan_layout``'s working rows, ``encode_table(y)``, fl(fl64(v) * s);
- ``quantize_model`` with that format (weights per group of 32, activations per token) computes
  linear(Q_a(x), Q_w(W), b) with Q_a, Q_w those numpy references, bit for bit.
A registered TorchCore is used where present (its ``encode`` replaces the table search).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fmtlab.errors import FormatError
from fmtlab.formats import (
    MSE, Format, LookupFormat, NanInput, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer,
    Rounding, SharedExp, get_format, register_format, unregister_format,
)
from fmtlab.formats.capabilities import Subsystem, find_handler, register_handler
from fmtlab.formats.scaling import broadcast_scales, from_work, plan_layout, slot_matrix, to_work, work_rows
from fmtlab.pytorch import TorchQuantizer, encode, fake_quantize, quantize, quantize_model
from fmtlab.pytorch.cores import TorchCore, torch_core

from torch_helpers import bits_of


@dataclasses.dataclass(frozen=True)
class Table3(Format):
    """A 3-bit format given only by its sorted value table (non-uniform, asymmetric)."""

    family: ClassVar[str] = "test_table3"
    table: tuple = (-6.0, -2.5, -1.0, 0.0, 0.75, 1.5, 3.0, 7.0)

    @property
    def bits(self) -> int:
        return 3

    @property
    def name(self) -> str:
        return "test_table3"

    def _build_values(self) -> np.ndarray:
        return np.array(self.table, dtype=np.float64)

    def _virtual_above(self) -> tuple[float, bool]:
        return 11.0, True   # one step (4) beyond max; "code 8" would be even

    def _virtual_below(self) -> tuple[float, bool]:
        return -9.5, False  # one step (3.5) below min; "code -1" is odd


FMT = Table3()
ROUNDINGS = list(Rounding)


def _quantizer(monkeypatch, *args, **kw) -> Quantizer:
    """``Quantizer(FMT, *args, **kw)``: numpy's Quantizer takes the exact table path for it."""
    return Quantizer(FMT, *args, **kw)


def _points(dtype, fmt: Format = FMT) -> np.ndarray:
    """Every value, rounding boundary and virtual end of ``fmt``, both ``dtype`` neighbours of each,
    +/-Inf, the extremes and the smallest subnormal of ``dtype``, +0, then -0, +NaN, -NaN."""
    g = fmt.grid
    with np.errstate(over="ignore"):
        base = np.concatenate([g.vals, g.bounds]).astype(dtype)
    fi = np.finfo(dtype)
    extra = np.array([0.0, -0.0, np.inf, -np.inf, fi.max, -fi.max, fi.smallest_subnormal,
                      -fi.smallest_subnormal], dtype=dtype)
    pts = np.concatenate([base, np.nextafter(base, dtype(np.inf)), np.nextafter(base, dtype(-np.inf)), extra])
    return np.concatenate([np.unique(pts), np.array([-0.0, np.nan, -np.nan], dtype=dtype)])


def test_table_format_has_no_core():
    """The test format has no TORCH handler: torch_core gives the empty core (table path)."""
    assert find_handler(Subsystem.TORCH, FMT) is None
    assert torch_core(FMT) == TorchCore()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rounding", ROUNDINGS, ids=[r.value for r in ROUNDINGS])
def test_elementwise_bit_identical(rounding, dtype):
    """encode / quantize / fake_quantize (unscaled) == numpy's table encode, all points."""
    pts = _points(dtype)
    x = pts[~np.isnan(pts)]
    seed = 5 if rounding is Rounding.STOCHASTIC else None
    want = FMT.encode(x, rounding, seed=seed)
    got = encode(torch.from_numpy(x.copy()), FMT, rounding, seed=seed)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), want)
    vals = FMT.quantize(x, rounding, seed=seed)
    np.testing.assert_array_equal(bits_of(quantize(torch.from_numpy(x.copy()), FMT, rounding, seed=seed)),
                                  bits_of(vals))
    if rounding is not Rounding.STOCHASTIC:
        fq = fake_quantize(torch.from_numpy(x.copy()), FMT, rounding=rounding)
        np.testing.assert_array_equal(bits_of(fq), bits_of(vals))
    # NaN: raises by default (the format has no NaN code), reads as 0 with nan="zero"
    with pytest.raises(FormatError, match="no NaN code"):
        encode(torch.from_numpy(pts.copy()), FMT, rounding, seed=seed)
    np.testing.assert_array_equal(
        encode(torch.from_numpy(pts.copy()), FMT, rounding, seed=seed, nan="zero").numpy(),
        FMT.encode(pts, rounding, seed=seed, nan=NanInput.ZERO))


def test_hand_picked_codes():
    """Labelled ties and ends (NEAREST_EVEN: even code; AWAY: larger magnitude; saturate)."""
    x = torch.tensor([5.0, -1.75, 0.375, 2.25, 9.0, 100.0, -100.0, -0.0, float("inf")])
    #                 3|7 tie  -2.5|-1  0|.75  1.5|3   beyond   sat     sat    zero  sat
    want = {"nearest_even": [6, 2, 4, 6, 7, 7, 0, 3, 7], "nearest_away": [7, 1, 4, 6, 7, 7, 0, 3, 7],
            "toward_zero": [6, 2, 3, 5, 7, 7, 0, 3, 7]}
    for rounding, codes in want.items():
        assert encode(x, FMT, rounding).tolist() == codes
        assert FMT.encode(x.numpy(), rounding).tolist() == codes
    with pytest.raises(FormatError, match="no Inf"):
        encode(x, FMT, overflow="inf")


def _finalize(c: np.ndarray, fmt: Format) -> np.ndarray:
    """s = fl32(c / fl32(max)), c == 0 -> 1, underflow -> 2**-149 (scaling.py)."""
    with np.errstate(all="ignore"):
        s = np.float32(c) / np.float32(fmt.max)
    return np.where(c == 0, np.float32(1), np.where(s == 0, np.float32(2.0 ** -149), s)).astype(np.float32)


def _table_fq(fmt: Format, rows: np.ndarray, s_b: np.ndarray, s64_b: np.ndarray, rounding, overflow, nan, rand):
    """(codes, fl(fl64(v) * s)) of rows / s by the format's numpy encode (s_b, s64_b broadcast
    against rows; ``rand``: stochastic draws in the working order, through encode_table)."""
    with np.errstate(all="ignore"):
        y = rows / s_b
    if rand is None:
        codes = fmt.encode(y, rounding, overflow, nan=nan).reshape(rows.shape)
    else:
        codes = fmt.encode_table(y, rounding, overflow, nan, rand).reshape(rows.shape)
    v = fmt.values()[codes.astype(np.intp)]
    with np.errstate(all="ignore"):
        return codes, (v * s64_b).astype(rows.dtype)


def _mse_clip(M: np.ndarray, rule: MSE, q: Quantizer) -> np.ndarray:
    """scaling.MSE on the slot matrix: products rounded to M's dtype (the table path's
    fake-quant), sequential float64 sums, ties keep the larger clip value."""
    rnd = Rounding.NEAREST_EVEN if q.rounding is Rounding.STOCHASTIC else q.rounding
    amax = np.max(np.where(np.isfinite(M), np.abs(M), 0), axis=1).astype(np.float32)
    best, best_c = np.full(amax.shape, np.inf), amax.copy()
    for r in rule.ratios:
        c = (amax * r).astype(np.float32)
        s = _finalize(c, q.format)
        _, fq = _table_fq(q.format, M, s.astype(M.dtype)[:, None], s.astype(np.float64)[:, None], rnd,
                          q.overflow, NanInput.ZERO, None)
        d = fq.astype(np.float64) - M.astype(np.float64)
        sse = np.cumsum(d * d, axis=1)[:, -1]
        better = sse < best
        best, best_c = np.where(better, sse, best), np.where(better, c, best_c)
    return best_c


def _percentile(M: np.ndarray, p: float) -> np.ndarray:
    """scaling.Percentile: sorted |x| (float32), h = (n - 1) * p / 100, linear interpolation."""
    v = np.sort(np.abs(M).astype(np.float32), axis=1)
    n = v.shape[1]  # the test inputs hold no NaN
    h = (n - 1) * (p / 100.0)
    i = int(np.floor(h))
    lo, hi = v[:, i].astype(np.float64), v[:, min(i + 1, n - 1)].astype(np.float64)
    return (lo + (hi - lo) * (h - i)).astype(np.float32)


def _reference(q: Quantizer, x: np.ndarray, seed=None):
    """(codes, scales, fake-quant) of ``q`` on x from the numpy layout spec and the format's own
    numpy encode (``encode_table``, or a family's override of it such as LookupFormat's)."""
    lay = plan_layout(q.granularity, x.shape)
    w = to_work(x, lay)
    M = slot_matrix(w, lay)
    if isinstance(q.scale_rule, MSE):
        c = _mse_clip(M, q.scale_rule, q)
    elif isinstance(q.scale_rule, Percentile):
        c = _percentile(M, q.scale_rule.p)
    else:
        c = np.max(np.where(np.isfinite(M), np.abs(M), 0), axis=1).astype(np.float32)
    s = _finalize(c, q.format)
    rand = None
    if q.rounding is Rounding.STOCHASTIC:
        rand = to_work(np.random.default_rng(seed).random(x.size).reshape(x.shape), lay).reshape(-1)
    codes, out = _table_fq(q.format, work_rows(w, lay), broadcast_scales(s.astype(x.dtype), lay),
                           broadcast_scales(s.astype(np.float64), lay), q.rounding, q.overflow,
                           q.nan, rand)
    return from_work(codes, lay), s, from_work(out, lay)


GRANULARITIES = {"tensor": PerTensor(), "channel0": PerChannel(0), "channel1": PerChannel(1),
                 "token": PerToken(), "group32": PerGroup(32), "group8_axis0": PerGroup(8, axis=0)}
RULES = {"absmax": None, "p99": Percentile(99.0), "mse": MSE(grid=10)}


def _x(dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((16, 64)) * np.exp(rng.standard_normal((16, 64)))).astype(dtype)
    x[3, :] = 0.0
    x[4, 5] = -0.0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rule", list(RULES), ids=list(RULES))
@pytest.mark.parametrize("gran", list(GRANULARITIES), ids=list(GRANULARITIES))
def test_quantizer_bit_identical_to_table_reference(monkeypatch, gran, rule, dtype):
    """Codes, scales and fake-quant bits of TorchQuantizer == the numpy-spec reference."""
    q = _quantizer(monkeypatch, GRANULARITIES[gran], RULES[rule])
    x = _x(dtype)
    codes, s, out = _reference(q, x)
    tq = TorchQuantizer(q)
    qt = tq.quantize(torch.from_numpy(x))
    np.testing.assert_array_equal(qt.codes.numpy(), codes)
    np.testing.assert_array_equal(bits_of(qt.scales.reshape(-1)), bits_of(s))
    np.testing.assert_array_equal(bits_of(tq.fake_quantize(torch.from_numpy(x))), bits_of(out))
    np.testing.assert_array_equal(bits_of(tq.dequantize(qt, dtype=torch.from_numpy(x).dtype)), bits_of(out))


@pytest.mark.parametrize("rounding", ["nearest_away", "toward_zero", "stochastic"])
def test_quantizer_roundings_and_nan(monkeypatch, rounding):
    """Other roundings (stochastic: the quantizer's seed, numpy's draws) and nan='zero'."""
    seed = 11 if rounding == "stochastic" else None
    q = _quantizer(monkeypatch, PerGroup(16), rounding=rounding, seed=seed, nan="zero")
    x = _x(np.float32, 1)
    x[2, 7] = np.nan
    codes, s, out = _reference(q, x, seed=seed)
    tq = TorchQuantizer(q)
    np.testing.assert_array_equal(tq.quantize(torch.from_numpy(x)).codes.numpy(), codes)
    np.testing.assert_array_equal(bits_of(tq.fake_quantize(torch.from_numpy(x))), bits_of(out))
    with pytest.raises(FormatError, match="no NaN code"):
        TorchQuantizer(_quantizer(monkeypatch, PerGroup(16))).fake_quantize(torch.from_numpy(x))


def test_fake_quantize_with_quantizer_per_group(monkeypatch):
    """fmtlab.pytorch.fake_quantize(x, Quantizer) per group: forward bits, STE gradient."""
    q = _quantizer(monkeypatch, PerGroup(32))
    x = torch.from_numpy(_x(np.float32, 2)).requires_grad_(True)
    y = fake_quantize(x, q)
    np.testing.assert_array_equal(bits_of(y), bits_of(_reference(q, x.detach().numpy())[2]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_quantize_model_bit_identical(monkeypatch, llama):
    """quantize_model with the table format: a rewired layer computes linear(Q_a(x), Q_w(W), b)
    with the numpy references Q_a (per token) and Q_w (per group of 32), bit for bit."""
    wq, aq = _quantizer(monkeypatch, PerGroup(32)), _quantizer(monkeypatch, PerToken())
    qm, summary = quantize_model(llama, weights=wq, activations=aq)
    assert len(summary) == 14  # 2 layers x (q, k, v, o, gate, up, down); lm_head skipped
    layer = qm.model.layers[1].mlp.down_proj
    x = torch.from_numpy(_x(np.float32, 3)[:, :1].repeat(128, axis=1) * np.linspace(-2, 2, 128,
                         dtype=np.float32)).reshape(1, 16, 128)
    w = layer.linear_weight().detach().numpy()
    want = F.linear(torch.from_numpy(_reference(aq, x[0].numpy())[2]).reshape(x.shape),
                    torch.from_numpy(_reference(wq, w)[2]), layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), want)
        ids = torch.arange(12).reshape(1, 12)
        assert torch.isfinite(qm(ids).logits).all()


def test_registered_core_is_used():
    """A TorchCore registered for a family replaces the table path (here: its encode rule)."""

    @dataclasses.dataclass(frozen=True)
    class Spied(Table3):
        family: ClassVar[str] = "test_table3_spied"

    calls = []

    def enc(x64, fmt, mode, overflow, draws):
        calls.append(x64.numel())
        return torch.zeros(x64.shape, dtype=torch.int32)

    register_handler(Subsystem.TORCH, "test_table3_spied", TorchCore(encode=enc), replace=True)
    assert encode(torch.ones(5), Spied()).tolist() == [0] * 5 and calls == [5]


@pytest.mark.parametrize("name", ["test_table3", "fp8_e4m3", "e4m3_fn_ftz", "int4", "dint4", "log4", "e8m0"])
def test_branch_free_device_path(monkeypatch, name):
    """The branch-free special-value rules (the CUDA / torch.compile path: no nonzero(), no host
    sync) give the CPU path's codes; forced here on the CPU by reporting compilation."""
    fmt = FMT if name == "test_table3" else get_format(name)
    pts = _points(np.float32, fmt)
    want = fmt.encode(pts, nan="zero" if not fmt.has_nan else "raise")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for method in ("auto", "table"):
        got = encode(torch.from_numpy(pts.copy()), fmt, nan="zero" if not fmt.has_nan else "raise",
                     method=method)
        np.testing.assert_array_equal(got.numpy(), want)


BLOCKS = {"mx_floor": (PerBlock(32), None), "mx_ceil_axis0": (PerBlock(16, axis=0), SharedExp("ceil")),
          "fp8_tensor_scale": (PerBlock(16, scale_format="fp8_e4m3", tensor_scale=True), None)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("gran", list(GRANULARITIES) + list(BLOCKS))
def test_matches_numpy_quantizer(gran, dtype):
    """TorchQuantizer == numpy's Quantizer itself (codes, scales, block scale codes, fake-quant
    bits), block formats included, once the numpy Quantizer runs table-only formats."""
    g, rule = BLOCKS.get(gran, (GRANULARITIES.get(gran), None))
    q = Quantizer(FMT, g, rule)
    x = _x(dtype, 4)
    x[1, 2] = np.nan if g == BLOCKS["mx_floor"][0] else x[1, 2]  # an MX NaN block
    tq = TorchQuantizer(q)
    want, got = q.quantize(x), tq.quantize(torch.from_numpy(x))
    np.testing.assert_array_equal(got.codes.numpy(), want.codes)
    np.testing.assert_array_equal(bits_of(got.scales.reshape(-1)), bits_of(want.scales.reshape(-1)))
    if want.scale_codes is not None:
        np.testing.assert_array_equal(got.scale_codes.numpy(), want.scale_codes)
    np.testing.assert_array_equal(bits_of(tq.fake_quantize(torch.from_numpy(x))),
                                  bits_of(q.fake_quantize(x)))


@dataclasses.dataclass(frozen=True)
class NoZero2(Table3):
    """A signed 2-bit table without a zero value (-3, -1, 0.5, 2)."""

    family: ClassVar[str] = "test_nozero2"
    table: tuple = (-3.0, -1.0, 0.5, 2.0)

    @property
    def bits(self) -> int:
        return 2

    @property
    def name(self) -> str:
        return "test_nozero2"

    def _virtual_above(self) -> tuple[float, bool]:
        return 3.5, True

    def _virtual_below(self) -> tuple[float, bool]:
        return -5.0, False


def test_toward_zero_across_zero_takes_smaller_magnitude():
    """TOWARD_ZERO inside L < 0 < U (no zero value) picks the smaller magnitude, U on a tie of
    magnitudes (LookupFormat's rule), on both the table and the device path; the rest of the
    grid truncates as usual; numpy's table kernel follows the same rule."""
    x = torch.tensor([-0.9, -0.1, 0.0, -0.0, 0.2, 0.6, -1.0, 0.5, -3.5, 2.5, -1.5])
    want = [2, 2, 2, 2, 2, 2, 1, 2, 0, 3, 1]  # 0.5 (smaller than |-1|) across zero
    assert encode(x, NoZero2(), "toward_zero").tolist() == want
    assert NoZero2().encode(x.numpy(), "toward_zero").tolist() == want  # numpy's table kernel too
    assert encode(x, NoZero2(), "nearest_even").tolist() == [1, 2, 2, 2, 2, 2, 1, 2, 0, 3, 1]


@pytest.fixture
def my3(monkeypatch):
    """A lookup format defined and registered by the test (8 values, 3 bits; no torch code)."""
    fmt = register_format(LookupFormat([-1.5, -0.75, -0.25, 0.0, 0.2, 0.5, 1.0, 2.0], name="torchpath_my3"))
    yield fmt
    unregister_format(fmt.name)


@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero"])
def test_registered_lookup_format_by_name(my3, rounding):
    """LookupFormat + register_format: fake_quantize(x, "<name>") per tensor and the spec
    "<name>_g32" per group (TorchQuantizer and fake_quantize) are bit-identical to numpy."""
    assert get_format("torchpath_my3") is my3
    x = _x(np.float32, 5) / 3
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(bits_of(fake_quantize(xt, "torchpath_my3", rounding=rounding)),
                                  bits_of(my3.quantize(x, rounding)))
    tq = TorchQuantizer("torchpath_my3_g32", rounding=rounding)
    assert tq.format is my3 and tq.granularity == PerGroup(32)
    codes, s, out = _reference(tq.quantizer, x)
    np.testing.assert_array_equal(tq.quantize(xt).codes.numpy(), codes)
    np.testing.assert_array_equal(bits_of(tq.fake_quantize(xt)), bits_of(out))
    np.testing.assert_array_equal(bits_of(fake_quantize(xt, tq.quantizer)), bits_of(out))


def test_registered_lookup_format_in_quantize_model(my3, llama):
    """quantize_model(weights="<name>_g32", activations="<name>"): a rewired layer computes
    linear(Q_a(x), Q_w(W), b) with the numpy references (activations: absmax per token)."""
    qm, summary = quantize_model(llama, weights="torchpath_my3_g32", activations="torchpath_my3")
    assert len(summary) == 14 and "torchpath_my3" in str(summary)
    layer = qm.model.layers[0].self_attn.q_proj
    x = torch.from_numpy(_x(np.float32, 6)).reshape(1, 16, 64)
    wq, aq = layer.weight_q.quantizer, layer.act_q.quantizer
    assert aq.granularity == PerToken()
    w = layer.linear_weight().detach().numpy()
    want = F.linear(torch.from_numpy(_reference(aq, x[0].numpy())[2]).reshape(x.shape),
                    torch.from_numpy(_reference(wq, w)[2]), layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), want)


def test_minifloat_with_a_new_nan_rule_takes_the_table_path():
    """A minifloat whose NaN sits inside the finite magnitudes (a rule registered here: S.111.000
    is NaN, no -0, no Inf) is declined by the minifloat torch core (``bit_layout`` False) and
    encoded by the table path: codes, fake-quant bits and NaN codes (``fmt.nan_codes``) equal
    numpy, every rounding; a per-group TorchQuantizer equals the numpy-spec reference."""
    from fmtlab.formats import MiniFloat, Overflow, SpecialRule, register_special_rule
    from fmtlab.formats.special import CodePattern, Field, unregister_special_rule

    rule = SpecialRule("torchgap", nan=(CodePattern(Field.ALL_ONES, Field.ZERO),), negative_zero=False,
                       overflow=Overflow.SATURATE, doc="E all ones with M = 0 is NaN; no -0, no Inf")
    register_special_rule(rule)
    try:
        fmt = MiniFloat(3, 3, special=rule)
        assert not fmt.bit_layout and torch_core(fmt) == TorchCore()
        pts = _points(np.float32, fmt)
        for rounding in ROUNDINGS:
            seed = 2 if rounding is Rounding.STOCHASTIC else None
            got = encode(torch.from_numpy(pts.copy()), fmt, rounding, seed=seed)
            np.testing.assert_array_equal(got.numpy(), fmt.encode(pts, rounding, seed=seed))
            np.testing.assert_array_equal(bits_of(quantize(torch.from_numpy(pts.copy()), fmt, rounding, seed=seed)),
                                          bits_of(fmt.quantize(pts, rounding, seed=seed)))
        nan_codes = encode(torch.tensor([float("nan"), -float("nan")]), fmt).tolist()
        assert set(nan_codes) <= fmt.nan_codes and len(set(nan_codes)) == 2
        q = Quantizer(fmt, PerGroup(32))
        x = _x(np.float32, 7)
        codes, s, out = _reference(q, x)
        tq = TorchQuantizer(q)
        np.testing.assert_array_equal(tq.quantize(torch.from_numpy(x)).codes.numpy(), codes)
        np.testing.assert_array_equal(bits_of(tq.fake_quantize(torch.from_numpy(x))), bits_of(out))
    finally:
        unregister_special_rule("torchgap")
