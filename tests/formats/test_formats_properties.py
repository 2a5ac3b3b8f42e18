"""Hypothesis property tests: every family and rounding mode held to the oracle, and the laws.

Laws (each a test below): the kernel equals the oracle; idempotence; monotonicity; sign
symmetry for symmetric formats; TOWARD_ZERO never grows a magnitude; the overflow policy; the
NaN policy; decode(encode(v)) == v for representable v; encode(decode(c)) == c for canonical
codes under every rounding mode; float32/float16 inputs widen exactly.
Examples are deterministic (tests/conftest.py: derandomize=True).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from fmtlab.errors import FormatError
from fmtlab.formats import Overflow, Rounding, get_format
from fmtlab.formats import strategies as fst
from fmtlab.formats.oracle import oracle_encode, oracle_table

pytestmark = pytest.mark.usefixtures("serial_numba")

FAMILIES = ["int", "dint", "log", "minifloat", "e8m0"]
DETERMINISTIC = [Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.TOWARD_ZERO]
SMALL = fst.formats(max_bits=10)


def run(fn):
    """fn() or the FormatError it raises (as the string 'FormatError')."""
    try:
        return fn()
    except FormatError:
        return "FormatError"


def check_against_oracle(fmt, rounding, x, overflow, nan, seed, boundaries):
    rand = np.random.default_rng(seed).random(x.size)
    want = run(lambda: oracle_encode(fmt, x, rounding, overflow, rand=rand, nan=nan, boundaries=boundaries))
    got = run(lambda: fmt.encode(x, rounding, overflow, seed=seed, nan=nan))
    note(f"{fmt} {rounding} overflow={overflow} nan={nan} x={x!r}")
    if isinstance(want, str) or isinstance(got, str):
        assert want == got
        return
    assert got.dtype == fmt.code_dtype and got.shape == x.shape
    bad = np.flatnonzero(want.reshape(-1) != got.reshape(-1))
    assert bad.size == 0, [(x.reshape(-1)[i], int(want.reshape(-1)[i]), int(got.reshape(-1)[i])) for i in bad[:5]]


@pytest.mark.parametrize("rounding", list(Rounding), ids=lambda r: r.value)
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60)
@given(data=st.data())
def test_kernel_matches_oracle(family, rounding, data):
    """fmt.encode == oracle_encode, code for code, for random formats of each family, float32
    and float64 inputs, every overflow and NaN policy."""
    fmt = data.draw(fst.formats(families=[family], max_bits=10), label="fmt")
    width = data.draw(st.sampled_from([32, 64]), label="width")
    x = data.draw(fst.input_arrays(fmt, width), label="x")
    overflow = data.draw(fst.overflows(fmt), label="overflow")
    nan = data.draw(st.sampled_from(["raise", "zero"]), label="nan")
    seed = data.draw(fst.seeds(), label="seed")
    check_against_oracle(fmt, rounding, x, overflow, nan, seed, boundaries_for(fmt))


def boundaries_for(fmt) -> str:
    """Exact midpoints where every midpoint is a float64 (INT, minifloats, E8M0); the kernels'
    float64 boundaries for dINT/log tables, whose levels may be non-dyadic (see test_oracle)."""
    return "format" if fmt.family in ("dint", "log") else "exact"


SIXTEEN = {n: get_format(n) for n in ["fp16", "bf16", "int16", "uint16", "int16_sym", "dint16",
                                      "e5m10_fnuz", "e8m7_fn", "e6m9_fin_b20", "log16_b1.001",
                                      "log12_b1.1_lin"]}  # built once: 16-bit tables take ~50 ms


@pytest.mark.parametrize("name", SIXTEEN)
@settings(max_examples=25)
@given(data=st.data())
def test_kernel_matches_oracle_16_bit(name, data):
    """The same for formats of 11..16 bits (65536-entry tables)."""
    fmt = SIXTEEN[name]
    rounding = data.draw(fst.roundings())
    width = data.draw(st.sampled_from([32, 64]))
    x = data.draw(fst.input_arrays(fmt, width, max_side=24))
    check_against_oracle(fmt, rounding, x, data.draw(fst.overflows(fmt)), "zero", data.draw(fst.seeds()),
                         boundaries_for(fmt))


def finite_codes_equal(a, b, fmt):
    """Codes equal, NaN codes compared by NaN-ness."""
    va, vb = fmt.decode(a), fmt.decode(b)
    nan = np.isnan(va)
    np.testing.assert_array_equal(nan, np.isnan(vb))
    np.testing.assert_array_equal(a[~nan], b[~nan])


@settings(max_examples=150)
@given(fmt=SMALL, rounding=st.sampled_from(DETERMINISTIC), data=st.data())
def test_idempotent(fmt, rounding, data):
    """Quantizing a quantized value changes nothing: encode(decode(encode(x))) == encode(x)."""
    overflow = data.draw(fst.overflows(fmt))
    x = data.draw(fst.input_arrays(fmt, allow_nan=False))
    c = fmt.encode(x, rounding, overflow, nan="zero")
    c2 = fmt.encode(fmt.decode(c), rounding, overflow, nan="zero")
    finite_codes_equal(c, c2, fmt)


@settings(max_examples=150)
@given(fmt=SMALL, rounding=st.sampled_from(DETERMINISTIC), data=st.data())
def test_monotone(fmt, rounding, data):
    """x <= y implies q(x) <= q(y) (saturating overflow; E8M0 on positive inputs)."""
    x = data.draw(fst.input_arrays(fmt, 64, max_dims=1, allow_nan=False)).reshape(-1)
    if fmt.family == "e8m0":  # zero, negative and non-finite inputs are NaN in E8M0
        x = np.abs(x[np.isfinite(x) & (x != 0)])
    x = np.sort(x)
    q = fmt.quantize(x, rounding, overflow="saturate")
    assert np.all((np.diff(q) >= 0) | (q[1:] == q[:-1])), list(zip(x, q))  # -inf, -inf: diff is NaN


def is_symmetric(fmt) -> bool:
    v = fmt.values()
    v = v[np.isfinite(v)]
    return np.array_equal(np.sort(v), np.sort(-v))


@settings(max_examples=150)
@given(fmt=SMALL.filter(is_symmetric), rounding=st.sampled_from(DETERMINISTIC), data=st.data())
def test_sign_symmetric(fmt, rounding, data):
    """For formats whose value set is symmetric: q(-x) == -q(x) (a -0 result where the format has
    -0, else +0); sign-magnitude formats also have code(-x) == code(x) ^ sign bit."""
    x = data.draw(fst.input_arrays(fmt, allow_nan=False))
    a = fmt.encode(x, rounding, "saturate")
    b = fmt.encode(-x, rounding, "saturate")
    qa, qb = fmt.decode(a), fmt.decode(b)
    np.testing.assert_array_equal(qb, -qa)
    if fmt.has_negative_zero:
        np.testing.assert_array_equal(np.signbit(qb[qa == 0]), ~np.signbit(qa[qa == 0]))
    if fmt.family != "int":
        sign = 1 << (fmt.bits - 1)
        nz = qa != 0
        np.testing.assert_array_equal(b[nz], a[nz] ^ sign)


@settings(max_examples=150)
@given(fmt=fst.formats(families=["int", "dint", "log", "minifloat"], max_bits=10), data=st.data())
def test_toward_zero_never_grows(fmt, data):
    """|q(x)| <= |x| under TOWARD_ZERO, whatever the overflow policy (truncation saturates)."""
    x = data.draw(fst.input_arrays(fmt, allow_nan=False)).reshape(-1)
    x = x[np.isfinite(x)]
    q = fmt.quantize(x, "toward_zero", data.draw(fst.overflows(fmt)))
    assert np.all(np.isfinite(q))
    assert np.all(np.abs(q) <= np.abs(x))


@settings(max_examples=150)
@given(fmt=SMALL, rounding=fst.roundings(), data=st.data())
def test_overflow_policy(fmt, rounding, data):
    """Beyond the virtual value past max the result is the policy's code: saturate -> the
    largest value of x's sign, inf -> +/-Inf, nan -> NaN of x's sign; TOWARD_ZERO saturates;
    the default is the format's standard (default_overflow)."""
    t = oracle_table(fmt)
    overflow = data.draw(fst.overflows(fmt))
    factor = data.draw(st.floats(1.0, 8.0))
    negative = data.draw(st.booleans()) and fmt.family != "e8m0"
    if fmt.family == "int" and not fmt.signed and negative:
        x = t.vals[0] * factor
    else:
        x = (t.vals[0] if negative else t.vals[-1]) * factor
    assume_finite = math.isfinite(x)
    if not assume_finite:
        return
    got = int(fmt.encode(np.array([x]), rounding, overflow, seed=1)[0])
    policy = fmt.default_overflow if overflow is None else overflow
    if rounding is Rounding.TOWARD_ZERO and fmt.family != "e8m0":
        policy = Overflow.SATURATE
    if policy is Overflow.SATURATE:
        want = fmt.max_code(negative=x < 0)
    elif policy is Overflow.INF:
        want = fmt.inf_code(negative=x < 0)
    else:
        want = fmt.canonical_nan_code(negative=x < 0)
    assert got == want, (x, hex(got), hex(want))


@settings(max_examples=100)
@given(fmt=SMALL, data=st.data())
def test_nan_policy(fmt, data):
    """NaN gives the format's NaN (with the input's sign where NaNs are signed); a format
    without NaN raises FormatError naming itself, or gives +0 with nan='zero'."""
    rounding = data.draw(fst.roundings())
    x = np.array([np.nan, -np.nan, 1.0])
    if fmt.has_nan:
        c = fmt.encode(x, rounding, seed=0)
        assert c[0] == fmt.canonical_nan_code(False) and c[1] == fmt.canonical_nan_code(True)
        assert np.isnan(fmt.decode(c[:2])).all()
    else:
        with pytest.raises(FormatError, match=str(fmt).replace(".", r"\.")):
            fmt.encode(x, rounding, seed=0)
        c = fmt.encode(x, rounding, seed=0, nan="zero")
        assert c[0] == c[1] == fmt.zero_code


@settings(max_examples=150)
@given(fmt=fst.formats(max_bits=16), data=st.data())
def test_decode_encode_value(fmt, data):
    """decode(encode(v)) == v for every representable v, under every rounding mode; -0.0 keeps
    its sign where the format has -0 and becomes +0 where it does not."""
    v = data.draw(fst.values(fmt))
    rounding = data.draw(fst.roundings())
    c = fmt.encode(np.array([v]), rounding, seed=data.draw(fst.seeds()))
    back = fmt.decode(c)[0]
    assert back == v
    if v == 0:
        assert bool(np.signbit(back)) == (bool(np.signbit(v)) and fmt.has_negative_zero)


@settings(max_examples=150)
@given(fmt=fst.formats(max_bits=16), data=st.data())
def test_encode_decode_code(fmt, data):
    """encode(decode(c)) == c for every canonical code, under every rounding mode and seed,
    from float64 and (where the value fits) float32."""
    c = data.draw(fst.canonical_codes(fmt))
    rounding = data.draw(fst.roundings())
    v = fmt.decode(np.array([c]))
    assert fmt.encode(v, rounding, seed=data.draw(fst.seeds()))[0] == c
    with np.errstate(over="ignore", under="ignore"):
        v32 = v.astype(np.float32)
    if v32[0] == v[0]:
        assert fmt.encode(v32, rounding, seed=0)[0] == c


@settings(max_examples=100)
@given(fmt=SMALL, rounding=fst.roundings(), data=st.data())
def test_input_widths_agree(fmt, rounding, data):
    """float16 and float32 inputs are widened exactly: same codes as their float64 values;
    quantize returns float32 for float32 input and float64 otherwise."""
    x = data.draw(fst.input_arrays(fmt, data.draw(st.sampled_from([16, 32]))))
    seed = data.draw(fst.seeds())
    a = run(lambda: fmt.encode(x, rounding, seed=seed, nan="zero"))
    b = run(lambda: fmt.encode(x.astype(np.float64), rounding, seed=seed, nan="zero"))
    assert isinstance(a, str) == isinstance(b, str)
    if not isinstance(a, str):
        np.testing.assert_array_equal(a, b)
        q = fmt.quantize(x, rounding, seed=seed, nan="zero")
        assert q.dtype == (np.float32 if x.dtype == np.float32 else np.float64)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=80)
@given(data=st.data())
def test_quantize_is_decode_of_encode(family, data):
    """The fused fake-quant path equals decode(encode(x)) in x's dtype, bit for bit (NaN by
    NaN-ness), for every rounding mode, overflow policy and seed."""
    fmt = data.draw(fst.formats(families=[family], max_bits=12))
    width = data.draw(st.sampled_from([32, 64]))
    x = data.draw(fst.input_arrays(fmt, width))
    rounding = data.draw(fst.roundings())
    overflow = data.draw(fst.overflows(fmt))
    seed = data.draw(fst.seeds())
    q = run(lambda: fmt.quantize(x, rounding, overflow, seed=seed, nan="zero"))
    c = run(lambda: fmt.encode(x, rounding, overflow, seed=seed, nan="zero"))
    assert isinstance(q, str) == isinstance(c, str)
    if isinstance(q, str):
        return
    want = fmt.decode(c, dtype=x.dtype)
    assert q.dtype == x.dtype and q.shape == x.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(q), nan)
    uint = np.uint32 if x.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(q[~nan].view(uint), want[~nan].view(uint))
