"""IEEE P3109 binary formats ``binaryKpP{s|u}{e|f}`` (K bits, precision P, signed or unsigned,
extended or finite).

Definition (IEEE SA P3109 working group, "Arithmetic Formats for Machine Learning", interim
report v3, section 3; as implemented by graphcore-research/gfloat ``format_info_p3109``):

- signed: sign bit, W = K - P exponent bits, T = P - 1 trailing significand bits, bias
  B = 2**(K - P - 1) (one more than IEEE's); unsigned: no sign bit, W = K - P + 1, bias
  B = 2**(K - P);
- value of (E, M): E > 0: (1 + M / 2**T) * 2**(E - B); E = 0: (M / 2**T) * 2**(1 - B)
  (subnormals; with P = 1 there are none, code 0 is zero);
- exactly one NaN and no negative zero: signed, the code 1000..0 (the -0 slot) is NaN;
  unsigned, the all-ones code is NaN;
- extended: +Inf is the largest code below the NaN(s) (signed 0111..1, unsigned 1..10) and
  signed formats have -Inf = 1111..1; finite: those codes are finite.

Signed formats are :class:`~fmtlab.formats.minifloat.MiniFloat` instances (special rule
``p3109`` for extended, ``fnuz`` for finite: the finite signed P3109 formats are exactly the
``fnuz`` minifloats, e.g. binary8p4sf == fp8_e4m3fnuz), so every fast kernel, the torch path and
the hardware model apply unchanged. Unsigned formats are :class:`P3109Unsigned` (family
``p3109u``), encoded by the exact table path.

Rounding: as every fmtlab format (nearest-even ties go to the even code, i.e. significand LSB 0;
with P = 1 the exponent LSB, as gfloat's ``round_float``). Overflow default, as gfloat's
``sat=False``: extended formats overflow to Inf, finite ones to NaN; ``overflow="saturate"``
gives P3109's SatFinite. NaN inputs (either sign) give the one NaN; -0.0 gives +0.
Unsigned formats: negative inputs that round to zero (x > -smallest/2 under nearest rounding)
give 0; below that they overflow at the negative end: ``saturate`` gives 0, ``nan`` and the
extended default ``inf`` give NaN (there is no -Inf); -Inf gives NaN (0 when saturating).

Names (case-insensitive): ``binary8p3se`` (P3109's own), ``p3109_k8p3se`` (gfloat's). K is
3..16; signed P is 1..K-1 with at most 8 exponent bits, unsigned P is 1..K.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import NotSupportedError, Subsystem, register_handler
from fmtlab.formats.minifloat import MiniFloat
from fmtlab.formats.oracle import OracleRule
from fmtlab.formats.rounding import NanInput, Overflow
from fmtlab.formats.special import CodePattern, Field, Special, SpecialRule, register_special_rule

__all__ = ["P3109_EXTENDED", "P3109Unsigned", "p3109", "NAME_RE", "BINARY8_NAMES"]

#: signed extended P3109: no -0 (its code is the one NaN), +/-Inf at S.1..1.1..1, bias + 1
P3109_EXTENDED = register_special_rule(SpecialRule(
    "p3109", nan=(CodePattern(Field.ZERO, Field.ZERO, sign=1),),
    inf=(CodePattern(Field.ALL_ONES, Field.ALL_ONES),), negative_zero=False, bias_offset=1,
    overflow=Overflow.INF, canonical_nan=CodePattern(Field.ZERO, Field.ZERO, sign=1),
    min_field_bits=2, doc="IEEE P3109 signed extended: NaN 1.0..0.0..0 (no -0), Inf S.1..1.1..1, bias 2**(E-1)"))

NAME_RE = re.compile(r"(?:binary|p3109_k)(\d+)p(\d+)([su])([ef])")

#: the binary8 formats gfloat lists (``gfloat.formats.p3109_binary8_formats``)
BINARY8_NAMES = ("binary8p1se", "binary8p1ue", "binary8p3se", "binary8p3sf", "binary8p3ue",
                 "binary8p3uf", "binary8p4se", "binary8p4sf", "binary8p4ue", "binary8p4uf",
                 "binary8p7sf", "binary8p8uf")


def p3109_name(k: int, p: int, signed: bool, extended: bool) -> str:
    return f"binary{k}p{p}{'s' if signed else 'u'}{'e' if extended else 'f'}"


def p3109(k: int, p: int, signed: bool = True, extended: bool = True) -> Format:
    """The P3109 format binary{k}p{p}{s|u}{e|f} (module docstring); FormatError if undefined."""
    for what, v in (("K", k), ("P", p)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise FormatError(f"P3109 {what} must be an int, got {v!r}")
    k, p = int(k), int(p)
    name = p3109_name(k, p, signed, extended)
    if not 3 <= k <= 16:
        raise FormatError(f"{name}: fmtlab supports P3109 widths K = 3..16, got K={k}")
    if signed:
        if not 1 <= p <= k - 1:
            raise FormatError(f"{name}: a signed P3109 format needs 1 <= P <= K - 1, got P={p}")
        w = k - p
        if w > 8 or p - 1 > 10:
            raise FormatError(f"{name}: {w} exponent bits / {p - 1} trailing significand bits "
                              "exceed the minifloat range (E <= 8, M <= 10)")
        rule = P3109_EXTENDED if extended else Special.FNUZ
        return MiniFloat(w, p - 1, bias=1 << (w - 1), special=rule, label=name)
    if not 1 <= p <= k:
        raise FormatError(f"{name}: an unsigned P3109 format needs 1 <= P <= K, got P={p}")
    if k - p + 1 > 8 + 1:
        raise FormatError(f"{name}: {k - p + 1} exponent bits are more than fmtlab supports (9)")
    return P3109Unsigned(k, p, extended)


def parse_name(m: re.Match, name: str) -> Format:
    """Grammar builder for NAME_RE matches (registry)."""
    return p3109(int(m.group(1)), int(m.group(2)), m.group(3) == "s", m.group(4) == "e")


@dataclasses.dataclass(frozen=True)
class P3109Unsigned(Format):
    """Unsigned P3109 binary{k}p{p}u{e|f} (module docstring). Codes are unsigned K-bit
    patterns: W = K - P + 1 exponent bits, T = P - 1 trailing significand bits, bias 2**(K-P);
    the all-ones code is NaN; extended: the code below it is +Inf."""

    k: int
    p: int
    extended: bool = True

    family = "p3109u"

    def __post_init__(self) -> None:
        if not (3 <= self.k <= 16 and 1 <= self.p <= self.k):
            raise FormatError(f"unsigned P3109 needs K in 3..16 and 1 <= P <= K, got K={self.k}, "
                              f"P={self.p}")

    @property
    def bits(self) -> int:
        return self.k

    @property
    def name(self) -> str:
        return p3109_name(self.k, self.p, False, self.extended)

    @property
    def man_bits(self) -> int:
        return self.p - 1

    @property
    def exp_bits(self) -> int:
        return self.k - self.p + 1

    @property
    def bias(self) -> int:
        return 1 << (self.k - self.p)

    @property
    def bit_fields(self) -> tuple[int, ...]:
        return (self.exp_bits, self.man_bits) if self.man_bits else (self.exp_bits,)

    @property
    def nan_code(self) -> int:
        return (1 << self.k) - 1

    def _build_values(self) -> np.ndarray:
        t = self.man_bits
        c = np.arange(1 << self.k, dtype=np.int64)
        E, M = c >> t, c & ((1 << t) - 1)
        frac = M / float(1 << t)
        v = np.where(E > 0, np.ldexp(1.0 + frac, (E - self.bias).astype(np.int64)),
                     np.ldexp(frac, 1 - self.bias))
        v[self.nan_code] = np.nan
        if self.extended:
            v[self.nan_code - 1] = np.inf
        return v

    def _virtual_above(self) -> tuple[float, bool]:
        v = np.where(np.isfinite(self._values), self._values, -np.inf)
        top = int(np.argmax(v))
        mx = float(v[top])
        _, e = math.frexp(mx)
        return mx + math.ldexp(1.0, e - 1 - self.man_bits), (top + 1) % 2 == 0

    def _virtual_below(self) -> tuple[float, bool]:
        return -float(self._values[1]), False  # -(smallest positive): the negative overflow end

    @property
    def default_overflow(self) -> Overflow:
        return Overflow.INF if self.extended else Overflow.NAN

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        return self.nan_code

    def inf_code(self, negative: bool = False) -> int | None:
        return self.nan_code - 1 if (self.extended and not negative) else None

    @property
    def signed(self) -> bool:
        return False

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias)

    @property
    def eps(self) -> float:
        return math.ldexp(1.0, -self.man_bits)

    def special_codes(self, overflow: Overflow, nan: NanInput) -> np.ndarray:
        s = super().special_codes(overflow, nan) if overflow is not Overflow.INF else None
        if s is None:  # INF policy: the negative end has no -Inf, so it overflows to NaN
            s = super().special_codes(Overflow.NAN, nan)
            s[2] = s[4] = self.inf_code(False)
        return s


def oracle_rule(fmt: P3109Unsigned, vals: list[float], codes: list[int]):
    """Oracle facts: ties to code LSB 0 (significand LSB; P = 1: exponent LSB, as gfloat);
    the virtual value above max continues the top binade's spacing, even iff the max code is
    odd; the virtual value below 0 is -(smallest positive) (odd), so x <= -smallest/2 is a
    negative overflow (SATURATE: 0; NAN and INF: NaN, there is no -Inf)."""
    top, top_code = vals[-1], codes[-1]
    _, e = math.frexp(top)
    hi = top + math.ldexp(1.0, e - 1 - fmt.man_bits)
    return OracleRule(tuple((c & 1) == 0 for c in codes), -vals[1], False, hi, (top_code & 1) == 1)


def strategy(max_bits: int):
    """Unsigned P3109 formats of K = 3 .. min(max_bits, 8) bits (hypothesis is imported only when
    drawing is asked for)."""
    from hypothesis import strategies as st  # lazy: hypothesis is a [dev] dependency

    if max_bits < 3:
        return None
    kmax = min(max_bits, 8)
    return st.integers(3, kmax).flatmap(
        lambda k: st.builds(P3109Unsigned, st.just(k), st.integers(1, k), st.booleans()))


def cli_layout(fmt: P3109Unsigned) -> str:
    e, m = fmt.exp_bits, fmt.man_bits
    fields = "E" * e + ("." + "M" * m if m else "")
    inf = f"+Inf {'1' * (fmt.k - 1)}0, " if fmt.extended else "no Inf, "
    return f"{fields} (unsigned), bias {fmt.bias}; {inf}NaN {'1' * fmt.k}, no -0"


def hw_view(fmt: P3109Unsigned):
    raise NotSupportedError(f"{fmt.name}: the MAC model has no unsigned float operand view yet "
                            "(signed P3109 formats are minifloats and are priced)")


register_handler(Subsystem.ORACLE, P3109Unsigned.family, oracle_rule)
register_handler(Subsystem.STRATEGY, P3109Unsigned.family, strategy)
register_handler(Subsystem.CLI, P3109Unsigned.family, cli_layout)
register_handler(Subsystem.HW_OPERAND, P3109Unsigned.family, hw_view)
