"""INTn: two's-complement signed, unsigned, and narrow (symmetric) integer grids, 2..16 bits.

Layout: signed codes are the two's-complement bit pattern (code = value mod 2**bits); unsigned
codes are the value. Narrow drops -2**(bits-1) (code 1 followed by zeros): that code is unused,
decodes to NaN and is never produced. Values are integers; the scale lives in the quantizer.
Ties of NEAREST_EVEN go to the even integer. Overflow always saturates (INT has no Inf/NaN).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.kernels import FastKernelRouting
from fmtlab.formats.capabilities import Subsystem, register_handler


@dataclasses.dataclass(frozen=True)
class IntFormat(FastKernelRouting, Format):
    """Integer grid. ``IntFormat(8)`` = int8 [-128, 127]; ``narrow=True`` = int8_sym [-127, 127];
    ``unsigned=True`` = uint8 [0, 255]."""

    nbits: int
    unsigned: bool = False
    narrow: bool = False

    family = "int"

    def __post_init__(self) -> None:
        if not isinstance(self.nbits, (int, np.integer)) or not 2 <= self.nbits <= 16:
            raise FormatError(f"INT formats take 2..16 bits, got bits={self.nbits!r}")
        if self.narrow and self.unsigned:
            raise FormatError("narrow=True needs a signed INT format (unsigned grids are not symmetric)")

    @property
    def bits(self) -> int:
        return int(self.nbits)

    @property
    def name(self) -> str:
        if self.unsigned:
            return f"uint{self.bits}"
        return f"int{self.bits}_sym" if self.narrow else f"int{self.bits}"

    def _build_values(self) -> np.ndarray:
        n = self.bits
        codes = np.arange(1 << n, dtype=np.int64)
        if self.unsigned:
            return codes.astype(np.float64)
        vals = np.where(codes >= (1 << (n - 1)), codes - (1 << n), codes).astype(np.float64)
        if self.narrow:
            vals[1 << (n - 1)] = np.nan
        return vals

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        return (codes & 1) == 0  # two's complement: code parity == value parity

    def _virtual_above(self) -> tuple[float, bool]:
        top = (1 << (self.bits - 1)) - 1 if not self.unsigned else (1 << self.bits) - 1
        return float(top + 1), (top + 1) % 2 == 0

    def _virtual_below(self) -> tuple[float, bool]:
        if self.unsigned:
            return -1.0, False
        low = -(1 << (self.bits - 1)) + (1 if self.narrow else 0)
        return float(low - 1), (low - 1) % 2 == 0

    @property
    def min_normal(self) -> float:
        return 1.0

    @property
    def signed(self) -> bool:
        return not self.unsigned


def cli_layout(fmt: IntFormat) -> str:
    """The ``fmtlab formats`` layout line of an INT format."""
    if fmt.unsigned:
        return f"unsigned integer [0, {fmt.max:g}]"
    if fmt.narrow:
        return f"two's complement, narrow [{fmt.min:g}, {fmt.max:g}] (1{'0' * (fmt.bits - 1)} unused)"
    return f"two's complement [{fmt.min:g}, {fmt.max:g}]"


register_handler(Subsystem.ORACLE, IntFormat.family, "fmtlab.formats.oracle:even_integer_rule")
register_handler(Subsystem.STRATEGY, IntFormat.family, "fmtlab.formats.strategies:int_family")
register_handler(Subsystem.CLI, IntFormat.family, cli_layout)
