"""Bit-exact against ml_dtypes (codes compared as integers) for every format ml_dtypes has.

Inputs: every code decoded; >= 10**6 float32 inputs per format from ``bulk_inputs`` (every
value, midpoint and both float32 neighbours of each, the under/overflow thresholds, every
float16 and bfloat16 bit pattern, random bit patterns with NaN/Inf/subnormals, log-uniform
values over the range). Known, documented deviations (each pinned by a test below):
- formats without NaN (fp6/fp4): ml_dtypes maps NaN to a zero code; fmtlab raises FormatError
  by default and gives +0 with nan="zero" (same value, the code may differ in the sign bit);
- NaN payloads: float16/bfloat16 casts keep part of a NaN's payload; fmtlab gives the quiet NaN
  of the input's sign (0x7E00/0xFE00, 0x7FC0/0xFFC0); the NaN-ness and sign agree;
Version quirks are detected at run time (``peers.py``), never asserted as truth: ml_dtypes <= 0.6
converts float64 inputs through float32 (double rounding) and gives E8M0 code 1 to every
2**-127 < x < 2**-126; ml_dtypes 0.7 rounds once and to the nearest power of two, as fmtlab and
the oracle do. Where the installed version deviates, the tests check that fmtlab equals the oracle
on exactly those inputs and record the deviation as a warning naming the version.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import get_format
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.strategies import bulk_inputs
from peers import e8m0_quirk_mask, ml_dtypes_double_rounds, note_quirk

N_BULK = 1_000_000


def assert_codes_equal(ours: np.ndarray, theirs: np.ndarray, x: np.ndarray, what: str) -> None:
    ours = np.asarray(ours).astype(np.int64)
    theirs = np.asarray(theirs).astype(np.int64)
    bad = np.flatnonzero(ours != theirs)
    if bad.size:
        show = ", ".join(f"{x[i]!r} -> ours {ours[i]:#x} theirs {theirs[i]:#x}" for i in bad[:8])
        pytest.fail(f"{what}: {bad.size} of {x.size} codes differ: {show}")


def split_quirks(fmt, x: np.ndarray) -> np.ndarray:
    """Mask of inputs where the installed ml_dtypes has a known deviation from the oracle for
    ``fmt`` (see peers.py); fmtlab is held to the oracle on them, and they are left out of the
    bit-exact peer comparison."""
    if fmt.family != "e8m0":
        return np.zeros(x.shape, dtype=bool)
    quirk = e8m0_quirk_mask(x)
    if quirk.any():
        xq = x[quirk][:: max(1, int(quirk.sum()) // 300)]
        np.testing.assert_array_equal(fmt.encode(xq), oracle_encode(fmt, xq))
        note_quirk("E8M0 gives code 1 to every 2**-127 < x < 2**-126", int(quirk.sum()), x.size)
    return quirk


def peer_codes(x: np.ndarray, dt, bits: int) -> np.ndarray:
    """ml_dtypes' codes for x (its sub-byte types occupy one byte each)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dt).view(np.uint8 if bits <= 8 else np.uint16)


def test_finfo_matches(ml_pair):
    """max, min, smallest normal/subnormal, eps and the bit layout agree with ml_dtypes.finfo;
    for signed minifloats nmant + nexp + 1 == bits (ml_dtypes' finfo_test invariant)."""
    fmt, dt = ml_pair
    fi = ml_dtypes.finfo(dt)
    assert fmt.bits == fi.bits
    assert fmt.max == float(fi.max)
    assert fmt.min == float(fi.min)
    assert fmt.min_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.eps == float(fi.eps)
    if fmt.family == "minifloat":
        assert (fmt.exp_bits, fmt.man_bits) == (fi.nexp, fi.nmant)
        assert fi.nmant + fi.nexp + 1 == fi.bits
    # special-value policy: ml_dtypes has Inf iff casting inf gives inf
    with np.errstate(over="ignore", invalid="ignore"):
        inf_back = np.array([np.inf], np.float32).astype(dt).astype(np.float32)[0]
        nan_back = np.array([np.nan], np.float32).astype(dt).astype(np.float32)[0]
    assert fmt.has_inf == bool(np.isinf(inf_back))
    assert fmt.has_nan == bool(np.isnan(nan_back))


def test_decode_every_code_bit_exact(ml_pair):
    """decode(c) as float32 has the bits ml_dtypes gives for every code (NaNs: NaN-ness and
    sign; fmtlab decodes every NaN code to the quiet NaN of its sign, without payload)."""
    fmt, dt = ml_pair
    codes = np.arange(1 << fmt.bits, dtype=np.uint8 if fmt.bits <= 8 else np.uint16)
    theirs = codes.view(dt).astype(np.float32)
    ours = fmt.decode(codes, dtype=np.float32)
    nan = np.isnan(theirs)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(np.signbit(ours[nan]), np.signbit(theirs[nan]))
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


def test_encode_every_code_value(ml_pair):
    """Every code's value (float32) encodes to the code ml_dtypes gives for it."""
    fmt, dt = ml_pair
    x = fmt.decode(np.arange(1 << fmt.bits), dtype=np.float32)
    x = x[~np.isnan(x)]
    assert_codes_equal(fmt.encode(x), peer_codes(x, dt, fmt.bits), x, f"{fmt} codes")


def test_encode_bulk_float32_bit_exact(ml_pair):
    """>= 10**6 float32 inputs hitting ties, subnormals, the thresholds, NaN and Inf."""
    fmt, dt = ml_pair
    x = bulk_inputs(fmt, N_BULK, seed=fmt.bits)
    assert x.size >= N_BULK and x.dtype == np.float32
    theirs = peer_codes(x, dt, fmt.bits)
    nan = np.isnan(x)
    assert nan.sum() > 100 and np.isinf(x).sum() > 2
    quirk = split_quirks(fmt, x)
    x, theirs, nan = x[~quirk], theirs[~quirk], nan[~quirk]
    if fmt.has_nan:
        ours = fmt.encode(x)
        assert_codes_equal(ours[~nan], theirs[~nan], x[~nan], f"{fmt} bulk (non-NaN)")
        # NaN inputs: fmtlab gives the canonical quiet NaN of the input's sign; float16 and
        # bfloat16 casts keep (part of) the payload, the 8-bit types use one NaN code per sign
        assert np.all(np.isnan(fmt.decode(ours[nan])))
        assert np.all(np.isnan(fmt.decode(theirs[nan])))
        if fmt.canonical_nan_code(True) != fmt.canonical_nan_code(False):  # signed NaNs
            np.testing.assert_array_equal(np.signbit(fmt.decode(ours[nan])), np.signbit(x[nan]))
        if fmt.bits == 8:
            assert_codes_equal(ours[nan], theirs[nan], x[nan], f"{fmt} NaN codes")
        return
    assert_codes_equal(fmt.encode(x[~nan]), theirs[~nan], x[~nan], f"{fmt} bulk (non-NaN)")
    with pytest.raises(FormatError, match=str(fmt)):
        fmt.encode(x[nan][:3])
    # documented deviation: ml_dtypes gives a zero code (of either sign); nan="zero" gives +0
    zero = fmt.encode(x[nan], nan="zero")
    assert np.all(zero == fmt.zero_code)
    assert np.all(fmt.decode(theirs[nan]) == 0.0)


def test_float64_inputs_exact_in_float32_match(ml_pair):
    """float64 inputs that float32 holds exactly: identical to ml_dtypes' cast from float64."""
    fmt, dt = ml_pair
    with np.errstate(invalid="ignore"):
        x = bulk_inputs(fmt, 200_000, seed=3).astype(np.float64)
    x = x[~np.isnan(x)]  # NaN handling is compared in the float32 bulk test
    x = x[~split_quirks(fmt, x)]
    assert_codes_equal(fmt.encode(x), peer_codes(x, dt, fmt.bits), x, f"{fmt} float64")


def test_float64_rounds_once(ml_pair):
    """fmtlab rounds float64 inputs once, as the exact oracle: on the float64 neighbours of every
    boundary, fmtlab == oracle wherever rounding through float32 would give another code (the
    double-rounding cases) and on a sample of the rest. ml_dtypes is compared bit-exactly if it
    rounds once (>= 0.7; numpy's float16 cast always does); a double-rounding ml_dtypes (<= 0.6)
    must equal fmtlab-through-float32 instead, and the deviation is recorded as a warning."""
    fmt, dt = ml_pair
    x = bulk_inputs(fmt, 200_000, seed=4, dtype=np.float64)
    x = x[~np.isnan(x)]
    ours = fmt.encode(x)
    with np.errstate(over="ignore"):
        via32 = fmt.encode(x.astype(np.float32))
    double = np.flatnonzero(ours != via32)
    assert double.size > 0, "expected some double-rounding cases among the float64 neighbours"
    sample = np.concatenate([double[:: max(1, double.size // 300)], np.arange(0, x.size, x.size // 300)])
    np.testing.assert_array_equal(oracle_encode(fmt, x[sample]), ours[sample])
    keep = ~split_quirks(fmt, x)
    x, ours, via32 = x[keep], ours[keep], via32[keep]
    theirs = peer_codes(x, dt, fmt.bits)
    if dt is np.float16 or not ml_dtypes_double_rounds():
        assert_codes_equal(ours, theirs, x, f"{fmt} from float64 (peer rounds once)")
        return
    assert_codes_equal(via32, theirs, x, f"{fmt}: double-rounding ml_dtypes == fmtlab through float32")
    note_quirk("float64 inputs are rounded through float32", int((ours != theirs).sum()), x.size)


def test_double_rounding_example():
    """x = 1.0625 + 2**-30 is just above the midpoint of 1.0 and 1.125 in fp8_e4m3: rounded
    once it is 1.125 (0x39, fmtlab and the oracle); through float32 it becomes 1.0625, a tie, which
    goes to the even 1.0 (0x38). ml_dtypes 0.7 gives 0x39, ml_dtypes <= 0.6 gave 0x38 (the probe
    of peers.ml_dtypes_double_rounds). bf16 shows the same with 1 + 2**-8 + 2**-30."""
    fmt = get_format("fp8_e4m3")
    x = np.array([1.0625 + 2.0 ** -30])
    assert fmt.encode(x)[0] == 0x39
    assert fmt.encode(x.astype(np.float32))[0] == 0x38
    assert oracle_encode(fmt, x)[0] == 0x39
    peer = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)[0]
    assert peer == (0x38 if ml_dtypes_double_rounds() else 0x39)
    bf = get_format("bf16")
    y = np.array([1 + 2.0 ** -8 + 2.0 ** -30])
    assert bf.encode(y)[0] == 0x3F81 and bf.encode(y.astype(np.float32))[0] == 0x3F80
    assert oracle_encode(bf, y)[0] == 0x3F81


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 3, 4)])
def test_shapes_match(ml_pair, shape):
    """Codes keep the input's shape (0-d and empty included) and use the format's code dtype."""
    fmt, dt = ml_pair
    x = np.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    c = fmt.encode(x)
    assert c.shape == x.shape and c.dtype == fmt.code_dtype
    np.testing.assert_array_equal(c, peer_codes(x, dt, fmt.bits))


def test_ml_dtypes_arrays_are_inputs(ml_pair):
    """An array of the peer dtype itself is accepted (widened exactly): encoding ml_dtypes'
    own values gives back their codes (NaNs: a NaN code)."""
    fmt, dt = ml_pair
    codes = np.arange(1 << fmt.bits, dtype=np.uint8 if fmt.bits <= 8 else np.uint16)
    arr = codes.view(dt)
    got = fmt.encode(arr)
    nan = np.isnan(arr.astype(np.float32))
    np.testing.assert_array_equal(got[~nan], codes[~nan])
    assert np.isnan(fmt.decode(got[nan])).all()
