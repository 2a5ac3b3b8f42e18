"""HiFloat8 (HiF8): Huawei Ascend's tapered-precision 8-bit float (Luo et al., "Ascend HiFloat8
Format for Deep Learning", arXiv 2409.16626; peer: en_dtypes' ``hifloat8``).

Code S | dot | exponent | mantissa, the dot field a prefix code that sets the exponent width D
and so the mantissa width (7 bits after the sign):

  dot ``11``   D = 4: exponent sign + 3 bits, |e| = 8 + bits (8..15), 1 mantissa bit
  dot ``10``   D = 3: exponent sign + 2 bits, |e| = 4 + bits (4..7),  2 mantissa bits
  dot ``01``   D = 2: exponent sign + 1 bit,  |e| = 2 + bit  (2..3),  3 mantissa bits
  dot ``001``  D = 1: exponent sign only,      |e| = 1,               3 mantissa bits
  dot ``0001`` D = 0: e = 0,                                          3 mantissa bits
  dot ``0000`` denormal: value 2**(M - 23) for mantissa M = 1..7 (2**-22 .. 2**-16)

(the exponent magnitude carries an implicit leading 1; the sign bit of the exponent is 1 for
negative exponents). Normal value (-1)**S * (1 + M / 2**m) * 2**e. Specials: 0x00 is zero, 0x80
is the only NaN (no -0), S.11.0111.1 (0x6F / 0xEF) is +/-Inf (instead of 1.5 * 2**15), so the
largest finite value is 2**15 = 32768 and the smallest positive 2**-22.

Rounding: HiF8's own rounding is round-half-away (``rounding="nearest_away"``, what en_dtypes'
cast does). ``nearest_even`` ties go to the code with LSB 0 (the mantissa LSB; in the denormal
range the code LSB) and, where both or neither are even, to the smaller magnitude.
Overflow: the virtual value above max is 1.5 * 2**15 = 49152 (the code 0x6F would hold it), so
x >= 40960 overflows (to Inf by default; ``overflow="saturate"`` gives 32768). NaN -> 0x80.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, register_handler
from fmtlab.formats.oracle import OracleRule
from fmtlab.formats.rounding import Overflow

__all__ = ["HiFloat8", "hifloat8_values"]

NAN_CODE = 0x80
INF_MAG = 0x6F


def _magnitude(a: int) -> float:
    """Value of the 7-bit magnitude field ``a`` (module docstring); 0x6F is Inf."""
    if a == 0:
        return 0.0
    if a == INF_MAG:
        return float("inf")
    if a >> 5 == 0b11:
        sgn, e, m, mb = (a >> 4) & 1, 8 + ((a >> 1) & 7), a & 1, 1
    elif a >> 5 == 0b10:
        sgn, e, m, mb = (a >> 4) & 1, 4 + ((a >> 2) & 3), a & 3, 2
    elif a >> 5 == 0b01:
        sgn, e, m, mb = (a >> 4) & 1, 2 + ((a >> 3) & 1), a & 7, 3
    elif a >> 4 == 0b001:
        sgn, e, m, mb = (a >> 3) & 1, 1, a & 7, 3
    elif a >> 3 == 0b0001:
        sgn, e, m, mb = 0, 0, a & 7, 3
    else:  # dot 0000: denormal
        return float(np.ldexp(1.0, (a & 7) - 23))
    return float(np.ldexp(1.0 + m / (1 << mb), -e if sgn else e))


def hifloat8_values() -> np.ndarray:
    """float64 value of every code 0..255 (NaN at 0x80)."""
    v = np.array([_magnitude(c & 0x7F) for c in range(256)], dtype=np.float64)
    v[128:] = -v[128:]
    v[NAN_CODE] = np.nan
    return v


@dataclasses.dataclass(frozen=True)
class HiFloat8(Format):
    """Ascend HiFloat8 (module docstring)."""

    family = "hifloat8"

    @property
    def bits(self) -> int:
        return 8

    @property
    def name(self) -> str:
        return "hifloat8"

    def _build_values(self) -> np.ndarray:
        return hifloat8_values()

    def _virtual_above(self) -> tuple[float, bool]:
        return 1.5 * 2.0 ** 15, False  # the code 0x6F (odd) would hold it

    @property
    def default_overflow(self) -> Overflow:
        return Overflow.INF

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        return NAN_CODE

    def inf_code(self, negative: bool = False) -> int | None:
        return INF_MAG | (0x80 if negative else 0)

    @property
    def min_normal(self) -> float:
        return 2.0 ** -15

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** -22


def oracle_rule(fmt: HiFloat8, vals: list[float], codes: list[int]):
    """Oracle facts: ties (NEAREST_EVEN) to code LSB 0; virtual ends +/-49152, odd."""
    return OracleRule(tuple((c & 1) == 0 for c in codes), -49152.0, False, 49152.0, False)


def strategy(max_bits: int):
    from hypothesis import strategies as st  # lazy: hypothesis is a [dev] dependency

    return st.just(HiFloat8()) if max_bits >= 8 else None


def cli_layout(fmt: HiFloat8) -> str:
    return ("S.dot.E.M tapered (dot 11/10/01/001/0001/0000: 4/3/2/1/0-bit exponent, 1/2/3/3/3 "
            "mantissa bits, 0000 denormal 2**(M-23)); NaN 0x80, Inf S.11.0111.1, no -0")


register_handler(Subsystem.ORACLE, HiFloat8.family, oracle_rule)
register_handler(Subsystem.STRATEGY, HiFloat8.family, strategy)
register_handler(Subsystem.CLI, HiFloat8.family, cli_layout)
