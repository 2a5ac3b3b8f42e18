"""Rounding, overflow and NaN conventions, passed explicitly per call (never hidden constants).

Numeric convention: a rounding mode picks, for an input x between two adjacent representable
values L < x < U, which one the result is; exact inputs are returned unchanged by every mode.
"""

from __future__ import annotations

import enum

import numpy as np

from fmtlab.errors import parse_choice

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(value, key: str) -> bool:
    """A boolean option from a bool, the ints 0 / 1, or one of the strings true/false/1/0/yes/no/
    on/off (case-insensitive, surrounding blanks ignored); anything else raises ValueError naming
    ``key`` and the value (a non-empty string such as "no" is *not* read as truthy)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError(f"{key} must be a boolean (true/false, 1/0, yes/no, on/off), got {key}={value!r}")


class Rounding(enum.Enum):
    """How an inexact input is rounded to one of its two neighbours on the format's grid."""

    NEAREST_EVEN = "nearest_even"
    """Nearest value; a tie goes to the neighbour whose code is "even" (the format defines even:
    mantissa LSB 0 for minifloats, even integer for INT/dINT, even exponent for log formats)."""
    NEAREST_AWAY = "nearest_away"
    """Nearest value; a tie goes to the neighbour of larger magnitude."""
    TOWARD_ZERO = "toward_zero"
    """The neighbour of smaller magnitude (truncation). Never overflows a finite input."""
    STOCHASTIC = "stochastic"
    """U with probability (x - L) / (U - L), else L, from an explicit seed or numpy Generator."""

    @classmethod
    def parse(cls, value: "Rounding | str") -> "Rounding":
        return parse_choice(cls, value, "rounding")


class Overflow(enum.Enum):
    """What a finite input beyond the format's range becomes (after rounding says it overflows)."""

    SATURATE = "saturate"
    """The largest finite value of the same sign (the smallest value for the negative side)."""
    INF = "inf"
    """Infinity of the same sign (formats with Inf only)."""
    NAN = "nan"
    """The format's NaN (formats with NaN only)."""

    @classmethod
    def parse(cls, value: "Overflow | str") -> "Overflow":
        return parse_choice(cls, value, "overflow policy")


class NanInput(enum.Enum):
    """What a NaN input becomes in a format *without* a NaN code."""

    RAISE = "raise"
    """Raise FormatError naming the format (default: never a silent wrong answer)."""
    ZERO = "zero"
    """Encode NaN as the code of +0."""

    @classmethod
    def parse(cls, value: "NanInput | str") -> "NanInput":
        return parse_choice(cls, value, "NaN-input policy")


# Integer ids used by the numba kernels (kept in one place so kernels and Python agree).
ROUNDING_ID = {
    Rounding.NEAREST_EVEN: 0,
    Rounding.NEAREST_AWAY: 1,
    Rounding.TOWARD_ZERO: 2,
    Rounding.STOCHASTIC: 3,
}
OVERFLOW_ID = {Overflow.SATURATE: 0, Overflow.INF: 1, Overflow.NAN: 2}
