"""Datapath blocks composed from components: the parts lists MAC units are built from.

Each function returns a list of :class:`Part` (label, component, count). The structures mirror
the RTL that :mod:`fmtlab.hw.rtl` generates (same widths, same shifters), so the analytical model
and the synthesised netlists describe the same circuit.

Widths used below (FP path): a product of two minifloats has an ``Np = pa + pb``-bit significand
(``p = man_bits + 1``); the FP adder works on ``Wm = max(p_acc, Np)`` bits plus 3 guard bits
(guard, round, sticky) and one carry bit; exponents are carried on ``we`` bits, enough for the
product's and the accumulator's range with sign.
"""

from __future__ import annotations

import dataclasses

from fmtlab.hw.components import (AdderStyle, BarrelShifter, Comparator, Component, ConstRom,
                                  Decoder, Gates, Incrementer, LeadingZeroCounter, MultiplierStyle,
                                  Mux, OrTree, Register, XorRow, adder, clog2, multiplier)
from fmtlab.hw.operands import FixedKind, FixedView, FloatAcc, FloatView, SpecialDecode


@dataclasses.dataclass(frozen=True)
class Part:
    """``count`` copies of ``component`` playing the role ``label`` in a unit."""

    label: str
    component: Component
    count: float = 1.0


@dataclasses.dataclass(frozen=True)
class Styles:
    """Circuit choices: adder (ripple, brent_kung, kogge_stone), multiplier (array, booth);
    strings are parsed into the enums. ``ftz``: a flush-to-zero, no-special-value FP unit
    (:mod:`fmtlab.hw.ftz`) instead of the IEEE one."""

    adder: AdderStyle = AdderStyle.RIPPLE
    multiplier: MultiplierStyle = MultiplierStyle.ARRAY
    ftz: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "adder", AdderStyle.parse(self.adder))
        object.__setattr__(self, "multiplier", MultiplierStyle.parse(self.multiplier))


# ------------------------------------------------------------------------------------------
# fixed-point (INT, dINT, log2) products
# ------------------------------------------------------------------------------------------


def fixed_product_bits(a: FixedView, b: FixedView) -> int:
    """Width of the two's-complement product (magnitude bits + sign)."""
    m = a.max_abs * b.max_abs
    signed = a.kind is not FixedKind.UINT or b.kind is not FixedKind.UINT
    return max(m.bit_length(), 1) + (1 if signed else 0)


def dint_decode_parts(v: FixedView, other_width: int, label: str) -> list[Part]:
    """dINT magnitude decode: the integer significand is ``code - nd`` (a decrementer), the
    denormal levels are selected by a mux after the multiplier (one way per level, the level's
    product being a shifted copy of the other operand when the level is a power of two), and
    the zero code gates the product."""
    nd = len(v.denormal_ivals)
    parts = [Part(f"{label} decode (code - {nd})", Incrementer(v.mag_bits)),
             Part(f"{label} zero/denormal detect", Gates.of(OR2=v.mag_bits, AND2=nd + 1, INV=v.mag_bits))]
    extra = sum(max(bin(d).count("1") - 1, 0) for d in v.denormal_ivals)
    if extra:
        parts.append(Part(f"{label} denormal constant adders", adder(other_width), extra))
    parts.append(Part(f"{label} denormal select", Mux(other_width + v.frac + v.sig_bits, nd + 1)))
    parts.append(Part(f"{label} zero gating", Gates.of(AND2=other_width + v.frac + v.sig_bits)))
    return parts


def decode_lut_part(v: FixedView) -> Part:
    """The decode LUT of a table-only operand (:func:`fmtlab.hw.operands.decode_lut_view`):
    2**bits constant words of w = ``sig_bits`` bits (two's complement), priced as a
    :class:`fmtlab.hw.components.ConstRom`: a 2**bits:1 multiplexer tree per output bit with
    constant folding and shared sub-trees (at most ``w * (2**bits - 1)`` MUX2)."""
    return Part(f"decode LUT (2**{v.bits} x {v.sig_bits} bits)", ConstRom(v.ivals, v.sig_bits))


def fixed_product_parts(w: FixedView, a: FixedView, st: Styles) -> list[Part]:
    """Parts computing the fixed-point product of a weight and an activation code."""
    parts: list[Part] = []
    pbits = fixed_product_bits(w, a)
    logs = [v for v in (w, a) if v.kind is FixedKind.LOG]
    others = [v for v in (w, a) if v.kind is not FixedKind.LOG]
    if len(logs) == 2:
        e_bits = w.mag_bits + 1
        parts.append(Part("exponent adder", adder(w.mag_bits, st.adder)))
        parts.append(Part("one-hot decoder", Decoder(e_bits, outputs=w.max_shift + a.max_shift + 1)))
        parts.append(Part("zero detect + gating", Gates.of(OR2=2 * (w.mag_bits - 1), AND2=1)))
        parts.append(Part("sign", Gates.of(XOR2=1)))
    elif len(logs) == 1:
        lg, ot = logs[0], others[0]
        in_bits = ot.sig_bits if ot.kind is not FixedKind.DINT else ot.sig_bits + ot.frac + ot.mag_bits
        if ot.kind is FixedKind.DINT:
            parts += dint_decode_parts(ot, 0, ot.name)
        parts.append(Part("log shifter", BarrelShifter(in_bits, lg.max_shift, "left")))
        parts.append(Part("zero detect + gating", Gates.of(OR2=lg.mag_bits - 1, AND2=pbits)))
    else:
        wn = w.sig_bits
        an = a.sig_bits
        signed = w.twos_complement or a.twos_complement
        parts.append(Part(f"multiplier {wn}x{an}", multiplier(wn, an, signed, st.multiplier)))
        for v, other in ((w, a), (a, w)):
            if v.kind is FixedKind.DINT:
                parts += dint_decode_parts(v, other.sig_bits, v.name)
    for v in (w, a):
        if v.kind is FixedKind.LUT:
            parts.insert(0, decode_lut_part(v))
    if w.sign_magnitude or a.sign_magnitude:
        n_sm = int(w.sign_magnitude) + int(a.sign_magnitude)
        if n_sm == 2:
            parts.append(Part("product sign", Gates.of(XOR2=1)))
        parts.append(Part("conditional negate (XOR row; +1 as carry-in)", XorRow(pbits)))
    return parts


# ------------------------------------------------------------------------------------------
# floating-point products
# ------------------------------------------------------------------------------------------


def float_decode_parts(v: "FloatView | FloatAcc", label: str) -> list[Part]:
    """Hidden bit (OR of the exponent field), zero / Inf / NaN detection.

    These are OR / AND trees of the code's bits; synthesis maps a tree of 2-input ORs or ANDs
    to alternating NOR2 / NAND2 levels (1 GE per 2-input node, not OR2's / AND2's 1.33 in OSU
    0.18 um), as it does the leading-zero counter's valid tree
    (:class:`fmtlab.hw.components.LeadingZeroCounter`), so every node is priced as one NOR2 or
    NAND2. Measured (issue 21, session-6 note: the project's own ``float_decode`` RTL, outputs
    sign, significand, max(E, 1), flags, synthesised alone, Yosys 0.70, OSU 0.18 um GE;
    model incl. ``max(E, 1)``, was / now): fp8_e4m3 13.7 (19.3 / 15.0), fp8_e5m2 14.3
    (18.0 / 14.0), fp4_e2m1 4.0 (4.7 / 4.0), fp6_e3m2 8.3 (7.3 / 6.0), fp6_e2m3 7.0 (7.3 / 6.0),
    bf16 26.3 (32.7 / 25.0), fp16 31.2 (28.7 / 22.0): sum 104.8 GE, was 118.0 (+13%), now 92.0
    (-12%); in the product of two operands (flags included) synthesis finds less still."""
    e, m = v.exp_bits, v.man_bits
    g = dict(NOR2=(e - 1) + (m - 1) + 1)  # hidden bit; fraction nonzero; zero = ~(hidden | frac)
    how = SpecialDecode.IEEE if isinstance(v, FloatAcc) else v.special_decode
    if how is SpecialDecode.CODES:  # one (bits - 1)-AND compare per code (literals: INV), OR
        n = len(v.nan_codes) + len(v.inf_codes)
        g["NAND2"] = n * (v.bits - 1)
        g["INV"] = v.bits
        g["NOR2"] += max(len(v.nan_codes) - 1, 0) + max(len(v.inf_codes) - 1, 0)
    elif how is not SpecialDecode.NONE:
        g["NAND2"] = (e - 1) + 2  # exponent all ones; inf / nan
        if how is SpecialDecode.ALL_ONES:
            g["NAND2"] += m - 1  # NaN is S.1111.111: mantissa all ones
    return [Part(f"{label} decode (hidden bit, specials)", Gates.of(**g))]


def float_product_parts(a: FloatView, b: FloatView, st: Styles) -> list[Part]:
    """Decode both operands (hidden bit, E - 1 for normals, specials), multiply significands,
    sign and special flags. The exponent sum is added by the caller (its width differs)."""
    parts = float_decode_parts(a, a.name) + float_decode_parts(b, b.name)
    for v in (a, b):
        parts.append(Part(f"{v.name} exponent max(E, 1)", Gates.of(OR2=1, INV=1)))
    parts.append(Part(f"significand multiplier {a.sig_bits}x{b.sig_bits}",
                      multiplier(a.sig_bits, b.sig_bits, False, st.multiplier)))
    parts.append(Part("product sign + special flags", Gates.of(XOR2=1, **product_flag_gates(a, b))))
    return parts


def product_flag_gates(a: FloatView, b: FloatView) -> dict[str, int]:
    """Gates of the product's zero / Inf / NaN flags (the RTL's pnan, pinf, pzero). Inputs a
    format cannot produce are constant 0, so: with Inf, nan = nan_a | nan_b | inf_a & zero_b |
    inf_b & zero_a, inf and zero gated by it; NaN only (e.g. E4M3): nan = nan_a | nan_b and
    zero gated by it; neither (e.g. E2M1): zero = zero_a | zero_b. Priced as NAND2 / NOR2 (AND-OR
    logic maps to inverting gates; see :func:`float_decode_parts`)."""
    if a.has_inf or b.has_inf:
        return dict(NAND2=4, NOR2=3)
    if a.has_nan or b.has_nan:
        return dict(NAND2=1, NOR2=2)
    return dict(NOR2=1)


def signed_width(lo: int, hi: int) -> int:
    """Bits of the smallest two's-complement word holding every integer in [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def product_exponent_width(a: FloatView, b: FloatView, we: int) -> int:
    """Live bits of the product's leading-bit exponent: it lies in [t_lo, t_hi] (t_lo = lsb_min_a
    + lsb_min_b, t_hi = msb_max_a + msb_max_b + 1), so on a ``we``-bit bus every bit above this
    signed width is a copy of its sign -- wiring, which synthesis does not build."""
    return min(we, signed_width(a.lsb_min + b.lsb_min, a.msb_max + b.msb_max + 1))


def product_exponent_parts(a: FloatView, b: FloatView, we: int, st: Styles) -> list[Part]:
    """Exponent of the product's leading bit: (E_a - 1) + (E_b - 1) + constant, then the
    normalisation (full LZC + shifter when subnormal inputs can leave leading zeros, else a
    1-bit normalisation). Every intermediate exponent lies in the product's range, so the
    constant additions and the select work on :func:`product_exponent_width` bits, not ``we``."""
    np_ = a.sig_bits + b.sig_bits
    ew = max(a.exp_bits, b.exp_bits) + 1
    wx = product_exponent_width(a, b, we)
    # two zero-extended (ew - 1)-bit fields: an (ew - 1)-bit adder whose carry-out is the sum's
    # top bit (an FA on the two zero top bits would be the carry itself: a wire)
    parts = [Part("product exponent adder", adder(ew - 1, st.adder)),
             Part("product exponent bias (constant)", Incrementer(max(wx, ew)))]
    if a.subnormals or b.subnormals:
        lzw = clog2(max(np_, 2))
        parts += [Part("product LZC", LeadingZeroCounter(np_)),
                  Part("product normalise shifter", BarrelShifter(np_, np_ - 1, "right")),
                  Part("product exponent - lzc", adder(lzw, st.adder)),
                  Part("product exponent - lzc (borrow)", Incrementer(max(wx - lzw, 1)))]
    else:
        parts += [Part("product 1-bit normalise", Mux(np_)),
                  Part("product exponent - 1", Incrementer(wx)),
                  Part("product exponent select", Mux(wx))]
    return parts


# ------------------------------------------------------------------------------------------
# floating-point adder (exact operand + accumulator -> rounded accumulator)
# ------------------------------------------------------------------------------------------


def fp_adder_parts(np_: int, we: int, acc: FloatAcc, st: Styles, denormalise: bool,
                   label: str = "acc", acc_zero: bool = False, wx: int | None = None,
                   x_special: bool = True, ftz: bool = False) -> list[Part]:
    """Single-path FP adder: operand X (normalised ``np_``-bit significand, ``we``-bit exponent)
    plus accumulator A, rounded once to ``acc`` -- the parts of
    :func:`fmtlab.hw.rtl.fp_adder_module`, step by step.

    Steps (Muller et al., Handbook of FP arithmetic, ch. 7): decode A (pre-normalised with an
    LZC and a shifter when X can lie below A's normal range); compare (exponent, then
    significand) and swap; align the smaller by the exponent difference with sticky; add or
    subtract; LZC and normalising shift limited at the minimum exponent; optional
    denormalising right shift; round (sticky, decision, increment of the packed
    exponent|fraction); Inf/NaN/overflow select. ``acc_zero``: A is the constant 0 (the MX
    block-sum conversion), which removes decode, compare, swap, alignment and the adder.
    ``wx``: live signed width of X's exponent (None: ``we``; see :func:`product_exponent_width`):
    comparing it with A's exponent takes a ``wx``-bit comparator plus a check that A's high bits
    are all 0 or all 1 (A within X's range), not a ``we``-bit one. ``x_special``: X can be
    Inf/NaN (False when neither product operand has Inf or NaN: those inputs are constant 0).

    ``ftz``: the flush-to-zero, no-special-value variant (:mod:`fmtlab.hw.ftz`; ``fp_adder_module(...,
    ftz=True)``): A's decode is a zero test of its exponent field (no hidden-bit OR, no Inf/NaN),
    the normalising shift is the leading-zero count itself (no minimum-exponent limit), and the
    result is flushed below the smallest normal and saturated above the largest finite value
    instead of the Inf/NaN/overflow select. The compare, swap, alignment, significand adder,
    leading-zero counter, normalising shifter and rounding are the same parts.
    """
    if ftz and (denormalise or acc_zero):
        raise ValueError("an FTZ adder has no denormalise path and a real accumulator operand")
    wx = we if wx is None else min(wx, we)
    pc = acc.man_bits + 1
    wm = max(pc, np_)
    wa = wm + 3
    n = wa + 1
    lzw = clog2(max(n, 2))
    parts: list[Part] = []
    if ftz:
        parts += [Part(f"{label} zero (exponent field 0)", Gates.of(NOR2=acc.exp_bits - 1, INV=1)),
                  Part(f"{label} exponent (E - bias)", Incrementer(min(we, acc.exp_bits))),
                  Part("zero operands (select gating)", Gates.of(AND2=2, OR2=1))]
    elif not acc_zero:
        parts += float_decode_parts(acc, label)
        # E (exp_bits wide, zero-extended) + a constant: above bit exp_bits each sum bit is the
        # constant's bit, the carry or its complement -- wiring and inverters, not half adders
        parts.append(Part(f"{label} exponent (E + const)", Incrementer(min(we, acc.exp_bits))))
    if not acc_zero:
        if denormalise:
            parts += [Part(f"{label} pre-normalise LZC", LeadingZeroCounter(pc)),
                      Part(f"{label} pre-normalise shifter", BarrelShifter(pc, pc - 1, "right")),
                      Part(f"{label} exponent - lzc", adder(we, st.adder))]
        # X is padded with wm - np_ constant zeros (A with wm - pc): those bits compare with an
        # OR tree and swap with AND gates instead of muxes
        live = min(np_, pc)
        parts += [
            Part("magnitude compare (exponent, significand)", Comparator(wx + live)),
            Part("magnitude compare (zero-padded bits)", OrTree(wm - live)),
            Part("exponent equal", Gates.of(XNOR2=wx, AND2=wx - 1 + (wx < we))),
            Part("A exponent within X's range (high bits all 0 / all 1)",
                 Gates.of(AND2=we - wx, OR2=we - wx)),
            Part("swap", Mux(live + we), 2),
            Part("swap (zero-padded bits)", Gates.of(AND2=2 * (wm - live))),
            Part("exponent difference", adder(we, st.adder)),
            Part("shift clamp (compare with a constant)", OrTree(we)),
            Part("shift clamp select", Mux(clog2(wa + 1))),
            Part("alignment shifter (sticky)", BarrelShifter(wa, wa, "right", sticky=True)),
            Part("effective subtract (XOR row)", XorRow(wa + 1)),
            Part("significand adder", adder(wa + 2, st.adder)),
        ]
    # exponent logic: room = bt + (1 - emin) and eb = bt + (1 + bias) - shl fold their constants
    # with A = 0 the sum is X: only its np_ top bits can be nonzero and the left shift is
    # below np_, so the LZC and the normalising shifter see np_ live bits
    live_n = min(np_, n) if acc_zero else n
    parts.append(Part("leading-zero counter", LeadingZeroCounter(live_n)))
    if not ftz:
        parts += [Part("room above min exponent (bt + const)", Incrementer(we)),
                  Part("normalise limit compare", Comparator(lzw)),
                  Part("normalise limit compare (high bits)", OrTree(we - lzw)),
                  Part("normalise limit select", Mux(lzw, 3))]
    parts += [Part("normalise shifter", BarrelShifter(live_n, live_n - 1, "right")),
              Part("biased result exponent (bt + const - shl)", adder(we, st.adder))]
    if not ftz:
        parts.append(Part("result exponent select", Mux(acc.exp_bits)))
    if denormalise:
        kd = clog2(n + 1)
        parts += [Part("denormalise amount (-room)", XorRow(we)),
                  Part("denormalise amount +1", Incrementer(we)),
                  Part("denormalise clamp", Comparator(we)),
                  Part("denormalise clamp select", Mux(kd, 3)),
                  Part("denormalise shifter (sticky)", BarrelShifter(n, n, "right", sticky=True))]
    parts.append(Part("sticky OR", OrTree(max(n - pc, 1))))
    if ftz:
        return parts + [
            Part("round decision", Gates.of(AND2=2, OR2=1)),
            Part("round incrementer", Incrementer(acc.exp_bits + acc.man_bits)),
            Part("flush test (exponent < 1)", OrTree(acc.exp_bits)),
            Part("overflow compare (exponent > max)", Comparator(we)),
            Part("result sign", Gates.of(AND2=2, OR2=1)),
            Part("zero / flush / saturate select", Gates.of(AND2=acc.bits, OR2=acc.bits)),
        ]
    return parts + [
        Part("overflow (compare with a constant)", Gates.of(AND2=we)),
        Part("exponent field select", Gates.of(AND2=acc.exp_bits)),
        Part("round decision", Gates.of(AND2=2, OR2=1)),
        Part("round incrementer", Incrementer(acc.exp_bits + acc.man_bits)),
        Part("sign / Inf / NaN logic",
             Gates.of(AND2=6, OR2=4, XOR2=2) if x_special else Gates.of(AND2=2, OR2=1)),
        Part("Inf / NaN / overflow select (constant patterns)", Gates.of(AND2=acc.bits, OR2=acc.bits)),
    ]


def fp_multiplier_parts(a: FloatView | FloatAcc, out: FloatAcc, st: Styles) -> list[Part]:
    """A rounding FP multiplier out = round(a * a') (for the energy calibration ops): decode,
    significand multiplier, exponent adder, 1-bit normalisation, rounding, specials."""
    p = a.man_bits + 1
    we = a.exp_bits + 2
    parts = float_decode_parts(a, "x") + float_decode_parts(a, "y")
    parts += [Part(f"significand multiplier {p}x{p}", multiplier(p, p, False, st.multiplier)),
              Part("exponent adder", adder(we, st.adder)),
              Part("sign + flags", Gates.of(XOR2=1, AND2=4, OR2=3)),
              Part("1-bit normalise", Mux(p + 2)),
              Part("sticky OR", OrTree(p)),
              Part("round decision", Gates.of(AND2=2, OR2=1)),
              Part("round incrementer", Incrementer(out.exp_bits + out.man_bits)),
              Part("overflow / special select", Mux(out.bits, 3))]
    return parts


def accumulator_register(bits: int) -> Part:
    return Part("accumulator register", Register(bits))
