"""dINT: an integer grid whose code space also carries "denormal" levels between 0 and 1.

Source: "Enhancing Computation Efficiency in Large Language Models through Weight and Activation
Quantization" (EMNLP 2023), whose figure describes a "balanced quantization range with a separate
special value for small values". The paper's exact bit layout is not in our sources, so this is
OUR READING, as a family:

- sign-magnitude, ``bits`` bits: 1 sign bit + (bits-1) magnitude bits (balanced range +/-max);
- magnitude code 0 is zero, codes 1..len(denormals) are the denormal levels (ascending, each in
  (0, 1)), the remaining codes are the integers 1, 2, ..., max = 2**(bits-1) - 1 - len(denormals);
- default ``dint4``: magnitudes {0, 0.5, 1, 2, 3, 4, 5, 6}; ``dint8``: {0, 0.5, 1, ..., 126};
- the -0 code (sign 1, magnitude 0) is unused (decodes to NaN, never produced) unless
  ``negative_zero=True``, where negative inputs that round to zero give it (like a minifloat).

Ties of NEAREST_EVEN between integer levels go to the even integer (agreeing with INT); ties that
involve a denormal level go toward zero (0.25 -> 0, 0.75 -> 0.5). Overflow saturates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.kernels import FastKernelRouting
from fmtlab.formats.capabilities import Subsystem, register_handler


@dataclasses.dataclass(frozen=True)
class DInt(FastKernelRouting, Format):
    """Hybrid integer + denormal grid (see module docstring for the layout and our reading)."""

    nbits: int
    denormals: tuple[float, ...] = (0.5,)
    negative_zero: bool = False

    family = "dint"

    def __post_init__(self) -> None:
        if not isinstance(self.nbits, (int, np.integer)) or not 3 <= self.nbits <= 16:
            raise FormatError(f"dINT formats take 3..16 bits, got bits={self.nbits!r}")
        d = tuple(float(v) for v in self.denormals)
        object.__setattr__(self, "denormals", d)
        if any(not (0.0 < v < 1.0) for v in d):
            raise FormatError(f"dINT denormal levels must lie strictly between 0 and 1, got {d}")
        if list(d) != sorted(set(d)):
            raise FormatError(f"dINT denormal levels must be distinct and ascending, got {d}")
        if len(d) > (1 << (self.nbits - 1)) - 2:
            raise FormatError(f"{len(d)} denormal levels leave no integer level in {self.nbits} bits")

    @property
    def bits(self) -> int:
        return int(self.nbits)

    @property
    def name(self) -> str:
        base = f"dint{self.bits}"
        if self.denormals != (0.5,):
            base += "_d" + "_".join(repr(v) for v in self.denormals)
        if self.negative_zero:
            base += "_nz"
        return base

    @property
    def magnitudes(self) -> np.ndarray:
        """Magnitude of each magnitude code 0 .. 2**(bits-1) - 1."""
        n_int = (1 << (self.bits - 1)) - 1 - len(self.denormals)
        return np.concatenate([[0.0], self.denormals, np.arange(1, n_int + 1, dtype=np.float64)])

    def _build_values(self) -> np.ndarray:
        mag = self.magnitudes
        vals = np.concatenate([mag, -mag])
        vals[len(mag)] = -0.0 if self.negative_zero else np.nan
        return vals

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        v = np.abs(self._values[codes])
        return (v == np.floor(v)) & (np.fmod(v, 2.0) == 0)

    def _virtual_above(self) -> tuple[float, bool]:
        top = float(self.magnitudes[-1]) + 1.0
        return top, top % 2 == 0

    @property
    def negative_zero_code(self) -> int | None:
        return (1 << (self.bits - 1)) if self.negative_zero else None

    @property
    def min_normal(self) -> float:
        return 1.0

    @property
    def smallest_subnormal(self) -> float:
        return float(self.denormals[0]) if self.denormals else 1.0


def cli_layout(fmt: DInt) -> str:
    """The ``fmtlab formats`` layout line of a dINT format."""
    levels = ", ".join(f"{d:g}" for d in fmt.denormals)
    nz = "-0 code used" if fmt.negative_zero else "-0 code unused"
    lv = f"denormals {{{levels}}}, " if levels else ""
    return f"sign-magnitude: 0, {lv}integers 1..{fmt.max:g}; {nz}"


register_handler(Subsystem.ORACLE, DInt.family, "fmtlab.formats.oracle:even_integer_rule")
register_handler(Subsystem.STRATEGY, DInt.family, "fmtlab.formats.strategies:dint_family")
register_handler(Subsystem.CLI, DInt.family, cli_layout)
