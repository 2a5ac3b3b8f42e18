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

Hardware (the parts below, the RTL of :mod:`fmtlab.hw.rtl_ftz`): operand decode is a zero test of
the exponent field; the significand product has a constant hidden 1 and always lies in [1, 4)
(1-bit normalisation, no LZC); the adder has no pre-normalisation, no minimum-exponent limit on
the normalising shift, no denormalising shift and no Inf/NaN logic: a flush test and a saturating
select instead.
"""

from __future__ import annotations

from fractions import Fraction

from fmtlab.hw.blocks import Part, Styles
from fmtlab.hw.components import (BarrelShifter, Comparator, Gates, Incrementer, LeadingZeroCounter,
                                  Mux, OrTree, Register, XorRow, adder, clog2)
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
    wx = min(we, _signed_width(x_lo, x_hi))
    return dict(np=np_, pc=pc, wm=wm, wa=wa, n=n, we=we, wx=wx, x_lo=x_lo, x_hi=x_hi)


def _signed_width(lo: int, hi: int) -> int:
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def ftz_parts(a: FloatView, b: FloatView, acc: FloatAcc, st: Styles) -> list[Part]:
    """Parts of an FTZ / no-special FP MAC (module docstring), in RTL order."""
    g = ftz_geometry(a, b, acc)
    np_, pc, wm, wa, n, we, wx = (g[k] for k in ("np", "pc", "wm", "wa", "n", "we", "wx"))
    lzw = clog2(max(n, 2))
    live = min(np_, pc)
    ma, mb = a.man_bits, b.man_bits
    parts = [
        Part(f"{a.name} zero (exponent field 0)", Gates.of(OR2=a.exp_bits - 1, INV=1)),
        Part(f"{b.name} zero (exponent field 0)", Gates.of(OR2=b.exp_bits - 1, INV=1)),
        # (1.F)(1.G) = 1 + F + G + F*G: the hidden ones are constants, so only the F x G partial
        # products need AND gates; the reduction is that of the full multiplier
        Part(f"significand multiplier {a.sig_bits}x{b.sig_bits} (hidden 1 constant)",
             _HiddenOneMultiplier(a.sig_bits, b.sig_bits)),
        Part("product sign + zero", Gates.of(XOR2=1, OR2=1)),
        Part("product exponent adder", adder(max(a.exp_bits, b.exp_bits) + 1, st.adder)),
        Part("product exponent bias (constant) + normalise carry", Incrementer(wx)),
        Part("product 1-bit normalise", Mux(np_ - 1)),
        Part("acc zero (exponent field 0)", Gates.of(OR2=acc.exp_bits - 1, INV=1)),
        Part("acc exponent (E - bias)", Incrementer(acc.exp_bits)),
        Part("magnitude compare (exponent, significand)", Comparator(we + live)),
        Part("magnitude compare (zero-padded bits)", OrTree(wm - live)),
        Part("exponent equal", Gates.of(XNOR2=we, AND2=we - 1)),
        Part("zero operands (select gating)", Gates.of(AND2=2, OR2=1)),
        Part("swap", Mux(live + we), 2),
        Part("swap (zero-padded bits)", Gates.of(AND2=2 * (wm - live))),
        Part("exponent difference", adder(we, st.adder)),
        Part("shift clamp (compare with a constant)", OrTree(we)),
        Part("shift clamp select", Mux(clog2(wa + 1))),
        Part("alignment shifter (sticky)", BarrelShifter(wa, wa, "right", sticky=True)),
        Part("effective subtract (XOR row)", XorRow(wa + 1)),
        Part("significand adder", adder(wa + 2, st.adder)),
        Part("leading-zero counter", LeadingZeroCounter(n)),
        Part("normalise shifter", BarrelShifter(n, n - 1, "right")),
        Part("result exponent (bt + 1 + bias - lz)", adder(we, st.adder)),
        Part("sticky OR", OrTree(max(n - pc - 1, 1))),
        Part("round decision", Gates.of(AND2=2, OR2=1)),
        Part("round incrementer", Incrementer(acc.exp_bits + acc.man_bits)),
        Part("flush test (exponent < 1)", OrTree(acc.exp_bits)),
        Part("overflow compare (exponent > max)", Comparator(we)),
        Part("zero / flush / saturate select", Gates.of(AND2=acc.bits, OR2=acc.bits)),
        Part("result sign", Gates.of(AND2=2, OR2=1)),
        Part("accumulator register", Register(acc.bits)),
    ]
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

