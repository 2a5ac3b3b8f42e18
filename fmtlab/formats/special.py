"""Special-value rules of minifloats as data: which codes are NaN / Inf, -0, bias offset, defaults.

A :class:`SpecialRule` states, for any ``exp_bits`` E and ``man_bits`` M, which codes
(sign S, exponent field, mantissa field) are NaN and which are Inf, whether -0 exists, how far the
default bias sits above 2**(E-1) - 1, the default overflow policy and the canonical NaN a NaN
input becomes. :class:`fmtlab.formats.MiniFloat` reads only this data (no switches on names), so a
new rule is one ``register_special_rule(SpecialRule(...))`` call, after which
``get_format("e3m3_<name>")`` parses. Patterns name fields with :class:`Field` (all ones, zero,
nonzero, any, only the top bit) or an exact integer; ``sign=None`` means both signs.

Built-ins (``Special``), following ml_dtypes / LLVM naming:
  IEEE  Inf S.1..1.0..0, NaN S.1..1.(M!=0), -0; overflow to Inf          (IEEE 754, FP8 E5M2)
  FN    no Inf, NaN S.1..1.1..1, -0; overflow to NaN                       (OCP FP8 E4M3)
  FNUZ  no Inf, no -0, NaN 1.0..0.0..0, bias + 1; overflow to NaN          (Graphcore/AMD fnuz)
  FIN   every code finite, -0; overflow saturates                          (OCP MX FP6/FP4)
During the transition a rule compares equal to its name (``Special.FN == "fn"``) and hashes like
it; new code should compare rules by identity (``fmt.special is Special.FN``) or read the data.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from functools import lru_cache

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.rounding import Overflow

__all__ = ["Field", "CodePattern", "SpecialRule", "Special", "register_special_rule",
           "get_special_rule", "special_rule_names", "unregister_special_rule", "on_rules_changed"]


class Field(enum.Enum):
    """What a pattern requires of an exponent or mantissa field of ``n`` bits."""

    ZERO = "0"          # all bits 0
    ALL_ONES = "1"      # all bits 1
    NONZERO = "!=0"     # any value but 0
    ANY = "*"           # any value
    TOP_BIT = "top"     # only the most significant bit set (IEEE quiet NaN mantissa)


def _field_mask(spec: "Field | int", F: np.ndarray, n: int) -> np.ndarray:
    ones = (1 << n) - 1
    if isinstance(spec, Field):
        if spec is Field.ZERO:
            return F == 0
        if spec is Field.ALL_ONES:
            return F == ones
        if spec is Field.NONZERO:
            return F != 0
        if spec is Field.ANY:
            return np.ones(F.shape, dtype=bool)
        return (F == (1 << (n - 1))) if n > 0 else np.zeros(F.shape, dtype=bool)
    return F == int(spec)


def _field_text(spec: "Field | int", letter: str, n: int) -> str:
    if isinstance(spec, Field):
        return {Field.ZERO: "0" * n, Field.ALL_ONES: "1" * n, Field.NONZERO: f"({letter}!=0)",
                Field.ANY: letter * n, Field.TOP_BIT: "1" + "0" * (n - 1)}[spec]
    return format(int(spec), f"0{n}b")


@dataclasses.dataclass(frozen=True)
class CodePattern:
    """A set of codes: exponent field, mantissa field and sign (0, 1, or None for both)."""

    exp: "Field | int"
    man: "Field | int"
    sign: int | None = None

    def __post_init__(self) -> None:
        for what, v in (("exp", self.exp), ("man", self.man)):
            if not isinstance(v, Field) and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise FormatError(f"CodePattern {what} must be a Field or a non-negative int, got {v!r}")
        if self.sign not in (None, 0, 1):
            raise FormatError(f"CodePattern sign must be 0, 1 or None, got sign={self.sign!r}")

    def mask(self, e: int, m: int) -> np.ndarray:
        """bool by code 0 .. 2**(1+e+m) - 1: the codes this pattern matches."""
        c = np.arange(1 << (1 + e + m), dtype=np.int64)
        S, E, M = c >> (e + m), (c >> m) & ((1 << e) - 1), c & ((1 << m) - 1)
        k = _field_mask(self.exp, E, e) & _field_mask(self.man, M, m)
        return k if self.sign is None else k & (S == self.sign)

    def text(self, e: int, m: int) -> str:
        s = "S" if self.sign is None else str(self.sign)
        return s + "." + _field_text(self.exp, "E", e) + ("." + _field_text(self.man, "M", m) if m else "")


_NAME_RE = re.compile(r"[a-z][a-z0-9]*")
_RESERVED = re.compile(r"b-?\d+|ftz|nz|lin|sym")  # option words of the name grammar


@dataclasses.dataclass(frozen=True, eq=False)
class SpecialRule:
    """The data a minifloat special-value rule implies (see the module docstring).

    name: the name suffix (``e4m3_<name>``); lowercase letters/digits, not a grammar option.
    nan / inf: patterns of the NaN / Inf codes; negative_zero: whether S=1, E=0, M=0 is -0 (else
    that code is unused unless a NaN pattern claims it); bias_offset: default bias
    2**(E-1) - 1 + bias_offset; overflow: the default overflow policy; canonical_nan: the code a
    NaN input becomes (sign None: the input's sign), None = the largest NaN code of that sign
    (or of either sign); min_exp_bits / min_field_bits: validation of E and E + M;
    doc: a one-line layout comment.
    """

    name: str
    nan: tuple[CodePattern, ...] = ()
    inf: tuple[CodePattern, ...] = ()
    negative_zero: bool = True
    bias_offset: int = 0
    overflow: Overflow = Overflow.SATURATE
    canonical_nan: CodePattern | None = None
    min_exp_bits: int = 1
    min_field_bits: int = 1
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name) \
                or _RESERVED.fullmatch(self.name):
            raise FormatError(f"special rule name must be lowercase letters/digits starting with a "
                              f"letter and not a name option (b<N>, ftz, ...), got name={self.name!r}")
        object.__setattr__(self, "nan", tuple(self.nan))
        object.__setattr__(self, "inf", tuple(self.inf))
        for p in self.nan + self.inf + ((self.canonical_nan,) if self.canonical_nan else ()):
            if not isinstance(p, CodePattern):
                raise FormatError(f"rule {self.name!r}: patterns must be CodePattern, got {p!r}")
        if not isinstance(self.overflow, Overflow):
            object.__setattr__(self, "overflow", Overflow.parse(self.overflow))
        if self.overflow is Overflow.INF and not self.inf:
            raise FormatError(f"rule {self.name!r}: overflow=INF needs Inf codes")
        if self.overflow is Overflow.NAN and not self.nan:
            raise FormatError(f"rule {self.name!r}: overflow=NAN needs NaN codes")

    # ---- transition: a rule equals its name ---------------------------------------------------
    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return other.strip().lower() == self.name
        return self is other or (isinstance(other, SpecialRule) and other.name == self.name)

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"SpecialRule({self.name!r})"

    # ---- what the rule implies for E, M ----------------------------------------------------
    def check(self, exp_bits: int, man_bits: int) -> None:
        """Raise FormatError if the rule cannot apply to E = exp_bits, M = man_bits."""
        if exp_bits < self.min_exp_bits:
            raise FormatError(f"a {self.name!r} minifloat needs exp_bits >= {self.min_exp_bits}, "
                              f"got exp_bits={exp_bits}")
        if exp_bits + man_bits < self.min_field_bits:
            raise FormatError(f"an {self.name!r} minifloat needs exp_bits + man_bits >= "
                              f"{self.min_field_bits}, got {exp_bits} + {man_bits}")

    def codes(self, exp_bits: int, man_bits: int) -> "RuleCodes":
        """The NaN / Inf / unused-(-0) masks and the canonical NaN codes for this E, M."""
        return _rule_codes(self, int(exp_bits), int(man_bits))

    def default_bias(self, exp_bits: int) -> int:
        return (1 << (exp_bits - 1)) - 1 + self.bias_offset

    def layout(self, exp_bits: int, man_bits: int) -> str:
        """The special-value part of a layout line, e.g. 'no Inf, NaN S.1111.111'."""
        e, m = exp_bits, man_bits
        live = [p for p in self.nan if p.mask(e, m).any()], [p for p in self.inf if p.mask(e, m).any()]
        nan, inf = live
        if not nan and not inf:
            s = "all codes finite (no Inf, no NaN)"
            return s if self.negative_zero else s + ", no -0"
        parts = ["Inf " + ", ".join(p.text(e, m) for p in inf) if inf else "no Inf"]
        if not self.negative_zero:
            parts.append("no -0")
        parts.append("NaN " + ", ".join(p.text(e, m) for p in nan) if nan else "no NaN")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class RuleCodes:
    """Per code (bool arrays, read-only): NaN, Inf, unused -0; canonical NaN by input sign."""

    nan: np.ndarray
    inf: np.ndarray
    unused: np.ndarray
    nan_pos: int | None
    nan_neg: int | None


@lru_cache(maxsize=256)
def _rule_codes(rule: SpecialRule, e: int, m: int) -> RuleCodes:
    n = 1 << (1 + e + m)
    nan = np.zeros(n, dtype=bool)
    inf = np.zeros(n, dtype=bool)
    for p in rule.nan:
        nan |= p.mask(e, m)
    for p in rule.inf:
        inf |= p.mask(e, m) & ~nan
    unused = np.zeros(n, dtype=bool)
    negz = 1 << (e + m)
    if not rule.negative_zero and not nan[negz]:
        unused[negz] = True
    signbit = np.arange(n) >> (e + m)

    def canon(neg: int) -> int | None:
        if rule.canonical_nan is not None:
            p = rule.canonical_nan
            k = dataclasses.replace(p, sign=neg if p.sign is None else p.sign).mask(e, m) & nan
            hits = np.flatnonzero(k)
            return int(hits[-1]) if hits.size else None
        for want in (neg, 1 - neg):
            hits = np.flatnonzero(nan & (signbit == want))
            if hits.size:
                return int(hits[-1])
        return None

    for a in (nan, inf, unused):
        a.setflags(write=False)
    return RuleCodes(nan, inf, unused, canon(0), canon(1))


class Special:
    """The built-in rules (an open set: see :func:`register_special_rule`)."""

    IEEE = SpecialRule(
        "ieee", nan=(CodePattern(Field.ALL_ONES, Field.NONZERO),),
        inf=(CodePattern(Field.ALL_ONES, Field.ZERO),), overflow=Overflow.INF,
        canonical_nan=CodePattern(Field.ALL_ONES, Field.TOP_BIT), min_exp_bits=2,
        doc="IEEE 754: E all ones is Inf (M = 0) or NaN (M != 0); -0 exists")
    FN = SpecialRule(
        "fn", nan=(CodePattern(Field.ALL_ONES, Field.ALL_ONES),), overflow=Overflow.NAN,
        min_field_bits=2, doc="finite + NaN (OCP FP8 E4M3): no Inf, only S.1..1.1..1 is NaN; -0 exists")
    FNUZ = SpecialRule(
        "fnuz", nan=(CodePattern(Field.ZERO, Field.ZERO, sign=1),), negative_zero=False,
        bias_offset=1, overflow=Overflow.NAN,
        doc="finite, NaN, unsigned zero: no Inf, no -0, 1.0..0.0..0 is the only NaN; bias + 1")
    FIN = SpecialRule("fin", doc="every code finite (OCP MX FP6/FP4); -0 exists; no NaN, no Inf")


_RULES: dict[str, SpecialRule] = {r.name: r for r in (Special.IEEE, Special.FN, Special.FNUZ, Special.FIN)}
_BUILTIN = frozenset(_RULES)
_LISTENERS: list = []  # callables run after the set of rules changes (the registry's name cache)


def on_rules_changed(callback) -> None:
    """Call ``callback()`` whenever a rule is registered, replaced or unregistered."""
    _LISTENERS.append(callback)


def _changed() -> None:
    for cb in _LISTENERS:
        cb()


def register_special_rule(rule: SpecialRule, *, replace: bool = False) -> SpecialRule:
    """Make ``rule`` known by name (``MiniFloat(..., special=name)``, ``get_format("e3m3_<name>")``).

    Registering another rule under a taken name raises FormatError unless ``replace=True``
    (built-ins cannot be replaced). Returns the rule.
    """
    if not isinstance(rule, SpecialRule):
        raise TypeError(f"register_special_rule takes a SpecialRule, got {type(rule).__name__}")
    old = _RULES.get(rule.name)
    if old is not None and old is not rule:
        if rule.name in _BUILTIN or not replace:
            raise FormatError(f"a special rule named {rule.name!r} is already registered"
                              + ("" if rule.name in _BUILTIN else " (pass replace=True)"))
    _RULES[rule.name] = rule
    _changed()
    return rule


def unregister_special_rule(name: str) -> None:
    """Forget a registered rule (for tests); built-ins stay."""
    if name in _BUILTIN:
        raise FormatError(f"the built-in special rule {name!r} cannot be unregistered")
    if _RULES.pop(name, None) is not None:
        _changed()


def get_special_rule(rule: "SpecialRule | str") -> SpecialRule:
    """The rule itself, or the registered rule of that name (FormatError listing the known ones)."""
    if isinstance(rule, SpecialRule):
        return rule
    if isinstance(rule, str):
        r = _RULES.get(rule.strip().lower())
        if r is not None:
            return r
    raise FormatError(f"special must be one of {special_rule_names()} or a SpecialRule, "
                      f"got special={rule!r}")


def special_rule_names() -> tuple[str, ...]:
    """Names of the registered rules (built-ins first, then in registration order)."""
    return tuple(_RULES)
