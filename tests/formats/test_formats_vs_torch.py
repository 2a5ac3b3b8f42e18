"""Bit-exact against torch's casts (codes compared as integers) on >= 10**6 float32 inputs.

Conventions that differ from fmtlab's (and ml_dtypes') defaults, each pinned here:
- torch.float8_e4m3fn saturates finite overflow and +/-Inf to +/-448: fmtlab's
  overflow="saturate" (fmtlab's default follows ml_dtypes/OCP: overflow -> NaN);
- torch.float8_e5m2 encodes NaN as 0x7F/0xFF, fmtlab (and ml_dtypes) as 0x7E/0xFE: both are
  NaN codes of the input's sign, so NaN inputs are compared by NaN-ness and sign;
- torch.float16/bfloat16 keep NaN payloads or use 0xFFFF: compared by NaN-ness;
- torch.float8_e8m0fnu encodes |x| (negative inputs lose their sign) and 0 as 2**-127 (code 0);
  fmtlab and ml_dtypes give NaN (0xFF) for zero and negative inputs; positive inputs agree, except
  where torch's version has the "above_half" subnormal rule (torch 2.13: every 2**-127 < x < 2**-126
  gives code 1, as ml_dtypes <= 0.6), detected at run time by peers.torch_e8m0_subnormal_rule and
  checked against the oracle instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmtlab.formats import get_format
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.strategies import bulk_inputs
from peers import e8m0_quirk_mask, note_quirk, torch_e8m0_subnormal_rule

N_BULK = 1_000_000


def torch_codes(x: np.ndarray, dt: torch.dtype, bits: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(dt)
    if bits <= 8:
        return t.view(torch.uint8).numpy()
    return t.view(torch.int16).numpy().view(np.uint16)


def assert_same(ours, theirs, x, what):
    bad = np.flatnonzero(ours.astype(np.int64) != theirs.astype(np.int64))
    if bad.size:
        show = ", ".join(f"{x[i]!r}: ours {ours[i]:#x} torch {theirs[i]:#x}" for i in bad[:8])
        pytest.fail(f"{what}: {bad.size} of {x.size} codes differ: {show}")


def test_bulk_float32_bit_exact(torch_triple):
    fmt, dt, overflow = torch_triple
    x = bulk_inputs(fmt, N_BULK, seed=11)
    assert x.size >= N_BULK
    ours = fmt.encode(x, overflow=overflow)
    theirs = torch_codes(x, dt, fmt.bits)
    nan = np.isnan(x)
    assert_same(ours[~nan], theirs[~nan], x[~nan], f"{fmt} vs {dt} (non-NaN)")
    assert np.all(np.isnan(fmt.decode(theirs[nan]))) and np.all(np.isnan(fmt.decode(ours[nan])))
    if fmt.name in ("fp8_e4m3", "fp8_e4m3fnuz", "fp8_e5m2fnuz"):
        assert_same(ours[nan], theirs[nan], x[nan], f"{fmt} NaN codes")
    if fmt.name == "fp8_e5m2":
        np.testing.assert_array_equal(theirs[nan] & 0x80, ours[nan] & 0x80)  # same sign


def test_torch_e4m3fn_saturates_and_default_does_not():
    """The torch e4m3fn cast is fmtlab's overflow='saturate'; the OCP/ml_dtypes default gives
    NaN for finite overflow and Inf."""
    fmt = get_format("fp8_e4m3")
    x = np.array([464.0, 465.0, 1e6, np.inf, -np.inf, -1e6], dtype=np.float32)
    theirs = torch_codes(x, torch.float8_e4m3fn, 8)
    np.testing.assert_array_equal(theirs, [0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0xFE])
    np.testing.assert_array_equal(fmt.encode(x, overflow="saturate"), theirs)
    np.testing.assert_array_equal(fmt.encode(x), [0x7E, 0x7F, 0x7F, 0x7F, 0xFF, 0xFF])


def test_torch_e5m2_nan_code_differs():
    fmt = get_format("fp8_e5m2")
    x = np.array([np.nan, -np.nan], dtype=np.float32)
    np.testing.assert_array_equal(torch_codes(x, torch.float8_e5m2, 8), [0x7F, 0xFF])
    np.testing.assert_array_equal(fmt.encode(x), [0x7E, 0xFE])


def test_torch_e8m0_positive_inputs_agree_sign_and_zero_differ():
    fmt = get_format("e8m0")
    x = bulk_inputs(fmt, 300_000, seed=12)
    theirs = torch_codes(x, torch.float8_e8m0fnu, 8)
    ours = fmt.encode(x)
    rule = torch_e8m0_subnormal_rule()
    quirk = e8m0_quirk_mask(x, rule)
    if quirk.any():
        assert np.all(theirs[quirk] == 1)
        np.testing.assert_array_equal(ours[quirk], oracle_encode(fmt, x[quirk]))
        note_quirk("E8M0 gives code 1 to every 2**-127 < x < 2**-126", int(quirk.sum()), x.size,
                   peer=f"torch {torch.__version__}")
    pos = np.isfinite(x) & (x > 0) & ~quirk
    assert_same(ours[pos], theirs[pos], x[pos], "e8m0 positive finite")
    neg = np.isfinite(x) & (x < 0)
    negq = neg & ~e8m0_quirk_mask(-x, rule)
    np.testing.assert_array_equal(theirs[negq], fmt.encode(-x[negq]))  # torch drops the sign
    assert np.all(ours[neg] == 0xFF) and np.all(ours[x == 0] == 0xFF)
    assert np.all(theirs[x == 0] == 0)
    assert np.all(theirs[~np.isfinite(x)] == 0xFF) and np.all(ours[~np.isfinite(x)] == 0xFF)
