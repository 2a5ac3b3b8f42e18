"""How the MAC hardware sees element formats, MX block formats and accumulators.

Operand views (one per element format family):

- :class:`FixedView` (INT, UINT, dINT, base-2 log): every value is an integer ``ival`` times
  ``2**-frac``. ``lut[code]`` is the integer the *hardware* computes for each code; codes that
  the format leaves unused (INT ``_sym``'s -2^(n-1), the -0 code of dINT and log) decode as the
  structure computes them (two's complement value; +/-0 -> 0), so the datapath and the RTL agree
  on every bit pattern. dINT: sign-magnitude; magnitude code 0 is zero, codes 1..nd the denormal
  levels (``level * 2**frac``, no multiplier needed for 0.5), codes above are the integers
  ``code - nd``, shifted left by ``frac``. log2: magnitude code m >= 1 is ``1 << (m - 1)`` in
  units of ``2**-kmax`` (a shift, no multiplier).
- :class:`FloatView` (minifloats, FP16, BF16): sign, exponent field, mantissa; hidden bit set
  when the exponent field is nonzero; ``lsb_exp`` of a code is ``max(E, 1) - bias - man_bits``.

Accumulators: :class:`IntAcc` (W-bit two's complement, wrap or saturate), :class:`FloatAcc`
(IEEE-like ExMy with Inf/NaN/subnormals, e.g. fp32, bf16, fp16; rounding nearest-even or toward
zero), :class:`KulischAcc` (exact fixed point covering every product, plus ``guard`` carry bits).
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import cached_property

import numpy as np

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import Format, get_format

# ------------------------------------------------------------------------------------------
# MX block formats
# ------------------------------------------------------------------------------------------

_MX_ALIASES = {"mxfp8": "fp8_e4m3", "mxfp6": "fp6_e3m2", "mxfp4": "fp4_e2m1"}


@dataclasses.dataclass(frozen=True)
class MXFormat:
    """An OCP MX block format: ``block`` elements of ``element`` sharing one E8M0 scale.

    Source: OCP Microscaling Formats (MX) Specification v1.0 (block 32, E8M0 scale, elements
    FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1). Names: ``mxfp8`` (= E4M3), ``mxfp8_e5m2``,
    ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4`` (= ``mxfp4_e2m1``), optional ``_b<block>``.
    """

    element: Format
    block: int = 32

    def __post_init__(self) -> None:
        if self.element.family != "minifloat":
            raise FormatError(f"MX elements must be minifloats, got {self.element.name}")
        if not isinstance(self.block, int) or not 2 <= self.block <= 1024:
            raise FormatError(f"MX block must be an int in 2..1024, got block={self.block!r}")

    @property
    def name(self) -> str:
        el = self.element.name
        short = {"fp8_e4m3": "mxfp8", "fp6_e3m2": "mxfp6", "fp4_e2m1": "mxfp4"}.get(el)
        base = short if short else "mx" + el
        return base if self.block == 32 else f"{base}_b{self.block}"

    @property
    def bits(self) -> int:
        return self.element.bits

    def __str__(self) -> str:
        return self.name


_MX_RE = re.compile(r"mx(fp\d+(?:_e\d+m\d+)?)(?:_b(\d+))?")


def parse_mx(name: str) -> MXFormat | None:
    """The MX format called ``name``, or None when the name is not an MX name."""
    m = _MX_RE.fullmatch(name.strip().lower())
    if not m:
        return None
    el = m.group(1)
    el = _MX_ALIASES.get("mx" + el, el)
    try:
        fmt = get_format(el)
    except FormatError:
        raise FormatError(f"unknown MX element format in {name!r}") from None
    return MXFormat(fmt, int(m.group(2)) if m.group(2) else 32)


def parse_operand(x: "str | Format | MXFormat") -> "Format | MXFormat":
    """A format (registry name or object) or an MX block format."""
    if isinstance(x, (Format, MXFormat)):
        return x
    if not isinstance(x, str):
        raise TypeError(f"operand format must be a name or a format object, got {type(x).__name__}")
    mx = parse_mx(x)
    return mx if mx is not None else get_format(x)


# ------------------------------------------------------------------------------------------
# element views
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FixedView:
    """An INT / UINT / dINT / base-2 log operand: value = ival * 2**-frac (see module doc)."""

    fmt: Format
    kind: str  # "int" (two's complement), "uint", "dint", "log"
    frac: int
    sig_bits: int  # multiplier input width (int: all bits, two's complement; dint: magnitude)
    max_shift: int  # log: kmax (shift 0..kmax); dint: frac (integer levels); int: 0
    denormal_ivals: tuple[int, ...] = ()  # dint: ival of each denormal level

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def sign_magnitude(self) -> bool:
        return self.kind in ("dint", "log")

    @property
    def mag_bits(self) -> int:
        return self.bits - 1 if self.sign_magnitude else self.bits

    @cached_property
    def lut(self) -> np.ndarray:
        """int64 ival of every code, as the hardware decodes it."""
        if self.max_abs >= 1 << 62:
            raise FmtlabError(f"{self.name}: fixed-point values up to 2^{self.max_abs.bit_length() - 1} "
                              "do not fit the 64-bit datapath")
        n = self.bits
        codes = np.arange(1 << n, dtype=np.int64)
        if self.kind == "int":
            return np.where(codes >= (1 << (n - 1)), codes - (1 << n), codes)
        if self.kind == "uint":
            return codes
        half = 1 << (n - 1)
        mag_code = codes & (half - 1)
        sign = np.where(codes >= half, -1, 1)
        if self.kind == "log":
            mag = np.where(mag_code > 0, np.left_shift(1, np.maximum(mag_code - 1, 0)), 0)
        else:
            nd = len(self.denormal_ivals)
            den = np.array((0,) + self.denormal_ivals, dtype=np.int64)
            mag = np.where(mag_code > nd, (mag_code - nd) << self.frac,
                           den[np.minimum(mag_code, nd)])
        return sign * mag

    @cached_property
    def max_abs(self) -> int:
        """Largest |ival| (exact Python int)."""
        half = 1 << (self.bits - 1)
        if self.kind == "int":
            return half
        if self.kind == "uint":
            return (1 << self.bits) - 1
        if self.kind == "log":
            return 1 << self.max_shift
        n_int = half - 1 - len(self.denormal_ivals)
        return max([n_int << self.frac] + list(self.denormal_ivals))

    @property
    def name(self) -> str:
        return self.fmt.name


@dataclasses.dataclass(frozen=True)
class FloatView:
    """A minifloat operand (sign, exp_bits, man_bits, bias, special-value convention)."""

    fmt: Format

    @property
    def exp_bits(self) -> int:
        return int(self.fmt.exp_bits)

    @property
    def man_bits(self) -> int:
        return int(self.fmt.man_bits)

    @property
    def bias(self) -> int:
        return int(self.fmt.bias)

    @property
    def special(self) -> str:
        return str(self.fmt.special)

    @property
    def subnormals(self) -> bool:
        return bool(self.fmt.subnormals)

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def sig_bits(self) -> int:
        return self.man_bits + 1

    @property
    def lsb_min(self) -> int:
        """Exponent of the LSB of the smallest (subnormal) values."""
        return 1 - self.bias - self.man_bits

    @cached_property
    def msb_max(self) -> int:
        """Exponent of the leading bit of the largest finite value."""
        return int(math.floor(math.log2(self.fmt.max)))

    @property
    def has_inf(self) -> bool:
        return bool(self.fmt.has_inf)

    @property
    def has_nan(self) -> bool:
        return bool(self.fmt.has_nan)

    @cached_property
    def values(self) -> np.ndarray:
        return self.fmt.values()

    @property
    def name(self) -> str:
        return self.fmt.name


def fixed_view(fmt: Format) -> FixedView:
    """The fixed-point view of an INT/UINT/dINT/base-2 log format (FmtlabError otherwise)."""
    fam = fmt.family
    if fam == "int":
        return FixedView(fmt, "uint" if fmt.unsigned else "int", 0, fmt.bits, 0)
    if fam == "dint":
        levels = tuple(fmt.denormals)
        frac = 0
        while any((lv * (1 << frac)) % 1 for lv in levels):
            frac += 1
            if frac > 8:
                raise FmtlabError(f"{fmt.name}: denormal levels {levels} are not multiples of 2**-8; "
                                  "the hardware model needs binary fractions")
        n_int = (1 << (fmt.bits - 1)) - 1 - len(levels)
        den = tuple(int(lv * (1 << frac)) for lv in levels)
        return FixedView(fmt, "dint", frac, max(n_int.bit_length(), 1), frac, den)
    if fam == "log":
        if fmt.base != 2.0:
            raise FmtlabError(f"{fmt.name}: only base-2 log formats map to shifts in hardware "
                              f"(base {fmt.base!r} needs a multiplier or a table; not modelled)")
        return FixedView(fmt, "log", fmt.kmax, 0, fmt.kmax)
    raise FmtlabError(f"{fmt.name} ({fam}) is not an integer-like format")


def view(fmt: Format) -> "FixedView | FloatView":
    """The hardware view of an element format."""
    if fmt.family == "minifloat":
        return FloatView(fmt)
    if fmt.family == "e8m0":
        raise FmtlabError("e8m0 is a block-scale format; use an MX format (e.g. 'mxfp8') instead")
    return fixed_view(fmt)


# ------------------------------------------------------------------------------------------
# accumulators
# ------------------------------------------------------------------------------------------

OVERFLOWS = ("wrap", "saturate")
ROUNDINGS = ("nearest_even", "toward_zero")


@dataclasses.dataclass(frozen=True)
class IntAcc:
    """W-bit two's-complement accumulator; ``overflow`` is ``wrap`` or ``saturate``."""

    width: int = 32
    overflow: str = "wrap"

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 2 <= self.width <= 64:
            raise FmtlabError(f"integer accumulator width must be 2..64, got width={self.width!r}")
        if self.overflow not in OVERFLOWS:
            raise FmtlabError(f"overflow must be one of {OVERFLOWS}, got overflow={self.overflow!r}")

    @property
    def name(self) -> str:
        return f"int{self.width}" + ("_sat" if self.overflow == "saturate" else "")


@dataclasses.dataclass(frozen=True)
class FloatAcc:
    """IEEE-754-like binary accumulator ExMy: bias 2^(E-1)-1, Inf, NaN, subnormals."""

    exp_bits: int = 8
    man_bits: int = 23
    rounding: str = "nearest_even"

    def __post_init__(self) -> None:
        if not 2 <= self.exp_bits <= 11 or not 1 <= self.man_bits <= 52:
            raise FmtlabError(f"float accumulator e{self.exp_bits}m{self.man_bits} is outside "
                              "e2..e11, m1..m52")
        if self.exp_bits + self.man_bits + 1 > 64:
            raise FmtlabError("float accumulators are at most 64 bits")
        if self.rounding not in ROUNDINGS:
            raise FmtlabError(f"rounding must be one of {ROUNDINGS}, got rounding={self.rounding!r}")

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
        return base + ("_rtz" if self.rounding == "toward_zero" else "")


@dataclasses.dataclass(frozen=True)
class KulischAcc:
    """Exact fixed-point accumulator wide enough for every product of the operand pair, plus
    ``guard`` carry bits (2**guard worst-case products sum without overflow). Default 12
    (a 4096-long dot product)."""

    guard: int = 12

    def __post_init__(self) -> None:
        if not isinstance(self.guard, int) or not 0 <= self.guard <= 64:
            raise FmtlabError(f"Kulisch guard bits must be 0..64, got guard={self.guard!r}")

    @property
    def name(self) -> str:
        return "kulisch" if self.guard == 12 else f"kulisch{self.guard}"


Accumulator = "IntAcc | FloatAcc | KulischAcc"

_FLOAT_ACC = {"fp32": (8, 23), "float32": (8, 23), "fp16": (5, 10), "bf16": (8, 7),
              "tf32": (8, 10), "fp64": (11, 52)}


def parse_accumulator(spec: "str | IntAcc | FloatAcc | KulischAcc", overflow: str | None = None,
                      rounding: str | None = None) -> "IntAcc | FloatAcc | KulischAcc":
    """``int32``/``int<W>``, ``fp32``/``fp16``/``bf16``/``tf32``/``e<E>m<M>``, ``kulisch[<G>]``.

    A ``_sat`` suffix on int names means saturate; ``_rtz`` on float names round toward zero.
    ``overflow``/``rounding`` override the suffixes.
    """
    if isinstance(spec, (IntAcc, FloatAcc, KulischAcc)):
        acc = spec
        if overflow is not None and isinstance(acc, IntAcc):
            acc = dataclasses.replace(acc, overflow=overflow)
        if rounding is not None and isinstance(acc, FloatAcc):
            acc = dataclasses.replace(acc, rounding=rounding)
        return acc
    if not isinstance(spec, str):
        raise TypeError(f"accumulator must be a name or an accumulator object, got {type(spec).__name__}")
    s = spec.strip().lower()
    if m := re.fullmatch(r"int(\d+)(_sat)?", s):
        return IntAcc(int(m.group(1)), overflow or ("saturate" if m.group(2) else "wrap"))
    if m := re.fullmatch(r"kulisch(\d+)?", s):
        return KulischAcc(int(m.group(1)) if m.group(1) else 12)
    rtz = s.endswith("_rtz")
    base = s[:-4] if rtz else s
    rnd = rounding or ("toward_zero" if rtz else "nearest_even")
    if base in _FLOAT_ACC:
        e, mm = _FLOAT_ACC[base]
        return FloatAcc(e, mm, rnd)
    if m := re.fullmatch(r"e(\d+)m(\d+)", base):
        return FloatAcc(int(m.group(1)), int(m.group(2)), rnd)
    raise FmtlabError(f"unknown accumulator {spec!r}; use int<W> (e.g. int32, int32_sat), "
                      "fp32, fp16, bf16, tf32, e<E>m<M> (optionally _rtz), or kulisch[<guard>]")
