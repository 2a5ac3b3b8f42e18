"""Bit casts between IEEE floats and their integer patterns, as numba intrinsics.

Numeric convention: a pure reinterpretation (LLVM ``bitcast``), no rounding, no NaN quieting.
numba widens integer arithmetic to int64, so the casts accept any integer type and keep its low
32 / 64 bits::

    float32  | s | eeeeeeee | mmmmmmmmmmmmmmmmmmmmmmm |   f32_bits -> int64 in [0, 2**32)
             31  30      23  22                      0
    float64  | s | eeeeeeeeeee | m (52 bits)          |   f64_bits -> int64 (the sign bit is bit 63)
             63  62         52  51                   0

Kernels mask the sign off before doing arithmetic on a float64 pattern, so the sign of the int64
never matters.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["f32_bits", "bits_f32", "f64_bits", "bits_f64"]


def _fit(builder, value, from_width: int, to_width: int):
    if from_width > to_width:
        return builder.trunc(value, ir.IntType(to_width))
    if from_width < to_width:
        return builder.zext(value, ir.IntType(to_width))
    return value


@intrinsic
def f32_bits(typingctx, x):
    """The 32-bit pattern of a float32, zero-extended to int64."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def bits_f32(typingctx, x):
    """The float32 whose pattern is the low 32 bits of the integer ``x``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(_fit(builder, args[0], x.bitwidth, 32), ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def f64_bits(typingctx, x):
    """The 64-bit pattern of a float64 as int64 (bit 63 is the sign)."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def bits_f64(typingctx, x):
    """The float64 whose pattern is the low 64 bits of the integer ``x``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(_fit(builder, args[0], x.bitwidth, 64), ir.DoubleType())

    return types.float64(x), codegen
