"""Minifloats ExMy: one parametric spec, named formats as instances that state how they differ.

Value of code (s, E, M) with ``exp_bits`` E bits, ``man_bits`` M bits and ``bias``:
normal (E > 0): (-1)**s * (1 + M / 2**man_bits) * 2**(E - bias);
subnormal (E == 0): (-1)**s * (M / 2**man_bits) * 2**(1 - bias)  (flushed when subnormals=False:
those codes are unused, decode to NaN, and inputs below min_normal round between 0 and min_normal).

Special-value conventions (``special``), following ml_dtypes / LLVM naming:
- "ieee": E all ones is Inf (M = 0) or NaN (M != 0); -0 exists. Overflow default: Inf.
- "fn":   no Inf; only S.1..1.1..1 is NaN; -0 exists (OCP FP8 E4M3). Overflow default: NaN.
- "fnuz": no Inf, no -0; the code 1000..0 is the only NaN; default bias 2**(E-1) (one more).
          Overflow default: NaN.
- "fin":  every code is finite (OCP MX FP6/FP4); -0 exists; no NaN, no Inf. Overflow: saturate.
Defaults follow ml_dtypes' astype (the reference); torch's float8_e4m3fn cast saturates instead,
which is ``overflow="saturate"``.
NaN inputs give the quiet NaN with the input's sign (ieee: exponent all ones, top mantissa bit set,
as ml_dtypes; fn: S.1..1.1..1; fnuz: 0x80). NEAREST_EVEN ties go to mantissa LSB 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import FastKernelRouting, Format
from fmtlab.formats.rounding import Overflow

SPECIALS = ("ieee", "fn", "fnuz", "fin")


@dataclasses.dataclass(frozen=True)
class MiniFloat(FastKernelRouting, Format):
    """Binary floating point with ``exp_bits`` in 1..8 and ``man_bits`` in 0..10 (plus FP16/BF16
    sizes) and a sign bit; see the module docstring for the conventions."""

    exp_bits: int
    man_bits: int
    bias: int | None = None
    special: str = "ieee"
    subnormals: bool = True
    label: str | None = dataclasses.field(default=None, compare=False)

    family = "minifloat"

    def __post_init__(self) -> None:
        e, m = self.exp_bits, self.man_bits
        if not isinstance(e, (int, np.integer)) or not 1 <= e <= 8:
            raise FormatError(f"minifloat exp_bits must be 1..8, got exp_bits={e!r}")
        if not isinstance(m, (int, np.integer)) or not 0 <= m <= 10:
            raise FormatError(f"minifloat man_bits must be 0..10, got man_bits={m!r}")
        if self.special not in SPECIALS:
            raise FormatError(f"special must be one of {SPECIALS}, got special={self.special!r}")
        if self.special == "ieee" and e < 2:
            raise FormatError("an IEEE-like minifloat needs exp_bits >= 2 (one exponent is Inf/NaN)")
        if self.special == "fn" and e + m < 2:
            raise FormatError("an 'fn' minifloat needs exp_bits + man_bits >= 2")
        if self.bias is None:
            default = (1 << (e - 1)) - 1 + (1 if self.special == "fnuz" else 0)
            object.__setattr__(self, "bias", default)
        if not -64 <= int(self.bias) <= 300:
            raise FormatError(f"bias={self.bias!r} is out of the supported range")
        object.__setattr__(self, "bias", int(self.bias))

    # ---- naming ---------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def default_bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1 + (1 if self.special == "fnuz" else 0)

    @property
    def generic_name(self) -> str:
        s = f"e{self.exp_bits}m{self.man_bits}_{self.special}"
        if self.bias != self.default_bias:
            s += f"_b{self.bias}"
        if not self.subnormals:
            s += "_ftz"
        return s

    @property
    def name(self) -> str:
        return self.label or self.generic_name

    # ---- layout ---------------------------------------------------------------------------
    def _build_values(self) -> np.ndarray:
        e, m = self.exp_bits, self.man_bits
        codes = np.arange(1 << self.bits, dtype=np.int64)
        sign = np.where(codes >> (e + m), -1.0, 1.0)
        E = (codes >> m) & ((1 << e) - 1)
        M = codes & ((1 << m) - 1)
        frac = M / float(1 << m)
        mag = np.where(E > 0, np.ldexp(1.0 + frac, (E - self.bias).astype(np.int64)),
                       np.ldexp(frac, 1 - self.bias))
        vals = sign * mag
        emax_field = (1 << e) - 1
        if not self.subnormals:
            vals[(E == 0) & (M != 0)] = np.nan
        if self.special == "ieee":
            vals[(E == emax_field) & (M == 0)] = sign[(E == emax_field) & (M == 0)] * np.inf
            vals[(E == emax_field) & (M != 0)] = np.nan
        elif self.special == "fn":
            vals[(E == emax_field) & (M == (1 << m) - 1)] = np.nan
        elif self.special == "fnuz":
            vals[1 << (e + m)] = np.nan
        return np.where(np.isnan(vals), np.copysign(np.nan, sign), vals)  # NaN keeps its sign bit

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        return (codes & 1) == 0

    def _unused_code_mask(self) -> np.ndarray:
        codes = np.arange(1 << self.bits, dtype=np.int64)
        flushed = ((codes >> self.man_bits) & ((1 << self.exp_bits) - 1) == 0) & \
            (codes & ((1 << self.man_bits) - 1) != 0)
        return flushed if not self.subnormals else np.zeros(codes.shape, dtype=bool)

    def _virtual_above(self) -> tuple[float, bool]:
        # the top binade's spacing continued one step: max + ulp(max)
        mx = float(self.grid_max_raw)
        code = int(self.max_code_raw)
        E = (code >> self.man_bits) & ((1 << self.exp_bits) - 1)
        ulp = np.ldexp(1.0, int(max(E, 1)) - self.bias - self.man_bits)
        return mx + ulp, (code + 1) % 2 == 0

    @property
    def grid_max_raw(self) -> float:
        v = self._values
        return float(np.nanmax(np.where(np.isfinite(v), v, np.nan)))

    @property
    def max_code_raw(self) -> int:
        v = np.where(np.isfinite(self._values), self._values, -np.inf)
        return int(np.argmax(v))

    @property
    def default_overflow(self) -> Overflow:
        return {"ieee": Overflow.INF, "fn": Overflow.NAN, "fnuz": Overflow.NAN,
                "fin": Overflow.SATURATE}[self.special]

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        e, m = self.exp_bits, self.man_bits
        sign = (1 << (e + m)) if negative else 0
        if self.special == "ieee":
            if m == 0:
                return None
            return sign | (((1 << e) - 1) << m) | (1 << (m - 1))
        if self.special == "fn":
            return sign | ((1 << (e + m)) - 1)
        if self.special == "fnuz":
            return 1 << (e + m)
        return None

    def inf_code(self, negative: bool = False) -> int | None:
        if self.special != "ieee":
            return None
        e, m = self.exp_bits, self.man_bits
        return ((1 << (e + m)) if negative else 0) | (((1 << e) - 1) << m)

    @property
    def negative_zero_code(self) -> int | None:
        return None if self.special == "fnuz" else 1 << (self.exp_bits + self.man_bits)

    # ---- facts ----------------------------------------------------------------------------
    @property
    def min_normal(self) -> float:
        return float(np.ldexp(1.0, 1 - self.bias))

    @property
    def smallest_subnormal(self) -> float:
        if not self.subnormals or self.man_bits == 0:
            return self.min_normal
        return float(np.ldexp(1.0, 1 - self.bias - self.man_bits))

    @property
    def eps(self) -> float:
        return float(np.ldexp(1.0, -self.man_bits))
