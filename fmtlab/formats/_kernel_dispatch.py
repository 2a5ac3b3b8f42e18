"""Compile-time dispatch of the element cores on the parameter tuple's type.

``elem_code(P, T, x64, r, z)``: one code from a float64 input, any rounding (-1: NaN without a
NaN code). ``elem_fq(P, T, V, y, z)``: the element value of float32 or float64 y (RNE/RNA/TZ).
Inside numba each resolves (``numba.extending.overload``) to the family's core for the type of P,
so each (family, dtype) pair compiles once. A new family with a fast kernel adds its parameter
tuple to ``_kernel_params``, its cores in a new module, and one branch to each overload here.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from fmtlab.formats._int_table_cores import (
    dint_fq32, dint_fq32f, int_code, int_fq32, int_fq64, log_fq32, small_fq, small_fq32, tb_code,
    tb_fq,
)
from fmtlab.formats._kernel_params import IN, MF, MF1, MFX, TB, TBD, TBD32, TBL, TBS, TBS32
from fmtlab.formats._mf_cores import mf1_fq32, mf_code, mf_fq32, mf_fq64

__all__ = ["elem_code", "elem_fq"]


# ---------------------------------------------------------------------------------------------
# Compile-time dispatch on the parameter tuple's type
# ---------------------------------------------------------------------------------------------
def elem_code(P, T, x, r, z):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


def elem_fq(P, T, V, y, z):  # pragma: no cover
    raise NotImplementedError


def _is(P, cls) -> bool:
    return isinstance(P, types.BaseNamedTuple) and P.instance_class is cls


@overload(elem_code)
def _ov_code(P, T, x, r, z):
    if _is(P, MF) or _is(P, MFX) or _is(P, MF1):
        return lambda P, T, x, r, z: mf_code(P, x, r)
    if _is(P, IN):
        return lambda P, T, x, r, z: int_code(P, x, r, z)
    if _is(P, TB) or _is(P, TBD) or _is(P, TBL) or _is(P, TBS) or _is(P, TBS32) or _is(P, TBD32):
        return lambda P, T, x, r, z: tb_code(P, T, x, r)


@overload(elem_fq)
def _ov_fq(P, T, V, y, z):
    f32 = y == types.float32
    if _is(P, MF):
        if f32:
            return lambda P, T, V, y, z: mf_fq32(P, y)
        return lambda P, T, V, y, z: mf_fq64(P, V, y)
    if _is(P, MFX):
        return lambda P, T, V, y, z: mf_fq64(P, V, np.float64(y))
    if _is(P, MF1):
        if f32:
            return lambda P, T, V, y, z: mf1_fq32(P, y)
        return lambda P, T, V, y, z: mf_fq64(P, V, y)
    if _is(P, IN):
        if f32:
            return lambda P, T, V, y, z: int_fq32(P, y, z)
        return lambda P, T, V, y, z: int_fq64(P, y, z)
    if _is(P, TB):
        return lambda P, T, V, y, z: tb_fq(P, T, y)
    if _is(P, TBD):
        if f32:
            return lambda P, T, V, y, z: dint_fq32(P, y)
        return lambda P, T, V, y, z: tb_fq(P, T, y)
    if _is(P, TBL):
        if f32:
            return lambda P, T, V, y, z: log_fq32(P, T, y)
        return lambda P, T, V, y, z: tb_fq(P, T, y)
    if _is(P, TBS):
        return lambda P, T, V, y, z: small_fq(P, y)
    if _is(P, TBS32):
        if f32:
            return lambda P, T, V, y, z: small_fq32(P, y)
        return lambda P, T, V, y, z: tb_fq(P, T, y)
    if _is(P, TBD32):
        if f32:
            return lambda P, T, V, y, z: dint_fq32f(P, y)
        return lambda P, T, V, y, z: tb_fq(P, T, y)

