"""Scale and quantizer hardware: the units beside the MAC array that make a scaled format work.

Every unit is a parts list (:class:`fmtlab.hw.blocks.Part`), priced like a MAC unit (GE summed over
parts, energy = GE x the calibrated pJ/GE of each part's class, :mod:`fmtlab.hw.energy`), and
stated per *operation* of the unit; :mod:`fmtlab.hw.inference` counts the operations per token.
Structures (formula sources as in :mod:`fmtlab.hw.components`; the scaled-format semantics from
the OCP MX v1.0 spec and NVIDIA's NVFP4 description):

- :func:`fp8_scale_multiply_parts` -- NVFP4-style E4M3 block scales, once per block of a dot
  product: decode both E4M3 scales, multiply their 4-bit significands (exact 8-bit product), add
  their exponents, and multiply the block's exact fixed-point sum (``sum_bits``) by the 8-bit
  significand (signed sum_bits x 9). E8M0 (MX) scales need only the exponent adds the MX unit
  already holds (:func:`e8m0_scale_add_parts`).
- :func:`mx_shared_exponent_parts`, :func:`absmax_tree_parts` -- the quantizer's block logic.
- :func:`absmax_parts` -- the dynamic quantizer's max: per element one magnitude compare and a
  select into the running-max register (|x| of a bf16 value is its low 15 bits).
- :func:`scale_compute_parts` -- per scale: fp32 (per-tensor / -token / -channel / group) and
  E4M3 (NVFP4 block) scales are s = amax x (1 / qmax) (one fp32 multiply) and the reciprocal 1/s
  the elements are multiplied by (two Newton-Raphson iterations from a seed: four fp32 multiplies
  and two fp32 adds); NVFP4 also rounds s to E4M3 (a float converter). E8M0 (MX): the shared
  exponent is the max's exponent field minus the element's emax, clamped: an 8-bit adder with a
  constant (incrementer) and an 8-bit clamp.
- :func:`element_quantize_parts` -- per element: multiply by 1/s (a bf16 x bf16 multiplier; a
  power-of-two E8M0 scale is an 8-bit exponent subtract instead), then round to the element format:
  alignment shifter with sticky, round incrementer, saturation compare and select.
- :func:`scale_multiply_parts` -- the fp32 multiply applying a per-output scale (per-channel
  weight scale, per-token activation scale, NVFP4's fp32 tensor scale) to a finished dot product.
- :func:`promotion_adder_parts` -- the outer fp32 adder of a two-level promoted accumulator.
"""

from __future__ import annotations

import dataclasses

from fmtlab.hw.blocks import Part, Styles, float_decode_parts, fp_adder_parts, fp_multiplier_parts
from fmtlab.hw.components import (BarrelShifter, Comparator, Gates, Incrementer, Mux, Register,
                                  adder, ge_of, multiplier)
from fmtlab.hw.energy import calibrate
from fmtlab.errors import FmtlabError
from fmtlab.hw.mac import MacCost, PartCost, fp_adder_we, mac_cost
from fmtlab.hw.promoted_acc import parse_promoted
from fmtlab.hw.operands import FloatAcc
from fmtlab.hw.tech import Technology, get_library

__all__ = ["PricedParts", "price_parts", "fp8_scale_multiply_parts", "e8m0_scale_add_parts",
           "absmax_parts", "scale_compute_parts", "element_quantize_parts", "scale_multiply_parts",
           "promotion_adder_parts", "fp_convert_parts", "fp_mul", "fp_add", "magnitude_compare_parts",
           "mx_shared_exponent_parts", "absmax_tree_parts", "promotion_we", "promoted_mac_cost"]

FP32 = FloatAcc(8, 23)
BF16 = FloatAcc(8, 7)
E4M3_SCALE = FloatAcc(4, 3)  # decode structure of an E4M3 scale (its NaN code is unused by scales)


@dataclasses.dataclass(frozen=True)
class PricedParts:
    """Area (GE, um^2) and energy (pJ per operation) of a parts list, with the per-part rows
    (label, GE, pJ)."""

    name: str
    area_ge: float
    area_um2: float
    energy_pj: float
    rows: tuple[tuple[str, float, float], ...]


def price_parts(name: str, parts: list[Part], node: int = 45, vdd: float | None = None,
                library: str = "nangate45", fa: str = "gates", styles: Styles = Styles()) -> PricedParts:
    """Price ``parts`` like :func:`fmtlab.hw.mac.unit_cost` does (one toggle per operation)."""
    lib = get_library(library, fa)
    tech = Technology(node, vdd if vdd is not None else (0.9 if node == 45 else None))
    cal = calibrate(library, styles.adder, styles.multiplier, fa).e
    ef = tech.energy_factor()
    rows = []
    for p in parts:
        ge = ge_of(p.component.cells(), lib) * p.count
        rows.append((p.label, ge, ge * cal[p.component.energy_class] * ef))
    area = sum(r[1] for r in rows)
    return PricedParts(name, area, area * tech.um2_per_ge(lib), sum(r[2] for r in rows), tuple(rows))


# ------------------------------------------------------------------------------ block scales


def fp8_scale_multiply_parts(sum_bits: int, st: Styles = Styles()) -> list[Part]:
    """One E4M3 x E4M3 block-scale multiply applied to a block's exact ``sum_bits``-bit two's-
    complement sum (the circuit of :func:`fmtlab.hw.rtl_scale.e4m3_scale_mul`): hidden bits and
    max(E, 1) of both scales, their 4x4 significand product, the sum's sign-magnitude flip by the
    scales' sign, the sum x significand multiply (sum_bits x 9, signed) and the exponent add."""
    sb = sum_bits
    return [Part("scale w hidden bit", Gates.of(OR2=3)), Part("scale x hidden bit", Gates.of(OR2=3)),
            Part("scale max(E, 1)", Gates.of(OR2=2, INV=2)),
            Part("scale significand multiplier 4x4", multiplier(4, 4, False, st.multiplier)),
            Part("scale sign", Gates.of(XOR2=1)),
            Part("block sum conditional negate", Gates.of(XOR2=sb)), Part("block sum negate +1", Incrementer(sb)),
            Part(f"block sum x scale significand {sb}x9 (signed)", multiplier(sb, 9, True, st.multiplier)),
            Part("scale exponent adder", adder(5, st.adder))]


def mx_shared_exponent_parts(k: int, st: Styles = Styles()) -> list[Part]:
    """The MX quantizer's shared-exponent logic over a block of ``k`` bf16 inputs (the circuit of
    :func:`fmtlab.hw.rtl_scale.mx_shared_exp`): max exponent field (k - 1 compare-and-select), the
    E8M0 scale max(E_max - emax_elem, 0), and per element E_i - scale."""
    return [Part("max exponent tree: compare", Comparator(8), k - 1),
            Part("max exponent tree: select", Mux(8), k - 1),
            Part("shared exponent (E_max - emax_elem)", Incrementer(8)),
            Part("shared exponent clamp (compare + select)", Comparator(8)),
            Part("shared exponent clamp select", Gates.of(AND2=8)),
            Part("element exponent - shared", adder(8, st.adder), k)]


def absmax_tree_parts(k: int, in_bits: int = 16) -> list[Part]:
    """|x| max over ``k`` inputs as a tree of k - 1 compare-and-select (no register)."""
    m = in_bits - 1
    parts = [Part(p.label, p.component, p.count * (k - 1)) for p in magnitude_compare_parts(m)]
    return parts + [Part("|x| select", Mux(m), k - 1)]


def e8m0_scale_add_parts(st: Styles = Styles()) -> list[Part]:
    """The E8M0 (MX) scale combination per block: one 8-bit exponent add (plus NaN detect)."""
    return [Part("E8M0 scale adder", adder(9, st.adder)), Part("scale NaN detect", Gates.of(AND2=14, OR2=1))]


# ------------------------------------------------------------------------- dynamic quantizer


def magnitude_compare_parts(n: int, label: str = "|x| compare") -> list[Part]:
    """a > b of two variable n-bit magnitudes: the XNOR2 + AOI21 ripple of
    :class:`~fmtlab.hw.components.Comparator` plus the borrow chain's operand inversion and
    propagate (one INV + one AOI21 per bit). Yosys/ABC maps a 15-bit compare of two variables to
    ~82 GE in OSU 0.18 um cells (``absmax_k2``), which the bare ripple (55 GE) undercounts."""
    return [Part(label, Comparator(n)), Part(f"{label} (borrow chain)", Gates.of(INV=n, AOI21=n))]


def absmax_parts(in_bits: int = 16) -> list[Part]:
    """Per input element: |x| compare with the running max and the register update."""
    m = in_bits - 1
    return magnitude_compare_parts(m, "absmax compare") + [
        Part("absmax select", Mux(m)), Part("running max register", Register(m, clear=True))]


def fp_convert_parts(in_sig: int, out_bits: int, out_exp_bits: int, st: Styles = Styles()) -> list[Part]:
    """Round a float with an ``in_sig``-bit significand to an ``out_bits`` element (``out_exp_bits``
    exponent bits, 0 for INT): rebias, alignment shift with sticky, round, saturate."""
    parts = [Part("alignment shifter (sticky)", BarrelShifter(in_sig, min(in_sig, out_bits + 1), "right", sticky=True)),
             Part("round decision", Gates.of(AND2=2, OR2=1)),
             Part("round incrementer", Incrementer(out_bits - 1)),
             Part("saturation compare", Comparator(out_bits - 1)),
             Part("saturation select", Mux(out_bits - 1))]
    if out_exp_bits:
        parts.insert(0, Part("exponent rebias", adder(8, st.adder)))
    return parts


def scale_compute_parts(scale_format: str, st: Styles = Styles()) -> list[Part]:
    """Per scale (one per tensor / token / channel / group / block): see the module docstring."""
    if scale_format == "e8m0":
        return [Part("shared exponent (E_max - emax_elem)", Incrementer(8)),
                Part("shared exponent clamp", Mux(8))]
    parts = (fp_mul(FP32, "s = amax x 1/qmax (fp32 multiply)")
             + fp_mul(FP32, "1/s: Newton-Raphson multiplies (fp32)", 4)
             + fp_add(FP32, "1/s: Newton-Raphson adds (fp32)", 2))
    if scale_format == "fp8_e4m3":
        parts += [Part(f"round s to E4M3: {p.label}", p.component, p.count) for p in fp_convert_parts(24, 8, 4, st)]
    return parts


def element_quantize_parts(elem_bits: int, elem_exp_bits: int, pow2_scale: bool,
                           st: Styles = Styles()) -> list[Part]:
    """Per element: x / s (x * 1/s in bf16, or an exponent subtract for E8M0) and the rounding."""
    if pow2_scale:
        pre = [Part("x / 2^e (exponent subtract)", adder(8, st.adder))]
    else:
        pre = fp_mul(BF16, "x * 1/s (bf16 multiply)")
    return pre + fp_convert_parts(BF16.man_bits + 1, elem_bits, elem_exp_bits, st)


def scale_multiply_parts() -> list[Part]:
    """One fp32 multiply of a finished dot product by a scale (per output)."""
    return fp_mul(FP32, "fp32 scale multiply")


# ---------------------------------------------------------------------- promoted accumulator


def promotion_we(inner: FloatAcc, outer: FloatAcc = FP32) -> int:
    """Exponent width of the promotion adder (the rule of :func:`fmtlab.hw.mac.fp_adder_we`)."""
    return fp_adder_we(1 - inner.bias - inner.man_bits, (1 << inner.exp_bits) - 1 - inner.bias, outer,
                       inner.man_bits + 1)


def promotion_adder_parts(inner: FloatAcc, outer: FloatAcc = FP32, st: Styles = Styles()) -> list[Part]:
    """The outer adder of a promoted accumulator (the circuit of
    :func:`fmtlab.hw.rtl_scale.promotion_adder`): decode of the inner partial sum, the single-
    rounding FP adder of :func:`fmtlab.hw.blocks.fp_adder_parts` into ``outer`` and its register."""
    return (float_decode_parts(inner, "partial") + [Part("partial exponent (E + const)", Incrementer(inner.exp_bits))]
            + fp_adder_parts(inner.man_bits + 1, promotion_we(inner, outer), outer, st, False, "outer")
            + [Part("outer accumulator register", Register(outer.bits))])


# ------------------------------------------------------------------------------------------


def fp_mul(fmt: FloatAcc, label: str, count: float = 1.0) -> list[Part]:
    """``count`` rounding FP multipliers of ``fmt`` (:func:`fmtlab.hw.blocks.fp_multiplier_parts`),
    each part labelled ``label: part``."""
    return [Part(f"{label}: {q.label}", q.component, q.count * count)
            for q in fp_multiplier_parts(fmt, fmt, Styles())]


def fp_add(fmt: FloatAcc, label: str, count: float = 1.0) -> list[Part]:
    """``count`` rounding FP adders of two ``fmt`` operands (as the energy calibration builds them)."""
    parts = float_decode_parts(fmt, "x") + fp_adder_parts(fmt.man_bits + 1, fmt.exp_bits + 2, fmt, Styles(), False, "y")
    return [Part(f"{label}: {q.label}", q.component, q.count * count) for q in parts]


# ------------------------------------------------------------------------------------------
# a MAC lane with a promoted accumulator


def promoted_mac_cost(weight, activation, accumulator="hopper_fp8_mma", *, node: int = 45,
                      vdd: float | None = None, library: str = "nangate45", fa: str = "gates"):
    """Area and energy per MAC lane of ``weight x activation`` into a two-level promoted accumulator
    (:class:`fmtlab.hw.promoted_acc.PromotedAcc` or a preset name such as ``"hopper_fp8_mma"``).

    The lane is the MAC unit into the inner accumulator (:func:`fmtlab.hw.mac_cost` with
    ``inner``); its partial sum is added into the outer accumulator every ``interval`` products by
    the promotion adder (:func:`promotion_adder_parts`), shared by ``interval`` lanes: per lane and
    per MAC both its area and its energy count 1 / interval. Returns a
    :class:`fmtlab.hw.mac.MacCost` whose breakdown lists the promotion adder's parts (count / N)."""
    acc = parse_promoted(accumulator)
    if acc is None:
        raise FmtlabError(f"{accumulator!r} is not a promoted accumulator (presets: hopper_fp8_mma, ...)")
    inner = mac_cost(weight, activation, acc.inner, node=node, vdd=vdd, library=library, fa=fa)
    if inner.macs_per_cycle != 1:
        raise FmtlabError("promoted accumulators are modelled for scalar MAC lanes, not MX block units")
    n = min(acc.interval, 1 << 20)
    lib = get_library(library, fa)
    tech = Technology(node, vdd if vdd is not None else (0.9 if node == 45 else None))
    cal = calibrate(library, "ripple", "array", fa).e
    ef = tech.energy_factor()
    rows = list(inner.breakdown)
    for p in promotion_adder_parts(acc.inner, acc.outer):
        cells = p.component.cells()
        ge = ge_of(cells, lib) * p.count / n
        rows.append(PartCost(f"promotion (1/{n}): {p.label}", p.component.describe(), p.count / n,
                             p.component.energy_class, tuple(sorted((c, k * p.count / n) for c, k in cells.items())),
                             ge, ge * cal[p.component.energy_class] * ef))
    area = sum(r.area_ge for r in rows)
    energy = sum(r.energy_pj for r in rows)
    return MacCost(f"{inner.weight} x {inner.activation} -> {acc.name}", inner.weight, inner.activation,
                   acc.name, 1, area, area * tech.um2_per_ge(lib), energy, tuple(rows), tech.node_nm,
                   float(tech.vdd), library, inner.acc_bits)
