"""Arithmetic fast paths for minifloats and INT formats (deterministic roundings only); the
``fmtlab.pytorch.cores`` MINIFLOAT and INT handlers are built from these functions.

They compute the same codes as the table path (``encoding.table_codes``) for in-range
inputs; the caller then applies the shared range / Inf / NaN / -0 overrides, so every special
case keeps a single implementation. Tests hold both paths bit-identical to the numba kernel.

Minifloat ExMy with bias b, subnormals on (sign-magnitude, a = |x|):

    e  = clamp(floor(log2 a), 1 - b, E_top)        exponent of a's binade (subnormals: 1 - b)
    y  = a * 2**(M - e)                             exact (power-of-two scaling, normal result)
    k  = round(y)  (RNE: torch.round; AWAY: trunc + (frac >= 0.5); TOWARD_ZERO: trunc)
    |code| = ((e + b - 1) << M) + k                 k == 2**(M+1) carries into the next binade

    bits of a float32:  s | eeeeeeee | mmmmmmmmmmmmmmmmmmmmmmm   floor(log2 a) = eeeeeeee - 127
    (float32 subnormals read -127, which the clamp at 1 - b >= -125 absorbs; float64: 11/52, 1023)

A magnitude code above the largest finite one means overflow. Ties of the table kernel go to the
code with LSB 0; adjacent minifloat magnitudes have adjacent codes, so "even k" is that rule
when M >= 1 (base = (e + b - 1) << M is even); M == 0 tests the parity of base + k itself.
INT: round(x) by the same three rules, clamped to [min, max], code = value mod 2**bits.
The work dtype is float32/int32 for float32 input when every scale factor and the grid ends are
exact float32 numbers, else float64/int64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fmtlab.formats import Format, IntFormat, MiniFloat, Rounding, get_format


def _round(y: torch.Tensor, mode: Rounding) -> torch.Tensor:
    """Round non-negative ``y`` to an integer (still floating) by ``mode``."""
    if mode is Rounding.NEAREST_EVEN:
        return torch.round(y)
    t = torch.trunc(y)
    if mode is Rounding.TOWARD_ZERO:
        return t
    return t + ((y - t) >= 0.5).to(y.dtype)  # y - t is exact (|y| < 2**53)


def _work_dtype(fmt: Format, x_dtype: torch.dtype) -> torch.dtype:
    if x_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float64
    g = fmt.grid
    if isinstance(fmt, MiniFloat):
        e_top = _e_top(fmt)
        ok = (fmt.man_bits + fmt.bias <= 127 and fmt.man_bits - e_top >= -125
              and all(float(np.float32(v)) == v for v in (g.vals[0], g.vals[-1])))
    else:
        ok = abs(g.vals[-1]) < 2.0 ** 24 and abs(g.vals[0]) < 2.0 ** 24
    return torch.float32 if ok else torch.float64


def _e_top(fmt: Format) -> int:
    """floor(log2(virtual top of the grid))."""
    return math.frexp(float(fmt.grid.vals[-1]))[1] - 1


def eligible(fmt: Format, mode: Rounding) -> bool:
    """True where a fast path exists for ``fmt`` and ``mode``."""
    if mode is Rounding.STOCHASTIC:
        return False
    if isinstance(fmt, MiniFloat):
        return fmt.subnormals
    return isinstance(fmt, IntFormat)


def encode_core(x: torch.Tensor, neg: torch.Tensor, fmt: Format, mode: Rounding,
                sp: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int32, flat) for in-range finite inputs, and ``x`` in the work dtype (flat).

    Out-of-range, infinite and NaN inputs get arbitrary codes here (the caller overrides them).
    """
    wd = _work_dtype(fmt, x.dtype)
    xw = x.detach().reshape(-1).to(wd)
    g = fmt.grid
    hi = float(g.vals[-1])
    if isinstance(fmt, IntFormat):
        lo_v, hi_v = float(g.vals[1]), float(g.vals[-2])
        a = xw.abs()
        v = torch.copysign(_round(a, mode), xw).clamp(lo_v, hi_v).to(torch.int32)
        return v & ((1 << fmt.bits) - 1), xw
    assert isinstance(fmt, MiniFloat)
    m, b = fmt.man_bits, fmt.bias
    a = xw.abs()
    a = torch.where(a < hi, a, hi)  # also maps NaN / Inf to hi (overridden later)
    if wd == torch.float32:
        it, shift, ebias, emask = torch.int32, 23, 127, 0xFF
    else:
        it, shift, ebias, emask = torch.int64, 52, 1023, 0x7FF
    e = ((a.view(it) >> shift) & emask) - ebias
    e_top = _e_top(fmt)
    e = e.clamp(1 - b, e_top)
    scale = ((m - e + ebias).to(it) << shift).view(wd)  # 2**(m - e), a normal number
    y = a * scale
    base = (e.to(torch.int32) + (b - 1)) << m
    if m == 0 and mode is Rounding.NEAREST_EVEN:
        # no mantissa: the tie between 2**e and 2**(e+1) goes to the even *code* base + k
        t = torch.trunc(y)
        f = y - t
        k = t.to(torch.int32)
        k = k + ((f > 0.5) | ((f == 0.5) & (((base + k) & 1) == 1))).to(torch.int32)
    else:
        k = _round(y, mode).to(torch.int32)
    mag = base + k
    max_mag = fmt.max_code(False)
    sign = 1 << (fmt.bits - 1)
    over = mag > max_mag
    tz = mode is Rounding.TOWARD_ZERO
    c = torch.where(neg, mag | sign, mag)
    c = torch.where(over, torch.where(neg, sp[7] if tz else sp[5], sp[6] if tz else sp[4]), c)
    zero = sp[9] if sp[9] >= 0 else sp[8]
    c = torch.where((mag == 0) & neg, zero, c)
    return c, xw


# ---- torch cast twins -----------------------------------------------------------------------
# Formats whose torch dtype rounds float32 to nearest-even exactly as the table does for every
# input strictly inside (-max, max): then x.to(twin) gives the codes (and x.to(twin).float() the
# values) and only |x| >= max, NaN and +/-Inf need the table rules (CPU, eager; tests hold it).
_TWIN_NAMES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2",
               "fp8_e4m3fnuz": "float8_e4m3fnuz", "fp8_e5m2fnuz": "float8_e5m2fnuz",
               "fp16": "float16", "bf16": "bfloat16"}
_TWINS: dict[Format, torch.dtype] | None = None


def torch_twin(fmt: Format, mode: Rounding, x: torch.Tensor) -> torch.dtype | None:
    """The torch dtype that encodes ``fmt`` for ``x`` in-range (see above), or None."""
    global _TWINS
    if (mode is not Rounding.NEAREST_EVEN or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or torch.compiler.is_compiling()):
        return None
    if _TWINS is None:
        _TWINS = {get_format(n): getattr(torch, t) for n, t in _TWIN_NAMES.items() if hasattr(torch, t)}
    return _TWINS.get(fmt)


def special_index(xw: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Flat indices of the elements a twin cast must not decide: |x| >= max, NaN, +/-Inf."""
    return (~(xw.abs() < fmt.max)).nonzero().squeeze(1)


def int_values(x: torch.Tensor, fmt: IntFormat, mode: Rounding, nan_zero: bool) -> torch.Tensor:
    """Fused INT fake-quant values in x's float dtype (float32/float64), no codes:
    clamp(round(x), min, max) + 0.0 (one zero: -0 -> +0); Inf saturates; NaN -> 0 with
    nan='zero' (the caller raises for nan='raise'). Equals values[encode(x)] bit for bit."""
    a = x.abs()
    v = torch.copysign(_round(a, mode), x).clamp(float(fmt.min), float(fmt.max)) + 0.0
    if nan_zero:
        v = torch.nan_to_num(v, nan=0.0, posinf=float(fmt.max), neginf=float(fmt.min))
    return v


def int_shifted(y: torch.Tensor, fmt: IntFormat, mode: Rounding, z: torch.Tensor,
                draws: torch.Tensor | None) -> torch.Tensor:
    """q = clamp(round(y), min - z, max - z) in float64: INT rounding on the grid shifted by -z
    (integer zero points z; the numba INT kernel with a zero point). STOCHASTIC: up iff
    draw < y - floor(y)."""
    y64 = y.to(torch.float64)
    if mode is Rounding.STOCHASTIC:
        L = torch.floor(y64)
        q = torch.where(draws.reshape(y.shape) < (y64 - L), L + 1.0, L)
    elif mode is Rounding.NEAREST_EVEN:
        q = torch.round(y64)
    elif mode is Rounding.NEAREST_AWAY:
        t = torch.trunc(y64)
        q = torch.where((y64 - t).abs() >= 0.5, t + torch.sign(y64), t)
    else:
        q = torch.trunc(y64)
    z64 = z.to(torch.float64)
    return torch.minimum(torch.maximum(q, fmt.min - z64), fmt.max - z64)
