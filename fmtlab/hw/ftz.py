"""Flush-to-zero, no-special-value floating-point MAC units: model, geometry and reference.

Many accelerators build FP8 MACs without IEEE's corner cases. An FTZ unit
(``make_unit(w, a, "fp32", ftz=True)``, name suffix ``ftz``) computes

    acc_out = FTZ(round_ne(acc_in + w * a))

where every operand and accumulator code with exponent field 0 is a (signed) zero -- subnormals
are flushed -- and every other code is a normal number, the all-ones exponent included (no NaN,
no Inf: OCP E4M3's S.1111.111 is 1.875 x 2^8 = 480, an fp32 accumulator's E = 255 is the binade
[2^128, 2^129)). The exact sum is rounded once to the accumulator's precision (nearest even); a
rounded result below the smallest normal becomes a zero of the result's sign, one above the
largest finite value saturates to it; an exact zero sum is -0 only when both addends are -0
(round-to-nearest rule).

Hardware (the parts below; the RTL is ``float_core`` of :mod:`fmtlab.hw.rtl_cores` with the FTZ
product): operand decode is a zero test of the exponent field; the significand product has a
constant hidden 1 and always lies in [1, 4) (1-bit normalisation, no LZC); the adder is the shared
single-path FP adder with ``ftz=True`` (:func:`fmtlab.hw.blocks.fp_adder_parts`,
:func:`fmtlab.hw.rtl_parts.fp_adder_module`): no pre-normalisation, no minimum-exponent limit on
the normalising shift, no denormalising shift and no Inf/NaN logic, a flush test and a saturating
select instead.
"""

from __future__ import annotations

from fractions import Fraction

from fmtlab.hw.blocks import Part, Styles, accumulator_register, fp_adder_parts, signed_width
from fmtlab.hw.components import Gates, Incrementer, Mux, adder
from fmtlab.hw.components import ArrayMultiplier as _Array
from fmtlab.hw.operands import FloatAcc, FloatView

__all__ = ["ftz_geometry", "ftz_parts", "ftz_decode", "ftz_mac_step"]


def ftz_geometry(a: FloatView, b: FloatView, acc: FloatAcc) -> dict[str, int]:
    """Widths of the FTZ datapath (shared by the model, the RTL and the reference).

    np: product significand bits; pc: accumulator significand bits; wm = max(pc, np); wa = wm + 3
    (guard, round, sticky); n = wa + 1 (sum with carry); we: signed exponent width holding every
    exponent, difference and biased result; wx: live bits of the product exponent."""
    np_ = a.sig_bits + b.sig_bits
    pc = acc.man_bits + 1
    wm = max(pc, np_)
    wa = wm + 3
    n = wa + 1
    x_lo = (1 - a.bias) + (1 - b.bias)
    x_hi = ((1 << a.exp_bits) - 1 - a.bias) + ((1 << b.exp_bits) - 1 - b.bias) + 1
    c_lo, c_hi = 1 - acc.bias, (1 << acc.exp_bits) - 1 - acc.bias
    lo = min(x_lo, c_lo) - n - 2
    hi = max(x_hi, c_hi) + acc.bias + 2
    span = max(abs(lo), abs(hi), hi - lo, abs(hi - lo))
    we = span.bit_length() + 1
    wx = min(we, signed_width(x_lo, x_hi))
    return dict(np=np_, pc=pc, wm=wm, wa=wa, n=n, we=we, wx=wx, x_lo=x_lo, x_hi=x_hi)


def ftz_parts(a: FloatView, b: FloatView, acc: FloatAcc, st: Styles) -> list[Part]:
    """Parts of an FTZ / no-special FP MAC (module docstring), in RTL order: the product (zero
    tests, hidden-one multiplier, exponent sum with the normalise carry folded in, 1-bit
    normalisation), then the shared single-path FP adder with ``ftz=True``
    (:func:`fmtlab.hw.blocks.fp_adder_parts`) and the accumulator register."""
    g = ftz_geometry(a, b, acc)
    np_, we, wx = g["np"], g["we"], g["wx"]
    parts = [
        Part(f"{a.name} zero (exponent field 0)", Gates.of(NOR2=a.exp_bits - 1, INV=1)),
        Part(f"{b.name} zero (exponent field 0)", Gates.of(NOR2=b.exp_bits - 1, INV=1)),
        # (1.F)(1.G) = 1 + F + G + F*G: the hidden ones are constants, so only the F x G partial
        # products need AND gates; the reduction is that of the full multiplier
        Part(f"significand multiplier {a.sig_bits}x{b.sig_bits} (hidden 1 constant)",
             _HiddenOneMultiplier(a.sig_bits, b.sig_bits)),
        Part("product sign + zero", Gates.of(XOR2=1, OR2=1)),
        Part("product exponent adder", adder(max(a.exp_bits, b.exp_bits), st.adder)),  # carry-out: top bit
        Part("product exponent bias (constant) + normalise carry", Incrementer(wx)),
        Part("product 1-bit normalise", Mux(np_ - 1)),
    ]
    parts += fp_adder_parts(np_, we, acc, st, False, wx=wx, x_special=False, ftz=True)
    parts.append(accumulator_register(acc.bits))
    return parts


class _HiddenOneMultiplier(_Array):
    """An n x m array multiplier whose operands' top bits are the constant 1: (n-1)(m-1) AND2
    partial-product bits, the full multiplier's reduction (FA, HA)."""

    def cells(self):
        c = super().cells()
        c["AND2"] = (int(self.n) - 1) * (int(self.m) - 1)
        return c


# ------------------------------------------------------------------------------ reference


def ftz_decode(code: int, v: "FloatView | FloatAcc") -> Fraction:
    """Value of ``code`` as an FTZ / no-special unit reads it (exponent field 0: zero)."""
    e, m = v.exp_bits, v.man_bits
    s = (code >> (e + m)) & 1
    E = (code >> m) & ((1 << e) - 1)
    F = code & ((1 << m) - 1)
    if E == 0:
        return Fraction(0)
    val = Fraction((1 << m) + F, 1 << m) * (Fraction(2) ** (E - v.bias))
    return -val if s else val


def _sign(code: int, v) -> int:
    return (code >> (v.exp_bits + v.man_bits)) & 1


def ftz_mac_step(acc_code: int, w_code: int, a_code: int, w: FloatView, a: FloatView, acc: FloatAcc) -> int:
    """The accumulator code an FTZ unit writes for ``acc + w * a`` (exact, module docstring)."""
    ec, mc = acc.exp_bits, acc.man_bits
    allone = (1 << ec) - 1
    p = ftz_decode(w_code, w) * ftz_decode(a_code, a)
    c = ftz_decode(acc_code, acc)
    v = p + c
    if v == 0:
        ps = _sign(w_code, w) ^ _sign(a_code, a)
        zero_sign = (ps & _sign(acc_code, acc)) if (p == 0 and c == 0) else 0
        return zero_sign << (ec + mc)
    sgn = 1 if v < 0 else 0
    mag = -v if sgn else v
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** e > mag:
        e -= 1
    elif Fraction(2) ** (e + 1) <= mag:
        e += 1
    q = mag / (Fraction(2) ** (e - mc))  # in [2^mc, 2^(mc+1))
    r = q.numerator // q.denominator
    rem = q - r
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r & 1):
        r += 1
    if r == 1 << (mc + 1):
        r >>= 1
        e += 1
    E = e + acc.bias
    if E < 1:
        return sgn << (ec + mc)
    if E > allone:
        return (sgn << (ec + mc)) | (allone << mc) | ((1 << mc) - 1)
    return (sgn << (ec + mc)) | (E << mc) | (r - (1 << mc))

