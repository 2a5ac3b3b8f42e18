"""The reference oracle: slow, plain Python, obviously correct; every fast kernel is held to it.

``oracle_encode`` answers "which code does ``x`` become?" from the format's sorted ``values()``
table alone, by exact comparisons (``fractions.Fraction``), one element at a time. It shares no
code with the numba kernels (no ``grid``, no ``bounds``, no ``special_codes``); it reads only the
format's declared facts: ``values()``, ``canonical_nan_code()``, ``default_overflow``, and the
:class:`OracleRule` its family registers (``Subsystem.ORACLE``: tie flags, virtual ends, rounding
domain, zero threshold, special inputs). A family without one raises NotSupportedError.

Specification (what "correct" means; the kernels' docstrings say the same in other words)
-----------------------------------------------------------------------------------------
Table.  The finite entries of ``values()``, sorted; each distinct value once. Zero is the code
whose value is +0.0; the code whose value is -0.0 (if any) is the *negative-zero code*. Any other
duplicate value is an error in the format. The table is extended by one *virtual* value at each
end, the value the format would have next if its range went on:
  minifloat   max + 2**(floor(log2 max) - man_bits)   (top binade's spacing continued one step)
  int/uint    max + 1 and min - 1 (uint: -1)
  dint        +/-(max + 1)
  log         +/-base (the level b**+1)
Choosing a virtual value means overflow.

Tables without zero (lookup formats such as iq4nl) have one interval L < 0 < U; there the
nearest value is found by signed distances, and TOWARD_ZERO takes the smaller magnitude.

Input.  Each element is taken at its exact value (float32 widened to float64 is exact; float64
is never rounded through float32). Let L <= x < U be adjacent table entries (virtual included).
  x == L                    -> L
  TOWARD_ZERO               -> the one of L, U with the smaller magnitude
  STOCHASTIC(draw r)        -> U iff r < (x - L) / (U - L) (exactly), else L
  NEAREST_EVEN/NEAREST_AWAY -> the one at the smaller distance; distances are |x - v| in the
      linear domain, |log|x| - log|v|| in the log domain (log formats with domain="log"; compared
      exactly as x**2 versus L*U). Between zero and the smallest log level the boundary is the
      format's explicit ``underflow_threshold`` in both domains. A tie goes, under NEAREST_AWAY,
      to the larger magnitude; under NEAREST_EVEN, to the *even* neighbour if exactly one is even,
      else to the smaller magnitude. Even means:
        minifloat   code LSB (mantissa LSB) is 0; the virtual value above max is even iff the
                    max code is odd (it would be the next code)
        int, dint   the value is an even integer (0 included; dINT denormal levels are not even)
        log         zero, or b**-k with even k (1.0 is k = 0; the virtual b is k = -1, odd)
``boundaries="format"`` replaces the exact linear midpoint / geometric mean by the float64 number
``fl(L/2 + U/2)`` / ``fl(sqrt(fl(|L|*|U|)))`` that the kernels use as the boundary (logfmt.py
defines the log ones; compared exactly, ties at that float64 number). It only differs from
"exact" where the true midpoint is not a float64: log-domain formats, and tables whose values
need many bits (log bases other than 2, dINT levels such as 0.3), and only for inputs within
an ulp of such a boundary (for float32 inputs to the standard log formats: never).

Overflow.  x below the lower virtual value, x at or above the upper one, or a result that is a
virtual value, overflows: the policy (``overflow``, None = the format's ``default_overflow``)
gives the finite value at that end (SATURATE: max above, min below), +/-Inf (INF; NaN at an end
without Inf, such as the negative end of unsigned P3109 formats) or the NaN of that end's sign
(NAN). (The lower end is the negative one except for positive-only tables.)
TOWARD_ZERO never overflows a finite input: it saturates.

Specials.  +/-Inf give the format's +/-Inf code, else the overflow code of the policy. NaN gives
``canonical_nan_code(negative=signbit)``; a format without NaN raises FormatError, or gives the
+0 code with ``nan="zero"``. -0.0 and negative inputs whose result is zero give the negative-zero
code where the format has one, else the zero code. INF/NAN policies the format cannot represent
raise FormatError.

E8M0 (no zero, no sign) follows its own documented rules (e8m0.py), restated here: NaN, Inf,
zero and negative inputs give NaN (255); 0 < x < 2**-127 gives code 0 (2**-127, there is no zero)
for every rounding mode; otherwise the table rule above (float32 subnormals included) with the
upper virtual value 2**128 and every tie going to the larger magnitude (under NEAREST_EVEN too, as
ml_dtypes); overflow per policy (NAN by default, or SATURATE to 254).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, get_handler
from fmtlab.formats.rounding import NanInput, Overflow, Rounding

__all__ = ["oracle_encode", "OracleTable", "OracleRule", "oracle_table"]

BELOW, ABOVE = -1, -2  # pseudo-codes of the virtual values


@dataclass(frozen=True)
class OracleRule:
    """What a family tells the oracle (its ``Subsystem.ORACLE`` handler returns one).

    even: tie flag of each sorted finite value; lo/hi (+ lo_even/hi_even): the virtual values
    below and above; log_domain: distances are |log|x| - log|v|| (compared as x**2 vs L*U);
    zero_threshold: the explicit boundary between 0 and the smallest positive level;
    ties_up: every tie goes to the larger magnitude; toward_zero_saturates: TOWARD_ZERO never
    overflows a finite input (else the overflow policy applies beyond the upper virtual value);
    special_input: ``f(x) -> code | None``, a code for inputs the family handles itself before
    the table rule (NaN/Inf included), None to go on.
    """

    even: tuple[bool, ...]
    lo: float
    lo_even: bool
    hi: float
    hi_even: bool
    log_domain: bool = False
    zero_threshold: float | None = None
    ties_up: bool = False
    toward_zero_saturates: bool = True
    special_input: Callable[[float], "int | None"] | None = None


@dataclass(frozen=True)
class OracleTable:
    """The sorted finite values of a format with the virtual value at each end.

    ``vals[0]`` and ``vals[-1]`` are virtual (codes BELOW / ABOVE). ``even[i]`` is the tie flag.
    """

    vals: tuple[float, ...]
    codes: tuple[int, ...]
    even: tuple[bool, ...]
    zero_code: int | None
    neg_zero_code: int | None
    pos_inf_code: int | None
    neg_inf_code: int | None
    rule: OracleRule | None = None


def oracle_rule_of(fmt: Format, vals: list[float], codes: list[int]) -> OracleRule:
    """The family's oracle rule for the sorted finite ``vals`` (codes alongside)."""
    h = get_handler(Subsystem.ORACLE, fmt, "register an ORACLE handler (fmt, vals, codes) -> "
                    "fmtlab.formats.oracle.OracleRule in the family's module")
    return h(fmt, vals, codes)


@lru_cache(maxsize=64)
def oracle_table(fmt: Format) -> OracleTable:
    """Build the oracle's table from ``fmt.values()`` (see the module docstring)."""
    v = fmt.values()
    by_value: dict[float, int] = {}
    zero_code = neg_zero_code = pos_inf = neg_inf = None
    for code, val in enumerate(v.tolist()):
        if math.isnan(val):
            continue
        if math.isinf(val):
            if val > 0:
                pos_inf = code
            else:
                neg_inf = code
            continue
        if val == 0.0:
            if math.copysign(1.0, val) < 0:
                if neg_zero_code is not None:
                    raise AssertionError(f"{fmt}: two -0 codes")
                neg_zero_code = code
                continue
            if zero_code is not None:
                raise AssertionError(f"{fmt}: two +0 codes")
            zero_code = code
        if val in by_value:
            raise AssertionError(f"{fmt}: value {val!r} has codes {by_value[val]} and {code}")
        by_value[val] = code
    vals = sorted(by_value)
    codes = [by_value[x] for x in vals]
    r = oracle_rule_of(fmt, vals, codes)
    if len(r.even) != len(vals):
        raise AssertionError(f"{fmt}: the oracle rule has {len(r.even)} tie flags for {len(vals)} values")
    return OracleTable(tuple([r.lo] + vals + [r.hi]), tuple([BELOW] + codes + [ABOVE]),
                       tuple([r.lo_even] + list(r.even) + [r.hi_even]), zero_code, neg_zero_code,
                       pos_inf, neg_inf, r)


def even_integer_rule(fmt: Format, vals: list[float], codes: list[int]) -> OracleRule:
    """Ties to the even integer (INT, dINT: 0 is even, dINT denormal levels are not); virtual
    ends max + 1 and min - 1."""
    even = tuple(float(x).is_integer() and int(x) % 2 == 0 for x in vals)
    hi, lo = vals[-1] + 1.0, vals[0] - 1.0
    return OracleRule(even, lo, int(lo) % 2 == 0, hi, int(hi) % 2 == 0)


def _tie(t: OracleTable, i: int, rounding: Rounding) -> int:
    """Index chosen at an exact tie between entries i and i + 1."""
    smaller = i if abs(t.vals[i]) < abs(t.vals[i + 1]) else i + 1
    larger = 2 * i + 1 - smaller
    if rounding is Rounding.NEAREST_AWAY:
        return larger
    if t.even[i] != t.even[i + 1]:
        return i if t.even[i] else i + 1
    return smaller


def _compare_to_boundary(t: OracleTable, x: float, lo: float, hi: float, boundaries: str) -> int:
    """Where |x| lies between the magnitudes a < b of the same-signed neighbours lo, hi:
    -1 nearer to a (the smaller magnitude), +1 nearer to b, 0 a tie."""
    if lo < 0.0 < hi:  # a table without zero (lookup formats): compare signed distances
        if boundaries == "format":
            m = lo / 2 + hi / 2
            d = (x > m) - (x < m)
        else:
            e = (Fraction(x) - Fraction(lo)) - (Fraction(hi) - Fraction(x))
            d = (e > 0) - (e < 0)
        if d == 0:
            return 0
        return 1 if (d > 0) == (abs(hi) > abs(lo)) else -1  # +1: nearer the larger magnitude
    ax, a, b = abs(x), min(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    r = t.rule
    if r.zero_threshold is not None and a == 0.0:
        th = r.zero_threshold
        return (ax > th) - (ax < th)
    log_domain = r.log_domain
    if boundaries == "format":
        m = math.sqrt(a * b) if log_domain else a / 2 + b / 2
        return (ax > m) - (ax < m)
    X, A, B = Fraction(ax), Fraction(a), Fraction(b)
    if log_domain:  # log X - log A  vs  log B - log X   <=>   X * X  vs  A * B
        d = X * X - A * B
    else:  # (X - A)  vs  (B - X)
        d = (X - A) - (B - X)
    return (d > 0) - (d < 0)


def _round_one(t: OracleTable, x: float, rounding: Rounding, r: float, boundaries: str) -> int:
    """Index into the table of the rounded finite x (may be a virtual end)."""
    vals = t.vals
    i = bisect.bisect_right(vals, x) - 1  # vals[i] <= x < vals[i + 1]
    if i < 0:
        return -1  # below the lower virtual value
    if i == len(vals) - 1:
        return i  # at or above the upper virtual value
    lo, hi = vals[i], vals[i + 1]
    if x == lo:
        return i
    if rounding is Rounding.TOWARD_ZERO:
        return i if abs(lo) < abs(hi) else i + 1
    if rounding is Rounding.STOCHASTIC:
        p = (Fraction(x) - Fraction(lo)) / (Fraction(hi) - Fraction(lo))
        return i + 1 if Fraction(r) < p else i
    s = _compare_to_boundary(t, x, lo, hi, boundaries)
    if s == 0:
        if t.rule.ties_up:
            return i + 1
        return _tie(t, i, rounding)
    toward_larger = s > 0
    larger = i + 1 if abs(hi) > abs(lo) else i
    return larger if toward_larger else 2 * i + 1 - larger


def _overflow_code(fmt: Format, t: OracleTable, negative: bool, overflow: Overflow) -> int:
    if overflow is Overflow.SATURATE:
        return t.codes[1] if negative else t.codes[-2]
    if overflow is Overflow.INF:
        c = t.neg_inf_code if negative else t.pos_inf_code
        if c is not None:
            return c  # an end without Inf (unsigned P3109's negative end) falls through to NaN
    return fmt.canonical_nan_code(negative)


def _check_policies(fmt: Format, t: OracleTable, overflow: Overflow) -> None:
    if overflow is Overflow.INF and t.pos_inf_code is None:
        raise FormatError(f"{fmt} has no Inf: overflow='inf' is impossible")
    if overflow is Overflow.NAN and fmt.canonical_nan_code() is None:
        raise FormatError(f"{fmt} has no NaN: overflow='nan' is impossible")


def oracle_encode(fmt: Format, x, rounding: Rounding | str = Rounding.NEAREST_EVEN,
                  overflow: Overflow | str | None = None, rand=None,
                  nan: NanInput | str = NanInput.RAISE, *, boundaries: str = "exact") -> np.ndarray:
    """Reference codes of ``x`` in ``fmt`` (same shape, ``fmt.code_dtype``); see module docstring.

    rand: for STOCHASTIC, the uniform [0, 1) draws, one per element of x in C order (what
    ``fmt.encode(x, "stochastic", seed=s)`` draws is ``np.random.default_rng(s).random(x.size)``).
    boundaries: "exact" (default) or "format" (the float64 boundaries of logfmt.py).
    """
    rounding = Rounding.parse(rounding)
    overflow = fmt.default_overflow if overflow is None else Overflow.parse(overflow)
    nan = NanInput.parse(nan)
    if boundaries not in ("exact", "format"):
        raise ValueError(f"boundaries must be 'exact' or 'format', got {boundaries!r}")
    t = oracle_table(fmt)
    _check_policies(fmt, t, overflow)
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        a = a.astype(np.float64)
    flat = [float(v) for v in a.reshape(-1).tolist()]
    if rounding is Rounding.STOCHASTIC:
        if rand is None:
            raise ValueError("STOCHASTIC rounding needs rand= (one uniform draw per element)")
        draws = [float(v) for v in np.asarray(rand, dtype=np.float64).reshape(-1).tolist()]
        if len(draws) != len(flat):
            raise ValueError(f"rand has {len(draws)} draws for {len(flat)} inputs")
    else:
        draws = [0.0] * len(flat)
    special = t.rule.special_input
    out = []
    for xv, r in zip(flat, draws):
        neg = math.copysign(1.0, xv) < 0
        if special is not None:
            c = special(xv)
            if c is not None:
                out.append(c)
                continue
        if math.isnan(xv):
            c = fmt.canonical_nan_code(neg)
            if c is None:
                if nan is NanInput.RAISE:
                    raise FormatError(f"{fmt} has no NaN code and the input holds NaN")
                c = t.zero_code  # nan="zero": NaN reads as 0.0 (the nearest value if 0 is absent)
                if c is None:
                    c = t.codes[_round_one(t, 0.0, Rounding.NEAREST_EVEN, 0.0, boundaries)]
            out.append(c)
            continue
        if math.isinf(xv):
            c = t.neg_inf_code if neg else t.pos_inf_code
            out.append(c if c is not None else _overflow_code(fmt, t, neg, overflow))
            continue
        j = _round_one(t, xv, rounding, r, boundaries)
        n = len(t.vals)
        if j <= 0 or j >= n - 1:  # a virtual value or beyond: overflow at that end
            low = j <= 0  # (the negative end, except for tables of positive values only)
            if rounding is Rounding.TOWARD_ZERO and t.rule.toward_zero_saturates:
                out.append(t.codes[1] if low else t.codes[-2])
            else:
                out.append(_overflow_code(fmt, t, low, overflow))
            continue
        c = t.codes[j]
        if t.vals[j] == 0.0 and neg and t.neg_zero_code is not None:
            c = t.neg_zero_code
        out.append(c)
    return np.array(out, dtype=fmt.code_dtype).reshape(a.shape)
