"""Minifloats ExMy: one parametric spec, named formats as instances that state how they differ.

Value of code (s, E, M) with ``exp_bits`` E bits, ``man_bits`` M bits and ``bias``:
normal (E > 0): (-1)**s * (1 + M / 2**man_bits) * 2**(E - bias);
subnormal (E == 0): (-1)**s * (M / 2**man_bits) * 2**(1 - bias)  (flushed when subnormals=False:
those codes are unused, decode to NaN, and inputs below min_normal round between 0 and min_normal).

Special-value conventions are data: ``special`` is a :class:`~fmtlab.formats.special.SpecialRule`
(built-ins ``Special.IEEE/FN/FNUZ/FIN``, or any rule registered with ``register_special_rule``);
a name string ("fn") is resolved to the registered rule. The rule says which codes are NaN / Inf,
whether -0 exists (if not, that code is unused unless it is the NaN), the default bias offset
(fnuz: +1), the default overflow and the canonical NaN. Built-ins, following ml_dtypes / LLVM:
- "ieee": E all ones is Inf (M = 0) or NaN (M != 0); -0 exists. Overflow default: Inf.
- "fn":   no Inf; only S.1..1.1..1 is NaN; -0 exists (OCP FP8 E4M3). Overflow default: NaN.
- "fnuz": no Inf, no -0; the code 1000..0 is the only NaN; default bias 2**(E-1) (one more).
          Overflow default: NaN.
- "fin":  every code finite (OCP MX FP6/FP4); -0 exists; no NaN, no Inf. Overflow: saturate.
Defaults follow ml_dtypes' astype (the reference); torch's float8_e4m3fn cast saturates instead,
which is ``overflow="saturate"``.
NaN inputs give the rule's canonical NaN with the input's sign (ieee: exponent all ones, top
mantissa bit set, as ml_dtypes; fn: S.1..1.1..1; fnuz: 0x80). NEAREST_EVEN ties go to mantissa
LSB 0. A rule whose NaN/Inf codes leave a hole among the finite magnitudes (e.g. NaN = S.111.000)
is encoded by the exact table kernel (``bit_layout`` is False), never by the bit-trick kernel.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.kernels import FastKernelRouting
from fmtlab.formats.capabilities import Subsystem, register_handler
from fmtlab.formats.rounding import Overflow
from fmtlab.formats.special import SpecialRule, get_special_rule

#: names of the built-in special rules (``special_rule_names()`` lists registered ones too)
SPECIALS = ("ieee", "fn", "fnuz", "fin")


@dataclasses.dataclass(frozen=True)
class MiniFloat(FastKernelRouting, Format):
    """Binary floating point with ``exp_bits`` in 1..8 and ``man_bits`` in 0..10 (plus FP16/BF16
    sizes) and a sign bit; see the module docstring for the conventions."""

    exp_bits: int
    man_bits: int
    bias: int | None = None
    special: SpecialRule | str = "ieee"
    subnormals: bool = True
    label: str | None = dataclasses.field(default=None, compare=False)

    family = "minifloat"

    def __post_init__(self) -> None:
        e, m = self.exp_bits, self.man_bits
        if not isinstance(e, (int, np.integer)) or not 1 <= e <= 8:
            raise FormatError(f"minifloat exp_bits must be 1..8, got exp_bits={e!r}")
        if not isinstance(m, (int, np.integer)) or not 0 <= m <= 10:
            raise FormatError(f"minifloat man_bits must be 0..10, got man_bits={m!r}")
        rule = get_special_rule(self.special)
        object.__setattr__(self, "special", rule)
        rule.check(int(e), int(m))
        if self.bias is None:
            object.__setattr__(self, "bias", rule.default_bias(e))
        if not -64 <= int(self.bias) <= 300:
            raise FormatError(f"bias={self.bias!r} is out of the supported range")
        object.__setattr__(self, "bias", int(self.bias))

    # ---- naming ---------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def default_bias(self) -> int:
        return self.special.default_bias(self.exp_bits)

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

    @property
    def bit_fields(self) -> tuple[int, ...]:
        return (1, self.exp_bits, self.man_bits) if self.man_bits else (1, self.exp_bits)

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
        rc = self.special.codes(e, m)
        if not self.subnormals:
            vals[(E == 0) & (M != 0)] = np.nan
        vals[rc.inf] = sign[rc.inf] * np.inf
        vals[rc.nan | rc.unused] = np.nan
        return np.where(np.isnan(vals), np.copysign(np.nan, sign), vals)  # NaN keeps its sign bit

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        return (codes & 1) == 0

    def _unused_code_mask(self) -> np.ndarray:
        codes = np.arange(1 << self.bits, dtype=np.int64)
        rc = self.special.codes(self.exp_bits, self.man_bits)
        flushed = ((codes >> self.man_bits) & ((1 << self.exp_bits) - 1) == 0) & \
            (codes & ((1 << self.man_bits) - 1) != 0) & (not self.subnormals)
        return (flushed | rc.unused) & ~rc.nan

    @cached_property
    def bit_layout(self) -> bool:
        """True if every magnitude code 0 .. max's magnitude code is finite (a flushed subnormal
        or an unused -0 aside) and NEAREST_EVEN ties can be read off float32/float64 bits: the
        layout the bit-trick kernels assume. With man_bits = 0 the tie bit is the exponent LSB,
        whose parity matches the float's only for an odd bias (e2m0_fn_b2 ties 0.75 to 0.5,
        the oracle to 1.0). False sends encode and quantize to the exact table kernel."""
        return _bit_layout(self) and (self.man_bits > 0 or self.bias % 2 == 1)

    def _encode_array(self, a, rounding, overflow, nan, rand):
        if not self.bit_layout:
            return self.encode_table(a, rounding, overflow, nan, rand)
        return super()._encode_array(a, rounding, overflow, nan, rand)

    def _quantize_array(self, a, rounding, overflow, nan, seed):
        return super()._quantize_array(a, rounding, overflow, nan, seed) if self.bit_layout else None

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
        return self.special.overflow

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        rc = self.special.codes(self.exp_bits, self.man_bits)
        return rc.nan_neg if negative else rc.nan_pos

    def inf_code(self, negative: bool = False) -> int | None:
        want = 1 if negative else 0
        hits = [c for c in sorted(self.inf_codes) if c >> (self.bits - 1) == want]
        return hits[0] if hits else None

    @property
    def negative_zero_code(self) -> int | None:
        c = 1 << (self.exp_bits + self.man_bits)
        rc = self.special.codes(self.exp_bits, self.man_bits)
        return None if (rc.nan[c] or rc.unused[c]) else c

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


def _bit_layout(fmt: MiniFloat) -> bool:
    v = fmt._values
    half = 1 << (fmt.bits - 1)
    top = fmt.max_code() & (half - 1)
    skip = fmt._unused_code_mask().copy()
    skip[half] = True  # the -0 slot may be -0, unused or the NaN (fnuz): all fine
    mags = np.arange(top + 1)
    ok = lambda c: bool(np.all(np.isfinite(v[c]) | skip[c]))  # noqa: E731
    return ok(mags) and ok(mags | half) and not (np.isfinite(v[top + 1:half]).any())


def oracle_rule(fmt: MiniFloat, vals: list[float], codes: list[int]):
    """Oracle facts: ties to mantissa LSB 0 (code LSB); the virtual value above max is
    max + 2**(floor(log2 max) - man_bits), even iff the max code is odd; mirrored below."""
    from fmtlab.formats.oracle import OracleRule

    top, top_code = vals[-1], codes[-1]
    _, e = math.frexp(top)  # top = m * 2**e, 0.5 <= m < 1, so floor(log2 top) = e - 1
    hi, hi_even = top + math.ldexp(1.0, e - 1 - fmt.man_bits), (top_code & 1) == 1
    return OracleRule(tuple((c & 1) == 0 for c in codes), -hi, hi_even, hi, hi_even)


def cli_layout(fmt: MiniFloat) -> str:
    """The ``fmtlab formats`` layout line: fields, bias and the rule's special codes."""
    e, m = fmt.exp_bits, fmt.man_bits
    fields = "S." + "E" * e + ("." + "M" * m if m else "")
    sub = "" if fmt.subnormals or m == 0 else ", subnormals flushed"
    return f"{fields}, bias {fmt.bias}; {fmt.special.layout(e, m)}{sub}"


register_handler(Subsystem.ORACLE, MiniFloat.family, oracle_rule)
register_handler(Subsystem.STRATEGY, MiniFloat.family, "fmtlab.formats.strategies:minifloat_family")
register_handler(Subsystem.CLI, MiniFloat.family, cli_layout)
