"""fmtlab's hardware units in the SI units hwcomponents / Accelergy expect.

:func:`mac_si` (a MAC of any format pair), :func:`promoted_mac_si` (a MAC lane into a promoted
accumulator such as ``hopper_fp8_mma``) and :func:`scale_unit_si` (the scale / quantizer units of
:mod:`fmtlab.hw.scale_units`) need nothing but fmtlab; :mod:`fmtlab.hw.hwc_model` wraps them as
``hwcomponents.ComponentModel`` classes (``FmtlabMAC``, ``FmtlabPromotedMAC``, ``FmtlabScaleUnit``),
which hwcomponents discovers through the
top-level package ``hwcomponents_fmtlab`` (hwcomponents imports every installed top-level module
whose name starts with ``hwcomponents_`` and collects the ``ComponentModel`` subclasses in it).

Accuracy (see :data:`ACCURACY`): area is the analytical model of :mod:`fmtlab.hw.mac`, checked
against Yosys synthesis of the same RTL (``fmtlab hw synth --cache-only``); energy is calibrated
to Horowitz (ISSCC 2014) 45 nm figures; leakage and latency are not modelled (reported as 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.hw.mac import mac_cost
from fmtlab.hw.operands import FloatAcc
from fmtlab.hw.scale_units import (absmax_tree_parts, fp8_scale_multiply_parts, mx_shared_exponent_parts,
                                   price_parts, promoted_mac_cost, promotion_adder_parts, scale_multiply_parts)

#: What the numbers are worth; quoted by the hwcomponents model's docstring and the README.
ACCURACY = (
    "Area: analytical gate-level model; its area ratios to an int8 x int8 -> int32 MAC are "
    "within 15% of Yosys synthesis of fmtlab's own RTL (OSU 0.18 um cells) for all 16 units of "
    "`fmtlab hw synth` (mean |error| 6%, max 13.6%); absolute GE lie within -5%..+19% of "
    "synthesis. Energy: per-class fJ/GE fitted to Horowitz (ISSCC 2014) 45 nm add/mult "
    "energies (mean |error| 20%, max 50% over the 8 calibration ops). Node scaling: Stillmaker "
    "& Baas 2017. Scale / quantizer units and the promotion adder (FmtlabScaleUnit, FmtlabPromotedMAC): "
    "within 15% of Yosys synthesis of fmtlab's RTL of each datapath (`fmtlab hw synth --cost-units`); "
    "the e8m13 inner MAC of hopper_fp8_mma is the exception (+19% as a ratio to the int8 MAC). "
    "Leakage and latency are not modelled (0)."
)

UM2_TO_M2 = 1e-12
PJ_TO_J = 1e-12


@dataclasses.dataclass(frozen=True)
class MacSI:
    """One MAC lane in SI units.

    area_m2: area per MAC (an MX block unit of k MACs is divided by k); energy_j: energy of one
    multiply-accumulate; node_nm: the technology node the numbers are scaled to.
    """

    unit: str
    area_m2: float
    energy_j: float
    node_nm: int
    vdd: float


def node_nm_of(tech_node: float) -> int:
    """A technology node given in metres (hwcomponents' convention, e.g. ``45e-9``) or in nm
    (a number >= 1, e.g. ``45``) as an integer nm that fmtlab's scaling tables cover."""
    try:
        t = float(tech_node)
    except (TypeError, ValueError):
        raise FmtlabError(f"tech_node={tech_node!r} is not a number (metres, e.g. 45e-9)") from None
    if not math.isfinite(t) or t <= 0:
        raise FmtlabError(f"tech_node={tech_node!r} must be a positive length (metres, e.g. 45e-9)")
    nm = t * 1e9 if t < 1e-3 else t
    r = round(nm)
    if abs(nm - r) > 1e-6 * max(nm, 1.0):
        raise FmtlabError(f"tech_node={tech_node!r} is not a whole number of nm")
    return int(r)


def mac_si(weight: Any, activation: Any, accumulator: Any = None, *, tech_node: float = 45e-9,
           vdd: float | None = None, library: str = "nangate45") -> MacSI:
    """Area (m^2 per MAC) and energy (J per MAC) of ``weight x activation -> accumulator``.

    Formats are fmtlab names (``"int8"``, ``"fp8_e4m3"``, ``"mxfp4"`` ...) or format objects;
    accumulator defaults as in :func:`fmtlab.hw.mac_cost`. Raises :class:`FmtlabError` for an
    unknown format, an invalid pairing or a node without scaling data.
    """
    c = mac_cost(weight, activation, accumulator, node=node_nm_of(tech_node), vdd=vdd,
                 library=library)
    return MacSI(c.unit, c.area_um2_per_mac * UM2_TO_M2, c.energy_pj * PJ_TO_J, c.node_nm, c.vdd)


def promoted_mac_si(weight: Any, activation: Any, accumulator: Any = "hopper_fp8_mma", *,
                    tech_node: float = 45e-9, vdd: float | None = None, library: str = "nangate45") -> MacSI:
    """One MAC lane into a two-level promoted accumulator (e.g. ``"hopper_fp8_mma"``), in SI units:
    :func:`fmtlab.hw.scale_units.promoted_mac_cost` (the promotion adder's area and energy / its
    interval per lane and MAC)."""
    c = promoted_mac_cost(weight, activation, accumulator, node=node_nm_of(tech_node), vdd=vdd, library=library)
    return MacSI(c.unit, c.area_um2_per_mac * UM2_TO_M2, c.energy_pj * PJ_TO_J, c.node_nm, c.vdd)


#: scale / quantizer units by name: what one ``compute`` action is, and its parts builder
SCALE_UNITS = {
    "e4m3_scale_multiply": ("one NVFP4 block-scale multiply (two E4M3 scales applied to a block sum of "
                            "`sum_bits` bits)", lambda p: fp8_scale_multiply_parts(int(p.get("sum_bits", 13)))),
    "mx_shared_exponent": ("the MX shared-exponent logic of one block of `block` bf16 inputs",
                           lambda p: mx_shared_exponent_parts(int(p.get("block", 32)))),
    "absmax": ("the |x| max over one block of `block` bf16 inputs",
               lambda p: absmax_tree_parts(int(p.get("block", 16)))),
    "fp32_scale_multiply": ("one fp32 multiply of a dot product by its scale", lambda p: scale_multiply_parts()),
    "promotion_adder": ("one promotion of an e8m13 partial sum into an fp32 accumulator",
                        lambda p: promotion_adder_parts(FloatAcc(8, 13))),
}


@dataclasses.dataclass(frozen=True)
class UnitSI:
    """A scale / quantizer unit in SI units: area_m2 of one unit, energy_j of one operation."""

    unit: str
    action: str
    area_m2: float
    energy_j: float
    node_nm: int


def scale_unit_si(kind: str, *, block: int | None = None, sum_bits: int | None = None,
                  tech_node: float = 45e-9, vdd: float | None = None, library: str = "nangate45") -> UnitSI:
    """Area (m^2) and energy per operation (J) of a scale / quantizer unit of :data:`SCALE_UNITS`
    (``block``: elements per block where the unit works on one; ``sum_bits``: block-sum width of
    the E4M3 scale multiply). FmtlabError names the known kinds for an unknown one."""
    if kind not in SCALE_UNITS:
        raise FmtlabError(f"unknown scale unit {kind!r}; known: {', '.join(SCALE_UNITS)}")
    what, build = SCALE_UNITS[kind]
    params = {k: v for k, v in (("block", block), ("sum_bits", sum_bits)) if v is not None}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise FmtlabError(f"{k} must be an int >= 2, got {v!r}")
    node = node_nm_of(tech_node)
    r = price_parts(kind, build(params), node, vdd, library)
    return UnitSI(kind, what, r.area_um2 * UM2_TO_M2, r.energy_pj * PJ_TO_J, node)
