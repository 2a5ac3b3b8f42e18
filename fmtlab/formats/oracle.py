"""The reference oracle: slow, plain Python, obviously correct; every fast kernel is held to it.

``oracle_encode`` answers "which code does ``x`` become?" from the format's sorted ``values()``
table alone, by exact comparisons (``fractions.Fraction``), one element at a time. It shares no
code with the numba kernels (no ``grid``, no ``bounds``, no ``special_codes``); it reads only the
format's declared facts: ``values()``, ``canonical_nan_code()``, ``default_overflow``, the family
and, for log formats, ``domain``/``base``/``underflow_threshold``.

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
gives the largest finite value of x's sign (SATURATE), +/-Inf (INF) or the NaN of x's sign (NAN).
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

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding

__all__ = ["oracle_encode", "OracleTable", "oracle_table"]

BELOW, ABOVE = -1, -2  # pseudo-codes of the virtual values


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


def _minifloat_virtual(fmt, top: float, top_code: int) -> tuple[float, bool]:
    _, e = math.frexp(top)  # top = m * 2**e, 0.5 <= m < 1, so floor(log2 top) = e - 1
    return top + math.ldexp(1.0, e - 1 - fmt.man_bits), (top_code & 1) == 1


@lru_cache(maxsize=64)
def oracle_table(fmt: Format) -> OracleTable:
    """Build the oracle's table from ``fmt.values()`` (see the module docstring)."""
    v = fmt.values()
    family = fmt.family
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

    if family == "minifloat":
        even = [(c & 1) == 0 for c in codes]
        hi, hi_even = _minifloat_virtual(fmt, vals[-1], codes[-1])
        lo, lo_even = -hi, hi_even
    elif family in ("int", "dint"):
        even = [float(x).is_integer() and int(x) % 2 == 0 for x in vals]
        hi, lo = vals[-1] + 1.0, vals[0] - 1.0
        hi_even, lo_even = int(hi) % 2 == 0, int(lo) % 2 == 0
    elif family == "log":
        pos = sorted((x for x in vals if x > 0), reverse=True)  # 1.0 first: k = 0, 1, 2, ...
        k_of = {x: k for k, x in enumerate(pos)}
        even = [x == 0 or k_of[abs(x)] % 2 == 0 for x in vals]
        hi, lo = float(fmt.base), -float(fmt.base)
        hi_even = lo_even = False
    elif family == "e8m0":
        even = [False] * len(vals)  # unused: every E8M0 tie goes to the larger magnitude
        hi, lo, hi_even, lo_even = 2.0 ** 128, 0.0, False, False
    else:
        raise FormatError(f"the oracle knows no family {family!r} (format {fmt})")
    return OracleTable(tuple([lo] + vals + [hi]), tuple([BELOW] + codes + [ABOVE]),
                       tuple([lo_even] + even + [hi_even]), zero_code, neg_zero_code, pos_inf, neg_inf)


def _tie(t: OracleTable, i: int, rounding: Rounding) -> int:
    """Index chosen at an exact tie between entries i and i + 1."""
    smaller = i if abs(t.vals[i]) < abs(t.vals[i + 1]) else i + 1
    larger = 2 * i + 1 - smaller
    if rounding is Rounding.NEAREST_AWAY:
        return larger
    if t.even[i] != t.even[i + 1]:
        return i if t.even[i] else i + 1
    return smaller


def _compare_to_boundary(fmt: Format, x: float, lo: float, hi: float, boundaries: str) -> int:
    """Where |x| lies between the magnitudes a < b of the same-signed neighbours lo, hi:
    -1 nearer to a (the smaller magnitude), +1 nearer to b, 0 a tie."""
    ax, a, b = abs(x), min(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    if fmt.family == "log" and a == 0.0:
        t = fmt.underflow_threshold
        return (ax > t) - (ax < t)
    log_domain = fmt.family == "log" and fmt.domain == "log"
    if boundaries == "format":
        m = math.sqrt(a * b) if log_domain else a / 2 + b / 2
        return (ax > m) - (ax < m)
    X, A, B = Fraction(ax), Fraction(a), Fraction(b)
    if log_domain:  # log X - log A  vs  log B - log X   <=>   X * X  vs  A * B
        d = X * X - A * B
    else:  # (X - A)  vs  (B - X)
        d = (X - A) - (B - X)
    return (d > 0) - (d < 0)


def _round_one(fmt: Format, t: OracleTable, x: float, rounding: Rounding, r: float,
               boundaries: str, e8m0_ties_up: bool) -> int:
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
    s = _compare_to_boundary(fmt, x, lo, hi, boundaries)
    if s == 0:
        if e8m0_ties_up:
            return i + 1
        return _tie(t, i, rounding)
    toward_larger = s > 0
    larger = i + 1 if abs(hi) > abs(lo) else i
    return larger if toward_larger else 2 * i + 1 - larger


def _overflow_code(fmt: Format, t: OracleTable, negative: bool, overflow: Overflow) -> int:
    if overflow is Overflow.SATURATE:
        return t.codes[1] if negative else t.codes[-2]
    if overflow is Overflow.INF:
        return t.neg_inf_code if negative else t.pos_inf_code
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
    e8m0 = fmt.family == "e8m0"
    out = []
    for xv, r in zip(flat, draws):
        neg = math.copysign(1.0, xv) < 0
        if e8m0:
            out.append(_e8m0_one(fmt, t, xv, rounding, overflow, r, boundaries))
            continue
        if math.isnan(xv):
            c = fmt.canonical_nan_code(neg)
            if c is None:
                if nan is NanInput.RAISE:
                    raise FormatError(f"{fmt} has no NaN code and the input holds NaN")
                c = t.zero_code
            out.append(c)
            continue
        if math.isinf(xv):
            c = t.neg_inf_code if neg else t.pos_inf_code
            out.append(c if c is not None else _overflow_code(fmt, t, neg, overflow))
            continue
        j = _round_one(fmt, t, xv, rounding, r, boundaries, False)
        n = len(t.vals)
        if j <= 0 or j >= n - 1:  # a virtual value or beyond: overflow
            if rounding is Rounding.TOWARD_ZERO:
                out.append(t.codes[1] if neg else t.codes[-2])
            else:
                out.append(_overflow_code(fmt, t, neg, overflow))
            continue
        c = t.codes[j]
        if t.vals[j] == 0.0 and neg and t.neg_zero_code is not None:
            c = t.neg_zero_code
        out.append(c)
    return np.array(out, dtype=fmt.code_dtype).reshape(a.shape)


def _e8m0_one(fmt, t: OracleTable, x: float, rounding: Rounding, overflow: Overflow, r: float,
              boundaries: str) -> int:
    nan_code = fmt.canonical_nan_code()
    if math.isnan(x) or math.isinf(x) or x <= 0.0:
        return nan_code
    if x < 2.0 ** -127:
        return t.codes[1]  # code 0 = 2**-127: nothing smaller to round to
    j = _round_one(fmt, t, x, rounding, r, boundaries, True)
    if j >= len(t.vals) - 1:
        return t.codes[-2] if overflow is Overflow.SATURATE else nan_code
    return t.codes[j]
