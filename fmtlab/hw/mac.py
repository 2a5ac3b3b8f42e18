"""MAC units per (weight format, activation format, accumulator): parts, area and energy.

Composition (each unit is the list of parts below; area and energy add up over parts):

- INT/UINT/dINT x INT/UINT/dINT: multiplier of the significands (dINT: magnitude ``code - nd``,
  denormal levels by a mux after the multiplier, the integer levels' ``<< frac`` is wiring),
  conditional negate for sign-magnitude operands (XOR row, +1 into the accumulator's carry-in),
  W-bit adder, W-bit register.
- a table-only format (a family without a hardware view, e.g. ``LookupFormat``): its decode LUT
  (a constant ROM, :class:`fmtlab.hw.components.ConstRom`) into the narrowest exact w-bit
  two's-complement operand, then the INT path above with a w-bit multiplier input.
- log2 x INT/dINT: a barrel shifter of the other operand by the log code (no multiplier).
  log2 x log2: an exponent adder and a one-hot decoder (the product is a power of two).
- minifloat x minifloat: significand multiplier, exponent adder, sign, specials; then
  * FP accumulator: product normalisation + a single-rounding FP adder (see
    :func:`fmtlab.hw.blocks.fp_adder_parts`) + register (an FMA when the product is exact);
  * Kulisch: the product shifted by its exponent into a fixed-point register that covers every
    product, conditional negate, W-bit adder, register, sticky Inf/NaN flags.
- MX (block k): k element products, each shifted into a fixed-point window covering every
  product, a carry-save tree and one adder (an exact block sum), the two E8M0 scales added,
  one conversion to the accumulator format (LZC, shift, round) and an FP adder into the
  accumulator. Area is per unit; energy per MAC is the unit's energy / k.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.formats import BlockFormat, Format
from fmtlab.hw.blocks import (Part, Styles, accumulator_register, fixed_product_bits,
                              fixed_product_parts, float_decode_parts, float_product_parts,
                              fp_adder_parts, product_exponent_parts,
                              product_exponent_width)
from fmtlab.hw.components import (AdderStyle, BarrelShifter, CompressorTree, Gates, Incrementer,
                                  LeadingZeroCounter, MultiplierStyle, Mux, XorRow, adder, clog2,
                                  ge_of)
from fmtlab.hw.energy import calibrate
from fmtlab.hw.ftz import ftz_parts
from fmtlab.hw.operands import (AccOverflow, AccRounding, FixedView, FloatAcc, FloatView, IntAcc,
                                KulischAcc, parse_accumulator, parse_operand, view)
from fmtlab.hw.tech import Technology, get_library

# ------------------------------------------------------------------------------------------
# geometry shared by the model, the datapath and the RTL
# ------------------------------------------------------------------------------------------


def kulisch_geometry(a: FloatView, b: FloatView, guard: int) -> tuple[int, int, int]:
    """(magnitude bits, max product shift, total width) of a Kulisch accumulator.

    Products are ``M << s`` in units of 2**(lsb_min_a + lsb_min_b), with M the
    ``pa + pb``-bit significand product and s = (max(Ea,1) - 1) + (max(Eb,1) - 1).
    """
    mag = (a.msb_max + b.msb_max + 1) - (a.lsb_min + b.lsb_min) + 1
    shift = a.max_exp_field - 1 + b.max_exp_field - 1
    return mag, shift, mag + 1 + guard


def product_shift_parts(a: FloatView, b: FloatView, st: Styles) -> list[Part]:
    """Shift amount sh = (max(E_a,1) - 1) + (max(E_b,1) - 1) and the widening left shift of the
    product by it (Kulisch and MX paths). The adder is as wide as the wider exponent field (its
    carry is the top bit: the RTL zero-extends both fields to the sum's width). The shifter is
    sized for the largest sh any code gives, (2^e_a - 2) + (2^e_b - 2): output bits above it are
    constant zero, which synthesis removes (an IEEE-like all-ones exponent reaches 2 beyond the
    largest finite shift; those products are gated to zero after the shifter)."""
    reach = (1 << a.exp_bits) - 2 + (1 << b.exp_bits) - 2
    return [Part("product shift amount adder", adder(max(a.exp_bits, b.exp_bits), st.adder)),
            Part("product alignment shifter",
                 BarrelShifter(a.sig_bits + b.sig_bits, reach, "left"))]


def fp_adder_we(t_lo: int, t_hi: int, acc: FloatAcc, npx: int) -> int:
    """Signed exponent width of an FP adder whose operand X has leading-bit exponents in
    [t_lo, t_hi] and ``npx`` significand bits: holds every exponent, difference and biased sum."""
    pc = acc.man_bits + 1
    wa = max(pc, npx) + 3
    emin, emax = 1 - acc.bias, (1 << acc.exp_bits) - 2 - acc.bias
    lo = min(t_lo, emin - pc) - wa - 4
    hi = max(t_hi, emax) + acc.bias + wa + 4
    return max(abs(lo), abs(hi), hi - lo).bit_length() + 1


def fp_acc_geometry(a: FloatView, b: FloatView, acc: FloatAcc) -> dict[str, Any]:
    """Widths of the FP-accumulating path, shared by the model and the RTL.

    np: product significand bits; t_lo / t_hi: smallest / largest exponent of the product's
    leading bit; we: the FP adder's signed exponent width; denormalise: whether a product can
    lie below the accumulator's normal range (then the adder needs a right-shift path).
    """
    np_ = a.sig_bits + b.sig_bits
    t_lo = a.lsb_min + b.lsb_min
    t_hi = a.msb_max + b.msb_max + 1
    emin = 1 - acc.bias
    return dict(np=np_, we=fp_adder_we(t_lo, t_hi, acc, np_), denormalise=t_lo < emin,
                t_lo=t_lo, t_hi=t_hi)


def mx_geometry(ew: FloatView, ea: FloatView, block: int) -> dict[str, int]:
    """Fixed-point window of an MX block sum: product magnitude bits, shift range, sum width."""
    mag, shift, _ = kulisch_geometry(ew, ea, 0)
    return dict(mag=mag, shift=shift, sum_bits=mag + clog2(block) + 1, np=ew.sig_bits + ea.sig_bits)


# ------------------------------------------------------------------------------------------
# unit description
# ------------------------------------------------------------------------------------------


class UnitKind(enum.Enum):
    """Which datapath a MAC unit has (see the module docstring)."""

    FIXED = "fixed"  # integer-like products into an int<W> accumulator
    FLOAT = "float"  # minifloat products into a float or Kulisch accumulator
    MX = "mx"        # MX block dot products into a float accumulator


@dataclasses.dataclass(frozen=True)
class MacUnit:
    """A MAC unit: weight and activation formats and an accumulator (plus circuit styles)."""

    weight: "Format | BlockFormat"
    activation: "Format | BlockFormat"
    accumulator: "IntAcc | FloatAcc | KulischAcc"
    styles: Styles = Styles()

    @property
    def name(self) -> str:
        ftz = " ftz" if self.styles.ftz else ""
        return f"{self.weight.name} x {self.activation.name} -> {self.accumulator.name}{ftz}"

    @property
    def is_mx(self) -> bool:
        return isinstance(self.weight, BlockFormat)

    @property
    def macs_per_cycle(self) -> int:
        return self.weight.block if self.is_mx else 1

    @property
    def kind(self) -> "UnitKind":
        """Integer-like products, floating-point products, or an MX block dot product."""
        if self.is_mx:
            return UnitKind.MX
        return UnitKind.FLOAT if isinstance(view(self.weight), FloatView) else UnitKind.FIXED

    def parts(self) -> list[Part]:
        return build_parts(self)

    def acc_bits(self) -> int:
        """Width of the accumulator register."""
        acc = self.accumulator
        if isinstance(acc, IntAcc):
            return acc.width
        if isinstance(acc, FloatAcc):
            return acc.bits
        w, a = view(self.weight), view(self.activation)
        _, _, width = kulisch_geometry(w, a, acc.guard)
        return width + kulisch_flag_bits(w, a)


def kulisch_flag_bits(a: FloatView, b: FloatView) -> int:
    """Sticky flags next to the Kulisch register: NaN, and +Inf / -Inf if either has Inf."""
    if not (a.has_nan or b.has_nan or a.has_inf or b.has_inf):
        return 0
    return 3 if (a.has_inf or b.has_inf) else 1


def make_unit(weight: "str | Format | BlockFormat", activation: "str | Format | BlockFormat",
              accumulator: "str | IntAcc | FloatAcc | KulischAcc | None" = None, *,
              overflow: "AccOverflow | str | None" = None,
              rounding: "AccRounding | str | None" = None,
              adder_style: "AdderStyle | str" = AdderStyle.RIPPLE,
              multiplier_style: "MultiplierStyle | str" = MultiplierStyle.ARRAY,
              ftz: bool = False) -> MacUnit:
    """Validate a (weight, activation, accumulator) triple and return its :class:`MacUnit`.

    ftz: a flush-to-zero, no-special-value unit (:mod:`fmtlab.hw.ftz`; minifloat operands into a
    float accumulator only)."""
    w, a = parse_operand(weight), parse_operand(activation)
    if isinstance(w, BlockFormat) != isinstance(a, BlockFormat):
        raise FmtlabError(f"MX and non-MX operands cannot share a MAC unit ({w} x {a})")
    if isinstance(w, BlockFormat) and w.block != a.block:
        raise FmtlabError(f"MX operands need the same block size ({w.block} vs {a.block})")
    vw = view(w.element if isinstance(w, BlockFormat) else w)
    va = view(a.element if isinstance(a, BlockFormat) else a)
    fixed = isinstance(vw, FixedView)
    if isinstance(vw, FixedView) != isinstance(va, FixedView):
        raise FmtlabError(f"mixed integer-like and floating-point operands ({w} x {a}) are not "
                          "modelled; convert one side first")
    if accumulator is None:
        accumulator = "int32" if fixed else "fp32"
    acc = parse_accumulator(accumulator, overflow, rounding)
    if fixed and not isinstance(acc, IntAcc):
        raise FmtlabError(f"integer-like products accumulate in int<W>, not {acc.name}")
    if not fixed and isinstance(acc, IntAcc):
        raise FmtlabError(f"floating-point products need an fp or kulisch accumulator, not {acc.name}")
    if isinstance(w, BlockFormat) and not isinstance(acc, FloatAcc):
        raise FmtlabError("MX dot-product units accumulate in a float accumulator (e.g. fp32)")
    if fixed:
        pbits = fixed_product_bits(vw, va)
        if pbits > acc.width:
            hint = f" (use int{pbits} or wider)" if pbits <= 64 else ""
            raise FmtlabError(f"{w} x {a} products need {pbits} bits; {acc.name} is narrower{hint}")
    if not isinstance(ftz, bool):
        raise FmtlabError(f"ftz must be True or False, got {ftz!r}")
    if ftz and (fixed or isinstance(w, BlockFormat) or not isinstance(acc, FloatAcc)):
        raise FmtlabError(f"ftz=True applies to minifloat operands into a float accumulator, not {w} x {a} "
                          f"-> {acc.name}")
    return MacUnit(w, a, acc, Styles(adder_style, multiplier_style, ftz))


# ------------------------------------------------------------------------------------------
# parts
# ------------------------------------------------------------------------------------------


def build_parts(u: MacUnit) -> list[Part]:
    st = u.styles
    acc = u.accumulator
    if u.is_mx:
        return mx_parts(u)
    w, a = view(u.weight), view(u.activation)
    if isinstance(w, FixedView):
        parts = fixed_product_parts(w, a, st)
        carry_in = w.sign_magnitude or a.sign_magnitude
        parts.append(Part("accumulator adder", adder(acc.width, st.adder, carry_in=carry_in)))
        if acc.saturates:
            parts.append(Part("saturation detect + select", Mux(acc.width)))
            parts.append(Part("overflow detect", Gates.of(XOR2=2, AND2=2)))
        parts.append(accumulator_register(acc.width))
        return parts
    if st.ftz:
        return ftz_parts(w, a, acc, st)
    parts = float_product_parts(w, a, st)
    if isinstance(acc, KulischAcc):
        mag, _, width = kulisch_geometry(w, a, acc.guard)
        parts += product_shift_parts(w, a, st)
        if w.has_inf or w.has_nan or a.has_inf or a.has_nan:
            parts.append(Part("Inf/NaN gating", Gates.of(AND2=mag, OR2=1)))
        parts.append(Part("conditional negate (XOR row; +1 as carry-in)", XorRow(mag)))
        parts.append(Part("Kulisch adder", adder(width + 1, st.adder)))
        nflags = kulisch_flag_bits(w, a)
        if nflags:
            parts.append(Part("Inf/NaN flags", Gates.of(OR2=2 * nflags, AND2=nflags)))
        parts.append(accumulator_register(width + nflags))
        return parts
    g = fp_acc_geometry(w, a, acc)
    parts += product_exponent_parts(w, a, g["we"], st)
    x_special = w.has_inf or w.has_nan or a.has_inf or a.has_nan
    parts += fp_adder_parts(g["np"], g["we"], acc, st, g["denormalise"],
                            wx=product_exponent_width(w, a, g["we"]), x_special=x_special)
    parts.append(accumulator_register(acc.bits))
    return parts


def mx_parts(u: MacUnit) -> list[Part]:
    """Parts of an MX block dot-product unit (mirrors the RTL's MX core, :mod:`fmtlab.hw.rtl`)."""
    st = u.styles
    acc: FloatAcc = u.accumulator  # type: ignore[assignment]
    k = u.weight.block
    ew, ea = view(u.weight.element), view(u.activation.element)
    geo = mx_geometry(ew, ea, k)
    mag, sb = geo["mag"], geo["sum_bits"]
    per_elem = float_product_parts(ew, ea, st)
    per_elem += product_shift_parts(ew, ea, st)
    per_elem += [Part("conditional negate (XOR row; +1 as carry-in)", XorRow(mag))]
    if ew.has_inf or ew.has_nan or ea.has_inf or ea.has_nan:
        per_elem.append(Part("Inf/NaN gating", Gates.of(AND2=mag)))
    parts = [Part(f"[x{k}] {p.label}", p.component, p.count * k) for p in per_elem]
    # k terms of mag+1 bits (sign bit inverted), k carry-ins and one constant (see the RTL)
    parts += [Part("block sum: carry-save tree", CompressorTree(k * (mag + 1) + k + sb - mag, sb)),
              Part("block sum: final adder", adder(sb, st.adder)),
              Part("block |sum| (XOR row + increment)", XorRow(sb)),
              Part("block |sum| increment", Incrementer(sb)),
              Part("block sum LZC", LeadingZeroCounter(sb)),
              Part("block sum normalise shifter", BarrelShifter(sb, sb - 1, "right")),
              Part("block exponent: scale adder + lzc + bias", adder(10, st.adder), 3),
              Part("scale / element NaN and Inf detect", Gates.of(AND2=14, OR2=3 * k + 2))]
    base = ew.lsb_min + ea.lsb_min
    we1 = fp_adder_we(base - 254 - sb, base + 254 + sb, acc, sb)
    parts += [Part(f"convert: {p.label}", p.component, p.count)
              for p in fp_adder_parts(sb, we1, acc, st, True, acc_zero=True)]
    we2 = fp_adder_we(1 - acc.bias - acc.man_bits, (1 << acc.exp_bits) - 1 - acc.bias, acc, acc.man_bits + 1)
    parts += float_decode_parts(acc, "block value")
    parts.append(Part("block value exponent (E + const)", Incrementer(min(we2, acc.exp_bits))))
    parts += fp_adder_parts(acc.man_bits + 1, we2, acc, st, False)
    parts.append(accumulator_register(acc.bits))
    return [p for p in parts if p.component.cells()]


# ------------------------------------------------------------------------------------------
# cost records
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartCost:
    """One line of a breakdown: ``count`` x ``component`` as ``label``."""

    label: str
    component: str
    count: float
    energy_class: str
    cells: tuple[tuple[str, float], ...]
    area_ge: float
    energy_pj: float  # per operation of the unit (one cycle)


@dataclasses.dataclass(frozen=True)
class MacCost:
    """Area and energy of a MAC unit at a technology node.

    area_ge / area_um2: the whole unit (an MX unit holds ``macs_per_cycle`` multipliers);
    energy_pj: energy per multiply-accumulate (unit energy per cycle / macs_per_cycle).
    """

    unit: str
    weight: str
    activation: str
    accumulator: str
    macs_per_cycle: int
    area_ge: float
    area_um2: float
    energy_pj: float
    breakdown: tuple[PartCost, ...]
    node_nm: int
    vdd: float
    library: str
    acc_bits: int

    @property
    def area_ge_per_mac(self) -> float:
        return self.area_ge / self.macs_per_cycle

    @property
    def area_um2_per_mac(self) -> float:
        return self.area_um2 / self.macs_per_cycle

    def by_class(self) -> dict[str, tuple[float, float]]:
        """(area_ge, energy_pj per MAC) per energy class."""
        out: dict[str, list[float]] = {}
        for p in self.breakdown:
            a = out.setdefault(p.energy_class, [0.0, 0.0])
            a[0] += p.area_ge
            a[1] += p.energy_pj / self.macs_per_cycle
        return {k: (v[0], v[1]) for k, v in out.items()}

    def ratio_to(self, base: "MacCost") -> tuple[float, float]:
        """(area per MAC, energy per MAC) relative to ``base``."""
        return self.area_ge_per_mac / base.area_ge_per_mac, self.energy_pj / base.energy_pj

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["breakdown"] = [dict(dataclasses.asdict(p), cells=dict(p.cells)) for p in self.breakdown]
        d["area_ge_per_mac"] = self.area_ge_per_mac
        return d


def unit_cost(u: MacUnit, node: int = 45, vdd: float | None = None,
              library: str = "nangate45", fa: str = "gates") -> MacCost:
    """Cost of a :class:`MacUnit` (see :func:`mac_cost`)."""
    lib = get_library(library, fa)
    tech = Technology(node, vdd)
    cal = calibrate(library, u.styles.adder, u.styles.multiplier, fa).e
    ef = tech.energy_factor()
    rows = []
    for p in u.parts():
        cells = p.component.cells()
        ge = ge_of(cells, lib) * p.count
        rows.append(PartCost(p.label, p.component.describe(), p.count, p.component.energy_class,
                             tuple(sorted((c, n * p.count) for c, n in cells.items())), ge,
                             ge * cal[p.component.energy_class] * ef))
    area = sum(r.area_ge for r in rows)
    energy = sum(r.energy_pj for r in rows) / u.macs_per_cycle
    return MacCost(u.name, u.weight.name, u.activation.name, u.accumulator.name, u.macs_per_cycle,
                   area, area * tech.um2_per_ge(lib), energy, tuple(rows), tech.node_nm,
                   float(tech.vdd), library, u.acc_bits())


def mac_cost(weight: "str | Format | BlockFormat", activation: "str | Format | BlockFormat",
             accumulator: "str | IntAcc | FloatAcc | KulischAcc | None" = None, *,
             node: int = 45, vdd: float | None = None, library: str = "nangate45",
             overflow: "AccOverflow | str | None" = None,
             rounding: "AccRounding | str | None" = None,
             adder: "AdderStyle | str" = AdderStyle.RIPPLE,
             multiplier: "MultiplierStyle | str" = MultiplierStyle.ARRAY,
             fa: str = "gates", ftz: bool = False) -> MacCost:
    """Area and energy of the MAC unit for ``weight x activation`` into ``accumulator``.

    weight, activation: format names from the registry (``"int8"``, ``"dint4"``, ``"log4"``,
    ``"fp8_e4m3"``, ``"bf16"`` ...), MX names (``"mxfp8"``, ``"mxfp4"``) or format objects.
    accumulator: ``"int32"`` (default for integer-like), ``"fp32"`` (default for float),
    ``"kulisch"``, ``"int24_sat"``, ``"bf16"`` ... node (nm) and vdd (V) scale area and energy
    from 45 nm / 0.9 V (Stillmaker & Baas 2017); library: ``nangate45`` or ``osu018`` GE;
    fa: full adders priced as ``gates`` (2 XOR2 + 3 NAND2, default) or library ``cells``;
    adder: ``ripple``/``brent_kung``/``kogge_stone``; multiplier: ``array``/``booth``;
    ftz: price the flush-to-zero, no-special-value variant of an FP unit (:mod:`fmtlab.hw.ftz`).
    Returns a frozen :class:`MacCost` (area_ge, area_um2, energy_pj per MAC, breakdown).
    """
    u = make_unit(weight, activation, accumulator, overflow=overflow, rounding=rounding,
                  adder_style=adder, multiplier_style=multiplier, ftz=ftz)
    return unit_cost(u, node, vdd, library, fa)
