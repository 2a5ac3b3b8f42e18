"""log-base-b: sign bit + exponent code; value = +/- b**(-k), k = 0 .. 2**(bits-1) - 2, plus zero.

Source: "Log_b Quant: Quantizing Language Models in Logarithmic Space" (the base b > 1 is any
real: 2, sqrt(2), 2**(1/4), or a fitted base). The largest magnitude is 1 before scaling.

Layout (sign-magnitude, magnitude codes ascending with magnitude so codes compare like values):
magnitude code 0 is zero; magnitude code m >= 1 is b**-(kmax + 1 - m) with kmax = 2**(bits-1) - 2,
so m = 2**(bits-1) - 1 is 1.0. The -0 code is unused (NaN) unless ``negative_zero=True``.

Rounding domain:
- ``domain="log"`` (default, the papers' round(log_b |x|)): the boundary between b**-(k+1) and
  b**-k is their geometric mean b**-(k+0.5); 1.0 overflows above b**0.5.
- ``domain="linear"``: arithmetic midpoints, the nearest value in the usual sense.
Underflow: magnitudes below ``underflow`` become zero (a tie at exactly ``underflow`` goes to
zero under NEAREST_EVEN). Default: b**-(kmax + 0.5) in the log domain (values that would round to
the next, missing level) and half the smallest magnitude in the linear domain.
NEAREST_EVEN ties between two nonzero levels go to the even k. Overflow saturates.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.kernels import FastKernelRouting
from fmtlab.formats.capabilities import Subsystem, register_handler


@dataclasses.dataclass(frozen=True)
class LogFormat(FastKernelRouting, Format):
    """Signed logarithmic grid {0, +/- b**-k}. See the module docstring for layout and rounding."""

    nbits: int
    base: float = 2.0
    domain: str = "log"
    underflow: float | None = None
    negative_zero: bool = False

    family = "log"

    def __post_init__(self) -> None:
        if not isinstance(self.nbits, (int, np.integer)) or not 2 <= self.nbits <= 16:
            raise FormatError(f"log formats take 2..16 bits, got bits={self.nbits!r}")
        b = float(self.base)
        object.__setattr__(self, "base", b)
        if not math.isfinite(b) or b <= 1.0:
            raise FormatError(f"log base must be a finite real > 1, got base={self.base!r}")
        if self.domain not in ("log", "linear"):
            raise FormatError(f"log rounding domain must be 'log' or 'linear', got domain={self.domain!r}")
        mags = self.magnitudes
        tiny = np.finfo(np.float64).tiny
        # the levels must be distinct normal float64 numbers, and in the log domain so must the
        # products L*U under the geometric-mean boundaries sqrt(L*U)
        floor = mags[1] * (mags[1] if self.domain == "log" else 1.0)
        if not (floor >= tiny and np.all(np.diff(mags) > 0)):
            raise FormatError(f"log{self.bits} with base={b!r}, domain={self.domain!r}: its "
                              f"{self.kmax + 1} levels b**-k underflow float64 (the smallest is "
                              f"{float(mags[1])!r}); use fewer bits or a base closer to 1")
        if self.underflow is not None:
            u = float(self.underflow)
            object.__setattr__(self, "underflow", u)
            if not (0.0 < u <= self.smallest_level):
                raise FormatError(f"underflow threshold must lie in (0, {self.smallest_level!r}], "
                                  f"got underflow={u!r}")

    @property
    def bits(self) -> int:
        return int(self.nbits)

    @property
    def kmax(self) -> int:
        return (1 << (self.bits - 1)) - 2

    @property
    def smallest_level(self) -> float:
        return float(self.base ** (-self.kmax))

    @property
    def underflow_threshold(self) -> float:
        if self.underflow is not None:
            return self.underflow
        if self.domain == "log":
            return float(self.base ** (-(self.kmax + 0.5)))
        return self.smallest_level / 2

    @property
    def name(self) -> str:
        s = f"log{self.bits}"
        if self.base != 2.0:
            s += f"_b{self.base!r}"
        if self.domain != "log":
            s += "_lin"
        if self.underflow is not None:
            s += f"_u{self.underflow!r}"
        if self.negative_zero:
            s += "_nz"
        return s

    @property
    def magnitudes(self) -> np.ndarray:
        k = np.arange(self.kmax, -1, -1, dtype=np.float64)
        return np.concatenate([[0.0], self.base ** (-k)])

    def _build_values(self) -> np.ndarray:
        mag = self.magnitudes
        vals = np.concatenate([mag, -mag])
        vals[len(mag)] = -0.0 if self.negative_zero else np.nan
        return vals

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        m = codes & ((1 << (self.bits - 1)) - 1)
        k = self.kmax + 1 - m
        return (m == 0) | (k % 2 == 0)

    def _virtual_above(self) -> tuple[float, bool]:
        return float(self.base), False  # k = -1 is odd

    def _bounds(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if self.domain == "linear":
            b = lo / 2 + hi / 2
        else:
            with np.errstate(invalid="ignore"):
                b = np.sign(hi) * np.sqrt(np.abs(lo) * np.abs(hi))
        t = self.underflow_threshold
        b = np.where((lo == 0) & (hi > 0), t, b)
        b = np.where((hi == 0) & (lo < 0), -t, b)
        return b

    @property
    def negative_zero_code(self) -> int | None:
        return (1 << (self.bits - 1)) if self.negative_zero else None

    @property
    def eps(self) -> float:
        """b - 1: the relative step between adjacent levels (1.0 is the largest level)."""
        return self.base - 1.0


def oracle_rule(fmt: LogFormat, vals: list[float], codes: list[int]):
    """Oracle facts: ties to even k (zero is even, 1.0 is k = 0), virtual ends +/-base (k = -1,
    odd), log- or linear-domain distances, the explicit underflow threshold above zero."""
    from fmtlab.formats.oracle import OracleRule

    pos = sorted((x for x in vals if x > 0), reverse=True)  # 1.0 first: k = 0, 1, 2, ...
    k_of = {x: k for k, x in enumerate(pos)}
    even = tuple(x == 0 or k_of[abs(x)] % 2 == 0 for x in vals)
    return OracleRule(even, -float(fmt.base), False, float(fmt.base), False,
                      log_domain=fmt.domain == "log", zero_threshold=fmt.underflow_threshold)


def cli_layout(fmt: LogFormat) -> str:
    """The ``fmtlab formats`` layout line of a log format."""
    nz = "-0 code used" if fmt.negative_zero else "-0 code unused"
    return (f"sign + magnitude code m: 0 (m=0) or {fmt.base:.6g}**-({fmt.kmax + 1}-m); "
            f"{fmt.domain}-domain rounding, underflow below {fmt.underflow_threshold:.4g}; {nz}")


register_handler(Subsystem.ORACLE, LogFormat.family, oracle_rule)
register_handler(Subsystem.STRATEGY, LogFormat.family, "fmtlab.formats.strategies:log_family")
register_handler(Subsystem.CLI, LogFormat.family, cli_layout)
