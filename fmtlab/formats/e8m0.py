"""E8M0: the OCP MX shared-scale format, 8 exponent bits, no sign, no mantissa, no zero.

Value of code E (0..254): 2**(E - 127); code 255 is NaN. There is no zero and no negative value.
Encoding (bit-identical to ml_dtypes' float8_e8m0fnu for float32 inputs):
- positive x >= 2**-126: nearest power of two, a tie (x = 1.5 * 2**e) goes up (NEAREST_EVEN and
  NEAREST_AWAY agree here: ml_dtypes rounds these ties up); TOWARD_ZERO truncates to 2**floor(log2 x);
- 0 < x < 2**-126 (float32 subnormal range): code 1 (2**-126) if x > 2**-127, else code 0
  (for every rounding mode);
- zero, negative, NaN, Inf, and x beyond the largest finite code's rounding range give NaN (255).
Quantizers usually compute E8M0 scales from exponents directly (MX rules); this class is for
bit-level inspection and the registry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.formats.base import Format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding

NAN_CODE = 255


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
        with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
            x = np.asarray(a, dtype=np.float64).reshape(-1)
        out = np.full(x.shape, NAN_CODE, dtype=np.int64)
        ok = np.isfinite(x) & (x > 0)
        xs = x[ok]
        mant, exp = np.frexp(xs)  # xs = mant * 2**exp, mant in [0.5, 1)
        e = exp - 1  # xs = (2*mant) * 2**e, 2*mant in [1, 2)
        if rounding is Rounding.TOWARD_ZERO:
            up = np.zeros(xs.shape, dtype=bool)
        elif rounding is Rounding.STOCHASTIC:
            r = np.asarray(rand).reshape(-1)[ok]
            up = r < (2 * mant - 1.0)
        else:
            up = 2 * mant >= 1.5
        code = e + 127 + up
        tiny = xs < 2.0 ** -126
        code = np.where(tiny, np.where(xs > 2.0 ** -127, 1, 0), code)
        code = np.where(code > 254, 254 if overflow is Overflow.SATURATE else NAN_CODE, code)
        code = np.where(code < 0, 0, code)
        out[ok] = code
        return out.astype(np.uint8)
