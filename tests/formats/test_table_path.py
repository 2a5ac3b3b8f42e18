"""The exact table path of the element kernels (fmtlab.formats.kernels) and the KERNEL protocol.

Invariants:
  T1  correctness never waits for speed: every Quantizer granularity, scale rule and rounding gives
      the same codes, scales, zero points, block scale codes and fake-quant bits on the table path
      (``kernels.reference_path()``) as on the fast numba path, for every family with a plan;
  T2  a format without a KERNEL plan (a table-only format defined here) goes through every
      granularity: codes == the table kernel of x / s (x / s in x's precision), fake_quantize ==
      dequantize(quantize) == fl(v * s);
  T3  the kernel choice is the family's registered Subsystem.KERNEL handler (no handler: table);
  T4  ``import fmtlab.formats`` does not import numba; the first kernel use does;
  T5  the cached numba modules record the digest of the cores they compile in.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import (
    MSE, MinMax, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer, Static, get_format,
    get_quantizer,
)
from fmtlab.formats import kernels as KK
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, find_handler, register_handler
from fmtlab.formats.rounding import NanInput, Overflow, Rounding

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _same(a, b) -> bool:
    """Bit-identical arrays (any NaN equals any NaN); None equals None."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    ui = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(ui), b[~nb].view(ui)))


def _data(fmt, dtype, seed=0, shape=(8, 64)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp(rng.standard_normal(shape) * 1.5) * 3
    x = x.astype(dtype)
    x[0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    x[1, 5] = np.nan  # NaN: the format's NaN code, or read as 0 (nan="zero")
    return x


def _both(q: Quantizer, x):
    """(fast, table) results of quantize and fake_quantize."""
    out = []
    for ref in (False, True):
        if ref:
            with KK.reference_path():
                assert KK.params(q.format, q.rounding, q.overflow, NanInput.RAISE) is None
                qt, fq = q.quantize(x), q.fake_quantize(x)
        else:
            qt, fq = q.quantize(x), q.fake_quantize(x)
        out.append((qt, fq))
    return out


def _assert_same(q, x):
    (a, fa), (b, fb) = _both(q, x)
    for field in ("codes", "scales", "zero_points", "scale_codes"):
        assert _same(getattr(a, field), getattr(b, field)), (str(q), q.rounding, x.dtype, field)
    assert a.tensor_scale == b.tensor_scale
    assert _same(fa, fb), (str(q), q.rounding, x.dtype, "fake_quantize")
    assert _same(fa, q.dequantize(a)), (str(q), "I1")


FAMILIES = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "bf16", "e8m7_ieee_b100", "int8", "uint8", "int4",
            "dint4", "dint4_d0.3", "log4", "log8", "log6_b1.01", "log4_b1.4142135623730951"]
F64 = ["fp8_e5m2", "uint8", "dint4", "log4"]  # float64 runs the generic plans (one per family)
GRANULARITIES = [PerTensor(), PerChannel(0), PerChannel(-1), PerToken(), PerGroup(16),
                 PerGroup(4, axis=0)]


@pytest.mark.parametrize("name,dtype", [(n, np.float32) for n in FAMILIES] + [(n, np.float64) for n in F64])
def test_reference_path_matches_fast_path_every_granularity(name, dtype, serial_numba):
    """T1 for every element granularity (RNE), TOWARD_ZERO, STOCHASTIC, MSE, static and pow2
    scales, and minmax zero points for INT: one format per parameter-tuple type (MF, MF1, MFX,
    IN, TBD32, TBD, TBS32, TBS, TBL, TB)."""
    fmt = get_format(name)
    nan = None if fmt.has_nan else "zero"
    x = _data(fmt, dtype)
    assert KK.params(fmt, Rounding.NEAREST_EVEN, fmt.default_overflow, NanInput.ZERO) is not None
    for g in GRANULARITIES:
        _assert_same(Quantizer(fmt, g, nan=nan), x)
    for g in (PerChannel(-1), PerGroup(16)):
        _assert_same(Quantizer(fmt, g, rounding="toward_zero", nan=nan), x)
        _assert_same(Quantizer(fmt, g, rounding="stochastic", seed=7, nan=nan), x)
    _assert_same(Quantizer(fmt, PerGroup(16), MSE(), nan=nan), x)
    _assert_same(Quantizer(fmt, PerTensor(), Static(0.37), rounding="nearest_away", nan=nan), x)
    _assert_same(Quantizer(fmt, PerGroup(8), pow2=True, nan=nan), x)
    if fmt.family == "int":
        for g in (PerToken(), PerChannel(-1)):
            _assert_same(Quantizer(fmt, g, MinMax(), nan=nan), x)
            _assert_same(Quantizer(fmt, g, MinMax(), rounding="stochastic", seed=3, nan=nan), x)


@pytest.mark.parametrize("preset", ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_path_matches_fast_path_blocks(preset, dtype, serial_numba):
    """T1 for block formats: the fused block kernels against scales + the element table path."""
    x = _data(None, dtype, seed=1, shape=(4, 128))
    x[2, 40] = np.inf  # a non-finite block: NaN scale
    for rnd, seed in ((Rounding.NEAREST_EVEN, None), (Rounding.STOCHASTIC, 5)):
        _assert_same(get_quantizer(preset, rounding=rnd, seed=seed), x)


# ---- a table-only format ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Lut3(Format):
    """3-bit lookup format for the tests: codes 0..6 in value order, code 7 unused (NaN)."""

    family = "test_kern_lut"
    table: tuple = (-4.0, -1.5, -0.5, 0.0, 0.25, 1.0, 3.0)

    @property
    def bits(self) -> int:
        return 3

    @property
    def name(self) -> str:
        return "test_lut3"

    def _build_values(self):
        return np.array(list(self.table) + [np.nan])

    def _virtual_above(self):
        return 5.0, False

    def _virtual_below(self):
        return -6.5, False


@pytest.mark.parametrize("g", GRANULARITIES + [PerGroup(32)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_only_format_every_granularity(g, dtype, serial_numba):
    """T2: codes == table kernel of x / s with the quantizer's own scales; I1; values fl(v * s)."""
    fmt = _Lut3()
    assert find_handler(Subsystem.KERNEL, fmt) is None
    x = _data(fmt, dtype)[:, :32]
    for rnd, seed in ((Rounding.NEAREST_EVEN, None), (Rounding.NEAREST_AWAY, None),
                      (Rounding.STOCHASTIC, 11)):
        q = Quantizer(fmt, g, rounding=rnd, seed=seed, nan="zero")
        qt = q.quantize(x)
        s = qt.scales
        sb = _bcast(g, s, x.shape).astype(dtype)
        y = (x / sb).astype(dtype)
        # one draw per element of x in C order (the quantizer permutes x and draws alike)
        rand = np.random.default_rng(seed).random(x.size) if seed is not None else None
        ref = fmt.encode_table(y, rnd, Overflow.SATURATE, NanInput.ZERO, rand).reshape(x.shape)
        np.testing.assert_array_equal(qt.codes, ref)
        fq = q.fake_quantize(x)
        assert _same(fq, q.dequantize(qt))
        want = (fmt.values()[ref.astype(np.intp)] * sb.astype(np.float64)).astype(dtype)
        assert _same(fq, want)
    qm = Quantizer(fmt, g, MSE(), nan="zero")
    assert _same(qm.fake_quantize(x), qm.dequantize(qm.quantize(x)))


def _bcast(g, s, shape):
    nd = len(shape)
    if isinstance(g, PerTensor):
        return s.reshape((1,) * nd)
    if isinstance(g, PerChannel):
        a = g.axis % nd
        return s.reshape(tuple(shape[a] if i == a else 1 for i in range(nd)))
    if isinstance(g, PerToken):
        return s.reshape(shape[:-1] + (1,))
    a = g.axis % nd
    if a == nd - 1:
        return np.repeat(s, g.size, axis=-1)
    return np.repeat(np.moveaxis(s, -1, a), g.size, axis=a)


def test_table_only_format_mx_blocks():
    """T2 for E8M0 blocks of a table-only element format: elements == table kernel of x / X."""
    fmt = _Lut3()
    x = _data(fmt, np.float32, seed=4, shape=(2, 64))
    q = Quantizer(fmt, PerBlock(32), nan="zero")
    qt = q.quantize(x)
    X = np.repeat(qt.scales, 32, axis=-1)
    ref = fmt.encode_table(np.where(np.isnan(x), 0, x) / X, Rounding.NEAREST_EVEN, Overflow.SATURATE,
                           NanInput.ZERO, None).reshape(x.shape)
    np.testing.assert_array_equal(qt.codes, ref)
    assert _same(q.fake_quantize(x), q.dequantize(qt))


def test_table_only_format_refuses_zero_points():
    """Zero points need consecutive integer values (INT); the message names the format."""
    with pytest.raises(FmtlabError, match="test_lut3"):
        Quantizer(_Lut3(), PerToken(), MinMax())


def test_e8m0_is_still_refused_as_element_format():
    """E8M0 has no zero (a data fact): it is a scale format."""
    with pytest.raises(FmtlabError, match="no zero"):
        Quantizer("e8m0")


def test_int_nan_as_zero_with_zero_points():
    """nan='zero' with a zero point reads NaN as x = 0: code z (value 0) on the fast path, the
    table path and the fused fake-quant alike (regression: the fast encode gave code 0 = -z*s)."""
    x = np.array([[np.nan, 1.0, 2.0, 3.0], [np.nan, -1.0, 0.5, 4.0]], np.float32)
    q = Quantizer("uint8", PerToken(), MinMax(), nan="zero")
    qt = q.quantize(x)
    np.testing.assert_array_equal(qt.codes[:, 0], qt.zero_points)
    fq = q.fake_quantize(x)
    assert fq[0, 0] == 0.0 and fq[1, 0] == 0.0
    assert _same(fq, q.dequantize(qt))
    _assert_same(q, x)


# ---- the KERNEL protocol ----------------------------------------------------------------------
def test_kernel_choice_goes_through_the_registry():
    """T3: params asks the family's KERNEL handler; None from the handler means the table path."""
    calls = []

    @dataclasses.dataclass(frozen=True)
    class _Spy(_Lut3):
        family = "test_kern_spy"

    def spy(fmt, inp):
        calls.append((fmt.name, inp.mode))
        return None

    register_handler(Subsystem.KERNEL, "test_kern_spy", spy)
    fmt = _Spy()
    assert KK.params(fmt, Rounding.TOWARD_ZERO, Overflow.SATURATE, NanInput.ZERO) is None
    assert calls == [("test_lut3", 2)]
    x = np.linspace(-5, 5, 64, dtype=np.float32)
    np.testing.assert_array_equal(Quantizer(fmt, PerGroup(16), nan="zero").quantize(x).codes,
                                  Quantizer(_Lut3(), PerGroup(16), nan="zero").quantize(x).codes)
    from fmtlab.formats import kernel_plans

    for fam, h in (("minifloat", kernel_plans.minifloat_plan), ("int", kernel_plans.int_plan),
                   ("dint", kernel_plans.dint_plan), ("log", kernel_plans.log_plan)):
        assert find_handler(Subsystem.KERNEL, fam) is h
    assert find_handler(Subsystem.KERNEL, "e8m0") is None


def test_no_family_switch_in_kernel_choice():
    """T3: kernels.py, kernel_plans.py and quantizer.py choose by registry and data, not family names."""
    here = os.path.join(REPO, "fmtlab", "formats")
    for mod in ("kernels.py", "kernel_plans.py", "quantizer.py"):
        src = open(os.path.join(here, mod)).read()
        assert "family ==" not in src and "family !=" not in src and ".family in" not in src, mod


def test_import_is_numba_free_until_a_kernel_runs():
    """T4 in a fresh interpreter: no numba after ``import fmtlab.formats``; encoding still works."""
    code = ("import sys, numpy as np, fmtlab.formats as F; assert 'numba' not in sys.modules, 'numba'; "
            "c = F.get_format('fp8_e4m3').encode(np.float32([1.0, 448.0, 0.3])); "
            "assert c.tolist() == [0x38, 0x7E, 0x2A], c; "
            "q = F.Quantizer('int8', F.PerGroup(2), F.Static(1.0)).fake_quantize(np.float32([1, -2.5, 3, 400])); "
            "assert q.tolist() == [1, -2, 3, 127], q; assert 'numba' in sys.modules")
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_cached_kernel_modules_record_the_core_digest():
    """T5: numba's cache only sees the defining file, so the cached modules pin the cores' digest
    (a stale digest refuses to import with a message saying what to set)."""
    from fmtlab.formats import _block_kernels, _kernel_params, _layout_kernels

    now = _kernel_params.core_digest()
    assert _layout_kernels.CORE_DIGEST == now and _block_kernels.CORE_DIGEST == now
    with pytest.raises(ImportError, match=f'CORE_DIGEST = "{now}"'):
        _kernel_params.check_core_digest("0" * 16, "_layout_kernels.py")


def test_kernel_modules_are_small():
    """Each kernel module stays under ~500 lines."""
    here = os.path.join(REPO, "fmtlab", "formats")
    for mod in ("_fast_kernels", "_kernel_params", "_mf_cores", "_int_table_cores", "_kernel_dispatch",
                "_layout_kernels", "_block_kernels", "kernels", "kernel_plans", "quantizer"):
        with open(os.path.join(here, mod + ".py")) as f:
            assert sum(1 for _ in f) <= 500, mod


def test_minifloat_with_a_hole_goes_through_the_table_path():
    """A minifloat whose NaN rule leaves a hole among the finite magnitudes (bit_layout False) has
    no kernel plan; a per-group Quantizer encodes it by the table kernel of x / s, bit-exactly."""
    from fmtlab.formats.minifloat import MiniFloat
    from fmtlab.formats.special import (
        CodePattern, Field, SpecialRule, register_special_rule, unregister_special_rule,
    )

    register_special_rule(SpecialRule("kerngap", nan=(CodePattern(Field.ALL_ONES, Field.ZERO),)))
    try:
        fmt = MiniFloat(2, 2, special="kerngap")
        assert not fmt.bit_layout
        assert KK.params(fmt, Rounding.NEAREST_EVEN, fmt.default_overflow, NanInput.RAISE) is None
        x = _data(fmt, np.float32)[:, :32]
        q = Quantizer(fmt, PerGroup(16))
        qt = q.quantize(x)
        sb = np.repeat(qt.scales, 16, axis=-1)
        ref = fmt.encode_table((x / sb).astype(np.float32), Rounding.NEAREST_EVEN,
                               fmt.default_overflow, NanInput.RAISE, None).reshape(x.shape)
        np.testing.assert_array_equal(qt.codes, ref)
        assert _same(q.fake_quantize(x), q.dequantize(qt))
    finally:
        unregister_special_rule("kerngap")
