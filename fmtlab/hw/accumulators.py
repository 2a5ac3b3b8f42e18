"""Accumulators of a MAC unit and their rounding / overflow vocabularies (enums, parsed once).

- :class:`IntAcc`: W-bit two's complement; on overflow it wraps (mod 2^W) or saturates to
  [-2^(W-1), 2^(W-1) - 1] (:class:`AccOverflow`);
- :class:`FloatAcc`: IEEE-754-like binary ExMy (bias 2^(E-1) - 1, Inf, NaN, subnormals), e.g.
  fp32, bf16, fp16; one rounding per step, nearest-even or toward zero (:class:`AccRounding`);
- :class:`KulischAcc`: exact fixed point covering every product of the operand pair, plus
  ``guard`` carry bits.

The public API accepts the strings ``"wrap"``/``"saturate"`` and ``"nearest_even"``/
``"toward_zero"`` (case-insensitive, ``-`` read as ``_``); they are parsed into the enums once,
in the dataclasses' ``__post_init__`` and in :func:`parse_accumulator`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Callable

from fmtlab.errors import FmtlabError, parse_choice
from fmtlab.formats.names import Grammar

__all__ = ["AccOverflow", "AccRounding", "IntAcc", "FloatAcc", "KulischAcc", "Accumulator",
           "parse_accumulator"]


class AccOverflow(enum.Enum):
    """What an integer accumulator does when a step leaves its range."""

    WRAP = "wrap"
    """Keep the low W bits (two's complement, mod 2^W): what a plain adder does."""
    SATURATE = "saturate"
    """Clamp to -2^(W-1) or 2^(W-1) - 1 (an overflow detector and a select)."""

    @classmethod
    def parse(cls, value: "AccOverflow | str") -> "AccOverflow":
        """The member for itself or its value string; ChoiceError (a FmtlabError) listing the choices otherwise."""
        return parse_choice(cls, value, "accumulator overflow mode")


class AccRounding(enum.Enum):
    """How a float accumulator rounds the exact ``acc + product`` of each step."""

    NEAREST_EVEN = "nearest_even"
    """Round to nearest, ties to even; overflow goes to Inf."""
    TOWARD_ZERO = "toward_zero"
    """Truncate; overflow goes to the largest finite value."""

    @classmethod
    def parse(cls, value: "AccRounding | str") -> "AccRounding":
        """The member for itself or its value string; ChoiceError (a FmtlabError) listing the choices otherwise."""
        return parse_choice(cls, value, "accumulator rounding mode")


@dataclasses.dataclass(frozen=True)
class IntAcc:
    """W-bit two's-complement accumulator; ``overflow`` wraps or saturates (a string is parsed)."""

    width: int = 32
    overflow: AccOverflow = AccOverflow.WRAP

    def __post_init__(self) -> None:
        w = self.width
        if isinstance(w, bool) or not isinstance(w, int) or not 2 <= w <= 64:
            raise FmtlabError(f"integer accumulator width must be 2..64, got width={self.width!r}")
        object.__setattr__(self, "overflow", AccOverflow.parse(self.overflow))

    @property
    def saturates(self) -> bool:
        return self.overflow is AccOverflow.SATURATE

    @property
    def name(self) -> str:
        return f"int{self.width}" + ("_sat" if self.saturates else "")


@dataclasses.dataclass(frozen=True)
class FloatAcc:
    """IEEE-754-like binary accumulator ExMy: bias 2^(E-1)-1, Inf, NaN, subnormals."""

    exp_bits: int = 8
    man_bits: int = 23
    rounding: AccRounding = AccRounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        if not 2 <= self.exp_bits <= 11 or not 1 <= self.man_bits <= 52:
            raise FmtlabError(f"float accumulator e{self.exp_bits}m{self.man_bits} is outside "
                              "e2..e11, m1..m52")
        if self.exp_bits + self.man_bits + 1 > 64:
            raise FmtlabError("float accumulators are at most 64 bits")
        object.__setattr__(self, "rounding", AccRounding.parse(self.rounding))

    @property
    def toward_zero(self) -> bool:
        return self.rounding is AccRounding.TOWARD_ZERO

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def name(self) -> str:
        base = {(8, 23): "fp32", (5, 10): "fp16", (8, 7): "bf16", (8, 10): "tf32",
                (11, 52): "fp64"}.get((self.exp_bits, self.man_bits),
                                      f"e{self.exp_bits}m{self.man_bits}")
        return base + ("_rtz" if self.toward_zero else "")


@dataclasses.dataclass(frozen=True)
class KulischAcc:
    """Exact fixed-point accumulator wide enough for every product of the operand pair, plus
    ``guard`` carry bits (2**guard worst-case products sum without overflow). Default 12
    (a 4096-long dot product)."""

    guard: int = 12

    def __post_init__(self) -> None:
        g = self.guard
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 64:
            raise FmtlabError(f"Kulisch guard bits must be 0..64, got guard={self.guard!r}")

    @property
    def name(self) -> str:
        return "kulisch" if self.guard == 12 else f"kulisch{self.guard}"


Accumulator = "IntAcc | FloatAcc | KulischAcc"

_FLOAT_ACC = {"fp32": (8, 23), "float32": (8, 23), "fp16": (5, 10), "bf16": (8, 7),
              "tf32": (8, 10), "fp64": (11, 52)}


# An accumulator name resolves to a builder ``build(overflow, rounding) -> accumulator``: the
# override (an enum member or None) wins over the name's _sat / _rtz suffix.
AccBuilder = Callable[["AccOverflow | None", "AccRounding | None"], "IntAcc | FloatAcc | KulischAcc"]


def _int_acc(m: re.Match, name: str) -> AccBuilder:
    return lambda ovf, rnd: IntAcc(int(m.group(1)),
                                   ovf or (AccOverflow.SATURATE if m.group(2) else AccOverflow.WRAP))


def _kulisch_acc(m: re.Match, name: str) -> AccBuilder:
    return lambda ovf, rnd: KulischAcc(int(m.group(1)) if m.group(1) else 12)


def _float_acc(e: int, mm: int, rtz: bool) -> AccBuilder:
    return lambda ovf, rnd: FloatAcc(e, mm, rnd or (AccRounding.TOWARD_ZERO if rtz else AccRounding.NEAREST_EVEN))


GRAMMAR: "Grammar[AccBuilder]" = Grammar("accumulator", FmtlabError)
for _n, (_e, _m) in _FLOAT_ACC.items():
    GRAMMAR.exact(_n, lambda _e=_e, _m=_m: _float_acc(_e, _m, False))
    GRAMMAR.exact(_n + "_rtz", lambda _e=_e, _m=_m: _float_acc(_e, _m, True))
GRAMMAR.kind("int", r"int(\d+)(_sat)?", "int<W>[_sat] (e.g. int32, int32_sat)", _int_acc)
GRAMMAR.kind("kulisch", r"kulisch(\d+)?", "kulisch[<guard>]", _kulisch_acc)
GRAMMAR.kind("minifloat", r"e(\d+)m(\d+)(_rtz)?", "e<E>m<M>[_rtz]",
             lambda m, name: _float_acc(int(m.group(1)), int(m.group(2)), bool(m.group(3))))


def parse_accumulator(spec: "str | IntAcc | FloatAcc | KulischAcc",
                      overflow: "AccOverflow | str | None" = None,
                      rounding: "AccRounding | str | None" = None
                      ) -> "IntAcc | FloatAcc | KulischAcc":
    """``int32``/``int<W>``, ``fp32``/``fp16``/``bf16``/``tf32``/``e<E>m<M>``, ``kulisch[<G>]``.

    A ``_sat`` suffix on int names means saturate; ``_rtz`` on float names round toward zero.
    ``overflow``/``rounding`` (enum members or their strings) override the suffixes.
    """
    ovf = None if overflow is None else AccOverflow.parse(overflow)
    rnd = None if rounding is None else AccRounding.parse(rounding)
    if isinstance(spec, (IntAcc, FloatAcc, KulischAcc)):
        acc = spec
        if ovf is not None and isinstance(acc, IntAcc):
            acc = dataclasses.replace(acc, overflow=ovf)
        if rnd is not None and isinstance(acc, FloatAcc):
            acc = dataclasses.replace(acc, rounding=rnd)
        return acc
    if not isinstance(spec, str):
        raise TypeError("accumulator must be a name or an accumulator object, got "
                        f"{type(spec).__name__}")
    return GRAMMAR.resolve(spec)(ovf, rnd)
