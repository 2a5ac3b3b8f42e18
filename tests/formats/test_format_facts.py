"""Special-value facts published as data: ``nan_codes``, ``inf_codes``, ``unused_codes``.

Invariants (every format): nan_codes, inf_codes and unused_codes are disjoint; together they are
exactly the codes whose value is not finite; a NaN code's value is NaN, an Inf code's value is
+/-Inf; has_nan == bool(nan_codes), has_inf == bool(inf_codes); the codes encode() gives for NaN
and Inf inputs are members of the sets. Hand-checked tables pin the standard formats' sets.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.formats import get_format, list_formats

EXTRA = ["e4m3_ieee", "e5m2_fn", "e3m2_fnuz", "e4m3_fn_ftz", "e5m2_ieee_ftz", "e4m0_ieee", "log4_nz",
         "dint4_nz", "uint4"]

# name -> (nan codes, inf codes), hand-derived from each format's layout comment
TABLE = {
    "fp8_e4m3": ({0x7F, 0xFF}, set()),                      # S.1111.111, no Inf (OCP OFP8)
    "fp8_e5m2": (set(range(0x7D, 0x80)) | set(range(0xFD, 0x100)), {0x7C, 0xFC}),  # IEEE-like
    "fp8_e4m3fnuz": ({0x80}, set()),                        # only 1000.0000 is NaN
    "fp8_e5m2fnuz": ({0x80}, set()),
    "fp4_e2m1": (set(), set()),                             # all codes finite (OCP MX)
    "e8m0": ({0xFF}, set()),
    "int8": (set(), set()),
    "int8_sym": (set(), set()),
    "fp16": (set(range(0x7C01, 0x8000)) | set(range(0xFC01, 0x10000)), {0x7C00, 0xFC00}),
}


@pytest.mark.parametrize("name", list_formats() + EXTRA)
def test_facts_partition_the_non_finite_codes(name):
    f = get_format(name)
    v = f.values()
    nan, inf, unused = f.nan_codes, f.inf_codes, f.unused_codes
    assert isinstance(nan, frozenset) and isinstance(inf, frozenset)
    assert not (nan & inf) and not (nan & unused) and not (inf & unused)
    assert nan | inf | unused == set(np.flatnonzero(~np.isfinite(v)).tolist())
    assert all(np.isnan(v[c]) for c in nan) and all(np.isinf(v[c]) for c in inf)
    assert f.has_nan == bool(nan) and f.has_inf == bool(inf)
    if f.has_nan:
        assert f.canonical_nan_code(False) in nan and f.canonical_nan_code(True) in nan
    if f.has_inf:
        assert {f.inf_code(False), f.inf_code(True)} - {None} == inf  # unsigned: no -Inf
        assert f.inf_code(False) is not None
        assert v[f.inf_code(False)] == np.inf
        assert (v[f.inf_code(True)] == -np.inf) if f.signed else f.inf_code(True) is None
    # unused codes are never produced: the canonical (producible) codes avoid them
    assert not set(f.canonical_codes.tolist()) & unused


@pytest.mark.parametrize("name", sorted(TABLE))
def test_facts_of_standard_formats(name):
    nan, inf = TABLE[name]
    f = get_format(name)
    assert f.nan_codes == nan and f.inf_codes == inf


def test_unused_codes_by_family():
    """int8_sym's 0x80, dINT/log -0 slots, and flushed subnormals are unused, not NaN."""
    assert get_format("int8_sym").unused_codes == {0x80}
    assert get_format("dint4").unused_codes == {0x8} and get_format("dint4_nz").unused_codes == set()
    assert get_format("log4").unused_codes == {0x8}
    ftz = get_format("e4m3_fn_ftz")
    assert ftz.unused_codes == {c | s for c in range(1, 8) for s in (0, 0x80)}
    assert ftz.nan_codes == {0x7F, 0xFF}


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "e8m0", "fp16"])
def test_encode_of_specials_lands_in_the_sets(name):
    f = get_format(name)
    codes = f.encode(np.array([np.nan, -np.nan, np.inf, -np.inf]), overflow="saturate" if not f.has_inf else None)
    assert set(codes[:2].tolist()) <= f.nan_codes
    if f.has_inf:
        assert set(codes[2:].tolist()) <= f.inf_codes
