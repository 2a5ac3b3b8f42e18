"""Format names parse both ways; unknown names fail with a clear FormatError."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings

from fmtlab.errors import FormatError
from fmtlab.formats import DInt, E8M0, Format, IntFormat, LogFormat, MiniFloat, get_format, list_formats
from fmtlab.formats import strategies as fst

BRIEF_NAMES = ["int2", "int4", "int8", "int16", "uint8", "int4_sym", "int8_sym", "dint4", "dint8", "log4",
               "log4_b1.4142135623730951", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz",
               "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "e8m0", "fp16", "bf16"]


@pytest.mark.parametrize("name", list_formats())
def test_standard_names_round_trip(name):
    f = get_format(name)
    assert isinstance(f, Format) and str(f) == name and get_format(str(f)) == f


def test_brief_names_are_listed():
    assert set(BRIEF_NAMES) <= set(list_formats())


@settings(max_examples=300)
@given(fst.formats(max_bits=16))
def test_any_format_round_trips(fmt):
    """get_format(str(fmt)) == fmt for every member of every family (generic names)."""
    back = get_format(str(fmt))
    assert back == fmt and str(back) == str(fmt) and hash(back) == hash(fmt)


@pytest.mark.parametrize("alias,name", [
    ("fp8_e4m3fn", "fp8_e4m3"), ("float8_e4m3fn", "fp8_e4m3"), ("E4M3", "fp8_e4m3"),
    ("float8_e5m2", "fp8_e5m2"), ("float8_e4m3fnuz", "fp8_e4m3fnuz"), ("float8_e5m2fnuz", "fp8_e5m2fnuz"),
    ("fp6_e3m2fn", "fp6_e3m2"), ("fp6_e2m3fn", "fp6_e2m3"), ("fp4", "fp4_e2m1"), ("e2m1", "fp4_e2m1"),
    ("float16", "fp16"), ("half", "fp16"), ("bfloat16", "bf16"), ("float8_e8m0fnu", "e8m0"),
    ("  INT8 ", "int8")])
def test_aliases(alias, name):
    assert get_format(alias) == get_format(name)


@pytest.mark.parametrize("name,fmt", [
    ("e4m3_fn", MiniFloat(4, 3, special="fn")), ("e4m3_fnuz_b11", MiniFloat(4, 3, 11, "fnuz")),
    ("e5m2_ieee_ftz", MiniFloat(5, 2, subnormals=False)), ("e2m1_fin_b-1", MiniFloat(2, 1, -1, "fin")),
    ("uint5", IntFormat(5, unsigned=True)), ("int7_sym", IntFormat(7, narrow=True)),
    ("dint6_d0.25_0.5_nz", DInt(6, (0.25, 0.5), True)), ("dint4_d", DInt(4, ())),
    ("log5_b1.5_lin_u0.001_nz", LogFormat(5, 1.5, "linear", 0.001, True)), ("e8m0", E8M0())])
def test_generic_grammar(name, fmt):
    assert get_format(name) == fmt and str(fmt) == name


@pytest.mark.parametrize("bad", ["fp9", "int", "int1", "int17", "uint4_sym", "e9m2_ieee", "e1m2_ieee",
                                 "log4_b0.5", "dint2", "fp8", "", "e4m3_xyz"])
def test_unknown_names_raise(bad):
    with pytest.raises(FormatError) as err:
        get_format(bad)
    assert str(err.value)


def test_unknown_name_lists_known():
    with pytest.raises(FormatError, match=r"unknown format 'fp9'.*fp8_e4m3"):
        get_format("fp9")


def test_passthrough_and_type_errors():
    f = get_format("fp8_e4m3")
    assert get_format(f) is f
    with pytest.raises(TypeError):
        get_format(8)


def test_formats_are_immutable_values():
    f = get_format("int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.nbits = 4
    assert {get_format("int8"), IntFormat(8)} == {f}
    v = f.values()
    v[:] = 0  # values() returns a copy
    assert f.values()[1] == 1.0
    with pytest.raises(ValueError):
        f.grid.vals[0] = 0.0  # the cached tables are read-only


def test_decode_validates_codes():
    f = get_format("fp4_e2m1")
    with pytest.raises(FormatError, match=r"\[0, 16\)"):
        f.decode(np.array([16]))
    with pytest.raises(FormatError):
        f.decode(np.array([-1]))
    with pytest.raises(TypeError, match="integer"):
        f.decode(np.array([1.0]))
    with pytest.raises(TypeError, match="complex"):
        f.encode(np.array([1j]))
    with pytest.raises(ValueError, match="unknown rounding"):
        f.encode([1.0], rounding="up")
