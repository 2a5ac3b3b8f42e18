"""The bit-accurate datapath against independent slow references (Python ints and Fractions).

Invariants:
- integer units: the accumulator equals the exact sum reduced step by step (wrap: mod 2^W into
  [-2^(W-1), 2^(W-1)); saturate: clamped), and the overflow count is the number of such steps;
- float accumulators: every step is round(acc + w*a) with ONE rounding of the exact rational
  value (an FMA), nearest-even or toward zero, subnormals kept, Inf on overflow;
- Kulisch: the exact sum of the products (wrapped to the register width);
- MX: per block, round(scale_w * scale_a * exact block sum), then round(acc + that).
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format
from fmtlab.hw.datapath import (bits_to_float, dot, float_to_bits, mac_step, matvec, mx_dot,
                                wrap_int)
from fmtlab.hw.mac import make_unit
from fmtlab.hw.accumulators import AccRounding
from fmtlab.hw.operands import FloatAcc, fixed_view

# ------------------------------------------------------------------------------------------
# slow references
# ------------------------------------------------------------------------------------------


def ref_round(q: Fraction, man_bits: int, exp_bits: int, rtz: bool = False) -> float:
    """Round an exact rational to an IEEE-like binary format (subnormals, Inf on overflow)."""
    bias = (1 << (exp_bits - 1)) - 1
    emin, emax = 1 - bias, (1 << exp_bits) - 2 - bias
    if q == 0:
        return 0.0
    neg = q < 0
    a = -q if neg else q
    t = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** t > a:
        t -= 1
    ulp_exp = max(t, emin) - man_bits
    scaled = a / Fraction(2) ** ulp_exp
    fl = scaled.numerator // scaled.denominator
    rem = scaled - fl
    if rtz:
        r = fl
    elif rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        r = fl + 1
    else:
        r = fl
    maxf = (2 - Fraction(1, 1 << man_bits)) * Fraction(2) ** emax
    v = Fraction(r) * Fraction(2) ** ulp_exp
    if v > maxf:
        res = float(maxf) if rtz else math.inf
    else:
        res = float(v)
    return -res if neg else res


def ref_fp_dot(wv, av, acc: FloatAcc, init: float = 0.0) -> float:
    """Sequential single-rounding accumulation on exact rationals."""
    s = init
    for x, y in zip(wv, av):
        with np.errstate(invalid="ignore"):
            p = float(x) * float(y)
        if math.isnan(s) or math.isnan(p):
            s = math.nan
        elif math.isinf(s) or math.isinf(p):
            s = s + p
        else:
            s = ref_round(Fraction(s) + Fraction(x) * Fraction(y), acc.man_bits, acc.exp_bits,
                          acc.rounding is AccRounding.TOWARD_ZERO)
    return s


def same(a: float, b: float) -> bool:
    """Bit-level equality of floats (NaN == NaN, +0 != -0)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


# ------------------------------------------------------------------------------------------
# integer accumulation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w,a,width", [("int8", "int8", 16), ("int4", "int8", 12), ("dint4", "int8", 14),
                                       ("log4", "int8", 16), ("log4", "log4", 14), ("uint4", "int4", 8)])
@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
def test_integer_accumulation_matches_python_ints(w, a, width, overflow):
    rng = np.random.default_rng(1)
    fw, fa = get_format(w), get_format(a)
    W = rng.integers(0, 1 << fw.bits, (16, 300))
    X = rng.integers(0, 1 << fa.bits, 300)
    r = dot(W, X, w, a, f"int{width}", overflow=overflow)
    lw, la = fixed_view(fw).lut, fixed_view(fa).lut
    unit = 2.0 ** -(fixed_view(fw).frac + fixed_view(fa).frac)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    for i in range(16):
        acc = ovf = exact = 0
        for k in range(300):
            p = int(lw[W[i, k]]) * int(la[X[k]])
            exact += p
            s = acc + p
            if not lo <= s <= hi:
                ovf += 1
                s = (hi if s > 0 else lo) if overflow == "saturate" else ((s - lo) % (1 << width)) + lo
            acc = s
        assert r.raw[i] == acc and r.overflows[i] == ovf
        assert r.value[i] == acc * unit and r.exact[i] == exact * unit
    assert r.overflows.sum() > 0  # the widths above are chosen to overflow


def test_int32_int8_matvec_is_exact():
    rng = np.random.default_rng(2)
    W = rng.integers(0, 256, (64, 512)).astype(np.uint8)
    x = rng.integers(0, 256, 512).astype(np.uint8)
    r = matvec(W, x, "int8", "int8", "int32")
    ref = W.astype(np.int8).astype(np.int64) @ x.astype(np.int8).astype(np.int64)
    assert (r.raw == ref).all() and (r.overflows == 0).all()
    assert r.summary()["max_abs_error"] == 0.0


def test_wrap_int():
    assert wrap_int(np.array([128, -129, 127]), 8).tolist() == [-128, 127, 127]


# ------------------------------------------------------------------------------------------
# float accumulation
# ------------------------------------------------------------------------------------------


def test_fp8_into_fp32_equals_numpy_float32_loop():
    """FP8 products are exact in fp32, so fp32 accumulation is numpy's float32 addition."""
    rng = np.random.default_rng(3)
    f = get_format("fp8_e4m3")
    W = f.encode(rng.standard_normal((8, 2000)) * 4)
    x = f.encode(rng.standard_normal(2000))
    r = dot(W, x, "fp8_e4m3", "fp8_e4m3", "fp32")
    wv, xv = f.decode(W).astype(np.float32), f.decode(x).astype(np.float32)
    for i in range(8):
        acc = np.float32(0)
        for k in range(2000):
            acc = np.float32(acc + wv[i, k] * xv[k])
        assert r.value[i] == float(acc)
    assert (r.raw == np.float32(r.value).view(np.uint32)).all()


finite_bf16 = st.integers(0, 0xFFFF).filter(lambda c: (c >> 7) & 0xFF != 0xFF)


@settings(max_examples=300)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_bf16_fma_into_fp32_matches_exact_rounding(cw, ca, acc_bits):
    """bf16 x bf16 + fp32 with one rounding (products can lie far below fp32's range)."""
    unit = make_unit("bf16", "bf16", "fp32")
    acc = FloatAcc()
    got = mac_step(unit, np.array([acc_bits], np.uint64), np.array([cw]), np.array([ca]))[0]
    bf = get_format("bf16")
    a0 = float(bits_to_float(np.array([acc_bits], np.uint64), acc)[0])
    want = ref_fp_dot([bf.decode(np.array([cw]))[0]], [bf.decode(np.array([ca]))[0]], acc, a0)
    assert same(float(bits_to_float(np.array([got], np.uint64), acc)[0]), want)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=40), st.data(),
       st.sampled_from(["bf16", "fp16", "e5m7", "bf16_rtz", "fp16_rtz", "e4m3"]))
def test_fp8_into_narrow_accumulators_matches_exact_rounding(wc, data, accname):
    ac = data.draw(st.lists(st.integers(0, 255), min_size=len(wc), max_size=len(wc)))
    f = get_format("fp8_e5m2")
    r = dot(np.array(wc), np.array(ac), "fp8_e5m2", "fp8_e5m2", accname)
    unit = make_unit("fp8_e5m2", "fp8_e5m2", accname)
    want = ref_fp_dot(f.decode(np.array(wc)), f.decode(np.array(ac)), unit.accumulator)
    assert same(float(r.value), want)


def test_specials_and_overflow_counting():
    f = get_format("fp8_e5m2")
    big = f.encode(np.array([57344.0]))[0]
    r = dot(np.array([big] * 4), np.array([big] * 4), "fp8_e5m2", "fp8_e5m2", "fp16")
    assert math.isinf(r.value) and r.overflows == 1
    inf, ninf, nan = f.encode(np.array([np.inf, -np.inf, np.nan]))
    one = f.encode(np.array([1.0]))[0]
    assert math.isnan(dot(np.array([inf, ninf]), np.array([one, one]), "fp8_e5m2", "fp8_e5m2", "fp32").value)
    assert math.isnan(dot(np.array([nan]), np.array([one]), "fp8_e5m2", "fp8_e5m2", "fp32").value)
    assert dot(np.array([inf]), np.array([one]), "fp8_e5m2", "fp8_e5m2", "fp32").value == math.inf
    z = f.encode(np.array([0.0]))[0]
    assert math.isnan(dot(np.array([inf]), np.array([z]), "fp8_e5m2", "fp8_e5m2", "fp32").value)


def test_rounding_toward_zero_loses_more_than_nearest():
    rng = np.random.default_rng(4)
    f = get_format("fp8_e4m3")
    W = f.encode(np.abs(rng.standard_normal((16, 1024))))
    x = f.encode(np.abs(rng.standard_normal(1024)))
    rn = dot(W, x, "fp8_e4m3", "fp8_e4m3", "bf16")
    rz = dot(W, x, "fp8_e4m3", "fp8_e4m3", "bf16_rtz")
    assert (rz.value <= rn.exact).all()
    assert rz.summary()["mean_rel_error"] > rn.summary()["mean_rel_error"]


def test_float_bits_roundtrip_fp32_and_generic():
    v = np.array([1.0, -2.5, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4e38], dtype=np.float32).astype(float)
    b = float_to_bits(v, FloatAcc())
    assert (b == v.astype(np.float32).view(np.uint32)).all()
    assert (bits_to_float(b, FloatAcc()) == v).all()
    assert float_to_bits(np.array([np.nan]), FloatAcc())[0] == 0x7FC00000
    acc = FloatAcc(5, 7)
    codes = np.arange(1 << 13, dtype=np.uint64)
    vals = bits_to_float(codes, acc)
    fin = np.isfinite(vals)
    assert (float_to_bits(vals[fin], acc) == codes[fin]).all()


# ------------------------------------------------------------------------------------------
# Kulisch and MX
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e3m2"])
def test_kulisch_is_exact(fmt):
    rng = np.random.default_rng(5)
    f = get_format(fmt)
    vals = f.values()
    ok = np.flatnonzero(np.isfinite(vals))
    W = rng.choice(ok, (6, 700))
    x = rng.choice(ok, 700)
    r = dot(W, x, fmt, fmt, "kulisch")
    for i in range(6):
        exact = sum(Fraction(float(vals[a])) * Fraction(float(vals[b])) for a, b in zip(W[i], x))
        assert r.value[i] == float(exact) and r.exact[i] == float(exact)
    assert (r.overflows == 0).all() and r.summary()["max_abs_error"] == 0.0


def test_kulisch_register_wraps_when_guard_bits_run_out():
    f = get_format("fp4_e2m1")
    six = f.encode(np.array([6.0]))[0]
    r = dot(np.full(64, six), np.full(64, six), "fp4_e2m1", "fp4_e2m1", "kulisch2")
    assert r.overflows == 1 and r.value != r.exact == 64 * 36.0


def mx_reference(w, a, sw, sa, el: str, block: int) -> float:
    f = get_format(el)
    vw, va = f.decode(w), f.decode(a)
    acc = 0.0
    for b in range(len(w) // block):
        s = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in
                zip(vw[b * block:(b + 1) * block], va[b * block:(b + 1) * block]))
        if sw[b] == 255 or sa[b] == 255:
            bv = math.nan
        else:
            bv = ref_round(s * Fraction(2) ** (int(sw[b]) + int(sa[b]) - 254), 23, 8)
        acc = ref_fp_dot([bv], [1.0], FloatAcc(), acc) if not math.isnan(bv) else math.nan
    return acc


@pytest.mark.parametrize("el,name", [("fp8_e4m3", "mxfp8"), ("fp4_e2m1", "mxfp4"), ("fp8_e5m2", "mxfp8_e5m2")])
def test_mx_dot_matches_reference(el, name):
    rng = np.random.default_rng(6)
    f = get_format(el)
    ok = np.flatnonzero(np.isfinite(f.values()))
    for trial in range(6):
        w = rng.choice(ok, 128)
        a = rng.choice(ok, 128)
        sw = rng.integers(100, 150, 4)
        sa = rng.integers(100, 150, 4)
        if trial == 5:
            sw[2] = 255
        r = mx_dot(w, a, sw, sa, name, name, "fp32")
        assert same(float(r.value), mx_reference(w, a, sw, sa, el, 32))


def test_mx_exact_reference_is_the_scaled_sum():
    f = get_format("fp8_e4m3")
    rng = np.random.default_rng(7)
    w = f.encode(rng.standard_normal((3, 64)))
    a = f.encode(rng.standard_normal(64))
    sw = np.array([[127, 130]] * 3)
    sa = np.array([126, 127])
    r = mx_dot(w, a, sw, sa, "mxfp8", "mxfp8")
    vw, va = f.decode(w), f.decode(a)
    ex = (vw[:, :32] @ va[:32]) * 2.0 ** (127 + 126 - 254) + (vw[:, 32:] @ va[32:]) * 2.0 ** (130 + 127 - 254)
    assert np.allclose(r.exact, ex, rtol=1e-12)
    assert r.summary()["max_rel_error"] < 1e-6


# ------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------


def test_shapes_broadcast_and_validation():
    rng = np.random.default_rng(8)
    W = rng.integers(0, 256, (2, 3, 10))
    x = rng.integers(0, 256, 10)
    r = dot(W, x, "int8", "int8")
    assert r.value.shape == (2, 3) and r.accumulator == "int32"
    with pytest.raises(FmtlabError, match="codes must lie"):
        dot(np.array([256]), np.array([1]), "int8", "int8")
    with pytest.raises(TypeError):
        dot(np.array([1.5]), np.array([1]), "int8", "int8")
    with pytest.raises(FmtlabError, match="reduction lengths"):
        dot(np.zeros(3, int), np.zeros(4, int), "int8", "int8")
    with pytest.raises(FmtlabError, match="mx_dot"):
        dot(np.zeros(32, int), np.zeros(32, int), "mxfp8", "mxfp8")
    with pytest.raises(FmtlabError, match="multiple of the block"):
        mx_dot(np.zeros(30, int), np.zeros(30, int), np.zeros(1, int), np.zeros(1, int))
    with pytest.raises(FmtlabError, match="matvec"):
        matvec(np.zeros(3, int), np.zeros(3, int), "int8", "int8")


def test_init_accumulator():
    r = dot(np.array([1, 2]), np.array([3, 4]), "int8", "int8", "int32", init=100)
    assert r.value == 100 + 3 + 8
    f = get_format("fp8_e4m3")
    c = f.encode(np.array([1.0, 2.0]))
    assert dot(c, c, "fp8_e4m3", "fp8_e4m3", "fp32", init=0.5).value == 5.5


def test_fp32_fast_path_equals_the_general_kernel():
    """dot_float32 (plain float32 adds) is held bit-identical to the round-to-odd path."""
    from fmtlab.hw import dp_kernels as K
    from fmtlab.hw.datapath import float_tables, products_exact_in_fp32
    from fmtlab.hw.operands import view

    rng = np.random.default_rng(9)
    for fmt in ("fp8_e4m3", "fp8_e5m2", "fp16"):
        v = view(get_format(fmt))
        assert products_exact_in_fp32(v, v, FloatAcc())
        W = rng.integers(0, 1 << v.bits, (32, 500)).astype(np.uint8 if v.bits <= 8 else np.uint16)
        x = rng.integers(0, 1 << v.bits, (1, 500)).astype(W.dtype)
        val = float_tables(v)[0]
        a0 = np.zeros(32)
        out, ovf = np.empty(32), np.empty(32, np.int64)
        K.dot_float(W, x, val, val, 23, -126, 127, False, False, a0, out, ovf)
        out32, ovf32 = np.empty(32, np.float32), np.empty(32, np.int64)
        K.dot_float32(W, x, val.astype(np.float32), val.astype(np.float32), a0.astype(np.float32), out32, ovf32)
        assert (float_to_bits(out, FloatAcc()) == float_to_bits(out32.astype(float), FloatAcc())).all()
        assert (ovf == ovf32).all()
    assert not products_exact_in_fp32(view(get_format("bf16")), view(get_format("bf16")), FloatAcc())


def test_float64_exact_reference_matches_the_limb_kernel_bit_for_bit():
    """fp8_e4m3 x fp8_e4m3 (K < 2^17) takes the float64-sum exact reference instead of the limb
    kernel: every pair of codes (NaN included) and random K = 576 rows give the same float64 bits."""
    from fmtlab.hw import datapath as D
    from fmtlab.hw import dp_kernels as K

    u = make_unit("fp8_e4m3", "fp8_e4m3", "fp32")
    vw, va = D.view(u.weight), D.view(u.activation)
    tw, tx = D.float_tables(vw), D.float_tables(va)
    rng = np.random.default_rng(1)
    a, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    cases = [(a.reshape(-1, 1), b.reshape(-1, 1)),
             (rng.integers(0, 256, (200, 576)), rng.integers(0, 256, (200, 576))),
             (rng.integers(0, 127, (50, 576)), rng.integers(0, 127, (1, 576)))]
    for W, X in cases:
        W, X = np.ascontiguousarray(W, np.int64), np.ascontiguousarray(X, np.int64)
        assert D._sum_exact_in_f64(vw, va, W.shape[1])
        m = W.shape[0]
        ex, wr, ov, sp = np.empty(m), np.empty(m), np.empty(m, np.int64), np.empty(m)
        K.dot_exact_float(W, X, tw[1], tw[2], tx[1], tx[2], tw[0], tx[0], vw.lsb_min + va.lsb_min,
                          D._nlimbs(vw, va, W.shape[1], 0), 0, ex, wr, ov, sp)
        ref = np.where(sp != 0, sp, ex)
        got = D._exact_float_f64(W, X, *tw, *tx, vw.lsb_min, va.lsb_min)
        assert np.array_equal(ref.view(np.uint64), got.view(np.uint64))
    assert not D._sum_exact_in_f64(D.view(make_unit("fp8_e5m2", "fp8_e5m2", "fp32").weight),
                                   D.view(make_unit("fp8_e5m2", "fp8_e5m2", "fp32").activation), 576)
