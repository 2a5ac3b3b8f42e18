"""How the MAC hardware sees element formats and MX block formats.

MX block formats are :class:`fmtlab.formats.BlockFormat` values (defined once, shared with the
quantizers); :func:`parse_operand` accepts them by name and :func:`check_mx_operand` states
which ones the MAC model covers.

Operand views, looked up per format family through the capability protocol
(:data:`fmtlab.formats.capabilities.Subsystem.HW_OPERAND`; this module registers the handlers of
the built-in families):

- :class:`FixedView` (INT, UINT, dINT, base-2 log, decode LUT): every value is an integer
  ``ival`` times ``2**-frac``. ``lut[code]`` is the integer the *hardware* computes for each
  code; codes that the format leaves unused (INT ``_sym``'s -2^(n-1), the -0 code of dINT and
  log) decode as the structure computes them (two's complement value; +/-0 -> 0), so the
  datapath and the RTL agree on every bit pattern. dINT: sign-magnitude; magnitude code 0 is
  zero, codes 1..nd the denormal levels (``level * 2**frac``, no multiplier needed for 0.5),
  codes above are the integers ``code - nd``, shifted left by ``frac``. log2: magnitude code
  m >= 1 is ``1 << (m - 1)`` in units of ``2**-kmax`` (a shift, no multiplier).
- A family without a handler (e.g. ``lookup`` formats made with
  ``fmtlab.formats.LookupFormat``) is seen through a decode LUT (:func:`decode_lut_view`): a
  2**bits-entry table of the narrowest exact two's-complement fixed-point words.
- :class:`FloatView` (minifloats, FP16, BF16): sign, exponent field, mantissa; hidden bit set
  when the exponent field is nonzero; ``lsb_exp`` of a code is ``max(E, 1) - bias - man_bits``.
  NaN / Inf codes come from the format's data facts (``nan_codes``, ``inf_codes``), decoded by
  the structure :func:`special_decode` picks.

Accumulators live in :mod:`fmtlab.hw.accumulators` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from functools import cached_property

import numpy as np

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import BlockFormat, Format, QuantSpec, ScaleFormat, get_block_format, get_format
from fmtlab.formats.capabilities import NotSupportedError, Subsystem, find_handler, register_handler
from fmtlab.hw.accumulators import (AccOverflow, AccRounding, Accumulator, FloatAcc, IntAcc,
                                    KulischAcc, parse_accumulator)

__all__ = ["FixedKind", "FixedView", "FloatView", "SpecialDecode", "special_decode", "view",
           "fixed_view", "decode_lut_view", "parse_operand", "check_mx_operand",
           "AccOverflow", "AccRounding", "Accumulator", "FloatAcc", "IntAcc", "KulischAcc",
           "parse_accumulator", "MAX_LUT_WIDTH", "MAX_SPECIAL_COMPARES"]

# ------------------------------------------------------------------------------------------
# operands: element formats and MX block formats
# ------------------------------------------------------------------------------------------


def check_mx_operand(bf: BlockFormat) -> BlockFormat:
    """``bf`` if the MX hardware model covers it: E8M0 block scales (OCP MX v1.0), minifloat
    elements, 2..1024 elements per block. The shared-exponent rule only changes which scale the
    quantizer picks, not the MAC, so every rule is accepted. Otherwise NotSupportedError."""
    if bf.scale_format is not ScaleFormat.E8M0 or bf.tensor_scale:
        raise NotSupportedError(f"{bf.name}: the MAC model covers E8M0-scaled (OCP MX) blocks only, "
                                f"not {bf.scale_format} block scales")
    if not isinstance(view(bf.element), FloatView):
        raise NotSupportedError(f"{bf.name}: the MX MAC model needs minifloat elements, got "
                                f"{bf.element.name} ({bf.element.family})")
    if not 2 <= bf.block <= 1024:
        raise FormatError(f"{bf.name}: MX units need 2..1024 elements per block, got block={bf.block}")
    return bf


def parse_operand(x: "str | Format | BlockFormat | QuantSpec") -> "Format | BlockFormat":
    """A format (registry name or object), an MX block format
    (:func:`fmtlab.formats.get_block_format`: ``mxfp8``, ``mxfp6_e2m3``, ``mxfp4_b16`` ...), or a
    parsed quantizer (:class:`fmtlab.formats.QuantSpec`: its block format, else its element
    format; the scales of a per-tensor/channel/group quantizer are outside the MAC)."""
    if isinstance(x, Format):
        return x
    if isinstance(x, QuantSpec):
        if x.block_format is not None:
            return check_mx_operand(x.block_format)
        if x.format is None:
            raise FormatError(f"quantizer {x} has no element format for a MAC operand")
        return x.format
    if isinstance(x, BlockFormat):
        return check_mx_operand(x)
    if not isinstance(x, str):
        raise TypeError(f"operand format must be a name or a format object, got {type(x).__name__}")
    bf = get_block_format(x)
    return check_mx_operand(bf) if bf is not None else get_format(x)


# ------------------------------------------------------------------------------------------
# element views
# ------------------------------------------------------------------------------------------


class FixedKind(enum.Enum):
    """How a fixed-point operand's integer ``ival`` is obtained from its code."""

    INT = "int"     # two's complement code
    UINT = "uint"   # unsigned code
    DINT = "dint"   # sign-magnitude; denormal levels, then integers (see the module doc)
    LOG = "log"     # sign-magnitude; magnitude code m >= 1 is 1 << (m - 1)
    LUT = "lut"     # any finite table: a decode LUT of 2**bits two's-complement words


#: Widest fixed-point word a decode LUT may produce (wider: FormatError naming the width).
MAX_LUT_WIDTH = 32


@dataclasses.dataclass(frozen=True)
class FixedView:
    """An integer-like operand: value = ival * 2**-frac (see the module doc)."""

    fmt: Format
    kind: FixedKind
    frac: int
    sig_bits: int  # multiplier input width (int/lut: all bits, two's complement; dint: magnitude)
    max_shift: int  # log: kmax (shift 0..kmax); dint: frac (integer levels); int: 0
    denormal_ivals: tuple[int, ...] = ()  # dint: ival of each denormal level
    ivals: tuple[int, ...] = ()  # lut: ival of every code (unused codes: 0)

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def sign_magnitude(self) -> bool:
        return self.kind in (FixedKind.DINT, FixedKind.LOG)

    @property
    def twos_complement(self) -> bool:
        """The multiplier input is a signed two's-complement word."""
        return self.kind in (FixedKind.INT, FixedKind.LUT)

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
        if self.kind is FixedKind.LUT:
            return np.array(self.ivals, dtype=np.int64)
        if self.kind is FixedKind.INT:
            return np.where(codes >= (1 << (n - 1)), codes - (1 << n), codes)
        if self.kind is FixedKind.UINT:
            return codes
        half = 1 << (n - 1)
        mag_code = codes & (half - 1)
        sign = np.where(codes >= half, -1, 1)
        if self.kind is FixedKind.LOG:
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
        if self.kind is FixedKind.LUT:
            return max(abs(v) for v in self.ivals)
        if self.kind is FixedKind.INT:
            return half
        if self.kind is FixedKind.UINT:
            return (1 << self.bits) - 1
        if self.kind is FixedKind.LOG:
            return 1 << self.max_shift
        n_int = half - 1 - len(self.denormal_ivals)
        return max([n_int << self.frac] + list(self.denormal_ivals))

    @property
    def name(self) -> str:
        return self.fmt.name


class SpecialDecode(enum.Enum):
    """How the hardware recognises a minifloat's NaN / Inf codes, read off the format's data
    facts (``nan_codes``, ``inf_codes``) by :func:`special_decode`."""

    NONE = "none"          # every code finite
    IEEE = "ieee"          # exponent all ones: fraction 0 is +/-Inf, anything else NaN
    ALL_ONES = "all_ones"  # NaN is S.1..1.1..1 (both signs), no Inf (OCP E4M3)
    NEG_ZERO = "neg_zero"  # NaN is the code 1.0..0.0..0, no Inf, no -0 (fnuz)
    CODES = "codes"        # any other set: one equality compare per listed code


#: Most NaN/Inf codes the generic (one compare per code) special-value decode handles.
MAX_SPECIAL_COMPARES = 64


@dataclasses.dataclass(frozen=True)
class FloatView:
    """A minifloat operand: sign, exp_bits, man_bits, bias; NaN/Inf from the format's data."""

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

    @cached_property
    def max_exp_field(self) -> int:
        """Largest exponent field of a finite code (from the value table)."""
        codes = np.flatnonzero(np.isfinite(self.values))
        return int(((codes >> self.man_bits) & ((1 << self.exp_bits) - 1)).max())

    @property
    def nan_codes(self) -> frozenset[int]:
        return self.fmt.nan_codes

    @property
    def inf_codes(self) -> frozenset[int]:
        return self.fmt.inf_codes

    @property
    def has_inf(self) -> bool:
        return bool(self.inf_codes)

    @property
    def has_nan(self) -> bool:
        return bool(self.nan_codes)

    @cached_property
    def special_decode(self) -> SpecialDecode:
        return special_decode(self)

    @cached_property
    def values(self) -> np.ndarray:
        return self.fmt.values()

    @property
    def name(self) -> str:
        return self.fmt.name


def special_decode(v: FloatView) -> SpecialDecode:
    """Which structure decodes ``v``'s NaN/Inf codes (see :class:`SpecialDecode`).

    The code sets are compared with those each structure recognises; a set matching none is
    decoded by one compare per code when there are at most :data:`MAX_SPECIAL_COMPARES` codes,
    and NotSupportedError otherwise (naming the format and what to register).
    """
    nan, inf = v.nan_codes, v.inf_codes
    if not nan and not inf:
        return SpecialDecode.NONE
    e, m = v.exp_bits, v.man_bits
    s = 1 << (e + m)
    top = ((1 << e) - 1) << m
    if inf == {top, top | s} and nan == {c | sg for c in range(top + 1, top + (1 << m))
                                         for sg in (0, s)}:
        return SpecialDecode.IEEE
    if not inf and nan == {top | ((1 << m) - 1), top | ((1 << m) - 1) | s}:
        return SpecialDecode.ALL_ONES
    if not inf and nan == {s} and v.fmt.negative_zero_code is None:
        return SpecialDecode.NEG_ZERO
    if len(nan) + len(inf) <= MAX_SPECIAL_COMPARES:
        return SpecialDecode.CODES
    raise NotSupportedError(
        f"hardware special-value decode not supported for {v.name}: its {len(nan)} NaN and "
        f"{len(inf)} Inf codes match no structure (IEEE all-ones exponent, S.1..1.1..1, 1.0..0) "
        f"and exceed {MAX_SPECIAL_COMPARES} compares; register RTL and HW_OPERAND handlers for "
        f"family {v.fmt.family!r} (fmtlab.formats.capabilities.register_handler)")


# ------------------------------------------------------------------------------------------
# HW_OPERAND handlers (one per family) and the generic decode-LUT view
# ------------------------------------------------------------------------------------------


def int_view(fmt: Format) -> FixedView:
    """INT (two's complement) / UINT: the code is the multiplier input."""
    kind = FixedKind.UINT if fmt.unsigned else FixedKind.INT
    return FixedView(fmt, kind, 0, fmt.bits, 0)


def dint_view(fmt: Format) -> FixedView:
    """dINT: sign-magnitude, denormal levels as binary fractions (at most 2**-8)."""
    levels = tuple(fmt.denormals)
    frac = 0
    while any((lv * (1 << frac)) % 1 for lv in levels):
        frac += 1
        if frac > 8:
            raise FmtlabError(f"{fmt.name}: denormal levels {levels} are not multiples of 2**-8; "
                              "the hardware model needs binary fractions")
    n_int = (1 << (fmt.bits - 1)) - 1 - len(levels)
    den = tuple(int(lv * (1 << frac)) for lv in levels)
    return FixedView(fmt, FixedKind.DINT, frac, max(n_int.bit_length(), 1), frac, den)


def log_view(fmt: Format) -> FixedView:
    """Base-2 log: a shift (other bases need a multiplier or a table; not modelled)."""
    if fmt.base != 2.0:
        raise FmtlabError(f"{fmt.name}: only base-2 log formats map to shifts in hardware "
                          f"(base {fmt.base!r} needs a multiplier or a table; not modelled)")
    return FixedView(fmt, FixedKind.LOG, fmt.kmax, 0, fmt.kmax)


def minifloat_view(fmt: Format) -> FloatView:
    return FloatView(fmt)


def e8m0_view(fmt: Format):
    raise FmtlabError("e8m0 is a block-scale format; use an MX format (e.g. 'mxfp8') instead")


def decode_lut_view(fmt: Format) -> FixedView:
    """The generic view of a family without a HW_OPERAND handler: a decode LUT into the
    narrowest exact two's-complement fixed-point operand.

    From the finite values v_c of ``fmt.values()``: f = the smallest number of fractional bits
    with every v_c * 2**f an integer; ival_c = v_c * 2**f (exact, from the binary fractions of
    the float64 values); w = the two's-complement width (with sign) holding every ival_c. Codes
    that are unused (NaN in ``values()`` but not NaN codes) decode to 0. A format with NaN or
    Inf codes has no exact fixed-point image: NotSupportedError. w > :data:`MAX_LUT_WIDTH`:
    FormatError naming the format and the width it would need.
    """
    if fmt.nan_codes or fmt.inf_codes:
        raise NotSupportedError(
            f"hardware operand view not supported for family {fmt.family!r} ({fmt.name}): it has "
            f"{len(fmt.nan_codes)} NaN and {len(fmt.inf_codes)} Inf codes, which a decode LUT into "
            "fixed point cannot hold; register a HW_OPERAND handler for the family "
            "(fmtlab.formats.capabilities.register_handler)")
    vals = fmt.values()
    fin = np.isfinite(vals)
    if not fin.any():
        raise FormatError(f"{fmt.name}: no finite values to decode")
    ratios = [float(v).as_integer_ratio() if ok else (0, 1) for v, ok in zip(vals, fin)]
    frac = max(d.bit_length() - 1 for _, d in ratios)  # denominators are powers of two
    ivals = tuple(n << (frac - (d.bit_length() - 1)) for n, d in ratios)
    width = max(max((iv.bit_length() for iv in ivals if iv >= 0), default=0),
                max(((-iv - 1).bit_length() for iv in ivals if iv < 0), default=0)) + 1
    if width > MAX_LUT_WIDTH:
        raise FormatError(
            f"{fmt.name}: no exact fixed-point operand of <= {MAX_LUT_WIDTH} bits: its values "
            f"need {frac} fractional bits and {width} bits with sign")
    return FixedView(fmt, FixedKind.LUT, frac, width, 0, (), ivals)


register_handler(Subsystem.HW_OPERAND, "int", int_view)
register_handler(Subsystem.HW_OPERAND, "dint", dint_view)
register_handler(Subsystem.HW_OPERAND, "log", log_view)
register_handler(Subsystem.HW_OPERAND, "minifloat", minifloat_view)
register_handler(Subsystem.HW_OPERAND, "e8m0", e8m0_view)


def fixed_view(fmt: Format) -> FixedView:
    """The fixed-point view of an integer-like format (FmtlabError for minifloats)."""
    v = view(fmt)
    if not isinstance(v, FixedView):
        raise FmtlabError(f"{fmt.name} ({fmt.family}) is not an integer-like format")
    return v


def view(fmt: Format) -> "FixedView | FloatView":
    """The hardware view of an element format: the family's HW_OPERAND handler, or the generic
    decode LUT (:func:`decode_lut_view`) for a family without one."""
    handler = find_handler(Subsystem.HW_OPERAND, fmt)
    return decode_lut_view(fmt) if handler is None else handler(fmt)

