"""E8M0: the OCP MX shared-scale format, 8 exponent bits, no sign, no mantissa, no zero.

Value of code E (0..254): 2**(E - 127); code 255 is NaN. There is no zero and no negative value.
Encoding (bit-identical to ml_dtypes >= 0.7's float8_e8m0fnu for float32 and float64 inputs):
- positive x >= 2**-127: nearest power of two, a tie (x = 1.5 * 2**e) goes up (NEAREST_EVEN and
  NEAREST_AWAY agree here: ml_dtypes rounds these ties up); TOWARD_ZERO truncates to
  2**floor(log2 x); STOCHASTIC goes up with probability (x - 2**e) / 2**e. The float32 subnormal
  range follows the same rule: 8.2e-39 lies between 2**-127 and 2**-126, below their tie
  1.5 * 2**-127, so it encodes to code 0 (ml_dtypes 0.6 gave code 1 to every x > 2**-127 there);
- 0 < x < 2**-127: code 0 (2**-127) for every rounding mode (there is no zero to round to);
- zero, negative, NaN, Inf, and x beyond the largest finite code's rounding range give NaN (255),
  or 254 for x beyond the range with ``overflow="saturate"``.
Inputs are processed in bounded chunks (``CHUNK`` elements), so memory stays O(chunk) beyond the
input and output arrays.
Quantizers usually compute E8M0 scales from exponents directly (MX rules); this class is for
bit-level inspection and the registry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, register_handler
from fmtlab.formats.rounding import Overflow, Rounding

NAN_CODE = 255
CHUNK = 1 << 20  #: elements per encoding chunk (bounds the temporaries to a few MiB)


@dataclasses.dataclass(frozen=True)
class E8M0(Format):
    """Unsigned power-of-two scale format (OCP Microscaling v1.0, section 5.4)."""

    family = "e8m0"

    @property
    def bits(self) -> int:
        return 8

    @property
    def name(self) -> str:
        return "e8m0"

    def _build_values(self) -> np.ndarray:
        v = np.ldexp(1.0, np.arange(256) - 127)
        v[NAN_CODE] = np.nan
        return v

    def _virtual_above(self) -> tuple[float, bool]:
        return 2.0 ** 128, True

    def _virtual_below(self) -> tuple[float, bool]:
        return 0.0, True

    @property
    def default_overflow(self) -> Overflow:
        return Overflow.NAN

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        return NAN_CODE

    @property
    def signed(self) -> bool:
        return False

    @property
    def eps(self) -> float:
        return 1.0

    def _encode_array(self, a, rounding, overflow, nan, rand):
        x = np.asarray(a).reshape(-1)
        r = None if rand is None else np.asarray(rand).reshape(-1)
        out = np.empty(x.shape, dtype=np.uint8)
        for start in range(0, x.size, CHUNK):
            stop = start + CHUNK
            out[start:stop] = _encode_chunk(x[start:stop], rounding, overflow,
                                            None if r is None else r[start:stop])
        return out


def _encode_chunk(x, rounding: Rounding, overflow: Overflow, rand) -> np.ndarray:
    """E8M0 codes (uint8) of one flat chunk; see the module docstring for the rules."""
    with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
        x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, NAN_CODE, dtype=np.int64)
    ok = np.isfinite(x) & (x > 0)
    xs = x[ok]
    mant, exp = np.frexp(xs)  # xs = mant * 2**exp, mant in [0.5, 1) (float32 subnormals are
    e = exp - 1               # normal in float64); xs = (2*mant) * 2**e, 2*mant in [1, 2)
    if rounding is Rounding.TOWARD_ZERO:
        up = np.zeros(xs.shape, dtype=bool)
    elif rounding is Rounding.STOCHASTIC:
        up = np.asarray(rand)[ok] < (2 * mant - 1.0)
    else:
        up = 2 * mant >= 1.5
    code = e + 127 + up
    code = np.where(code > 254, 254 if overflow is Overflow.SATURATE else NAN_CODE, code)
    code = np.where(e < -127, 0, code)  # below 2**-127: the smallest code, whatever the mode
    out[ok] = code
    return out.astype(np.uint8)


def oracle_rule(fmt: E8M0, vals: list[float], codes: list[int]):
    """Oracle facts (restating the module docstring): NaN, Inf, zero and negative inputs give
    NaN; 0 < x < 2**-127 gives code 0 for every mode; every tie goes up; the upper virtual value
    is 2**128 and reaching it overflows under every mode (TOWARD_ZERO included)."""
    import math

    from fmtlab.formats.oracle import OracleRule

    def special(x: float) -> int | None:
        if math.isnan(x) or math.isinf(x) or x <= 0.0:
            return NAN_CODE
        return 0 if x < 2.0 ** -127 else None

    return OracleRule((False,) * len(vals), 0.0, False, 2.0 ** 128, False, ties_up=True,
                      toward_zero_saturates=False, special_input=special)


def cli_layout(fmt: E8M0) -> str:
    return "EEEEEEEE: 2**(E-127), no sign, no zero; NaN 0xFF"


register_handler(Subsystem.ORACLE, E8M0.family, oracle_rule)
register_handler(Subsystem.STRATEGY, E8M0.family, "fmtlab.formats.strategies:e8m0_family")
register_handler(Subsystem.CLI, E8M0.family, cli_layout)
