"""Yosys cross-check of the datapaths issue 21 added beside the MAC table: the flush-to-zero FP8
MAC (with its IEEE twin), the inner unit of ``hopper_fp8_mma``, NVFP4's E4M3 scale multiply, the
MX shared-exponent logic, the quantizer's absmax tree and the promotion adder.

``fmtlab hw synth --cost-units`` prints :func:`cost_unit_table`. Model areas are priced in the
cell library the synthesis maps to (OSU 0.18 um, ``osu018``); "ratio error" compares model / synth
of each unit relative to the int8 x int8 -> int32 MAC, as ``fmtlab hw synth`` does for MAC units.

The known exception is the inner e8m13 unit of ``hopper_fp8_mma`` (+28.9% absolute, +23.4% as a
ratio). What Yosys shows (session-5 note of issue 21, same flow, private cache): the model is
above synthesis by a roughly constant 250-390 GE for every fp8_e4m3 product into an e8mM
accumulator (M = 9..23: +17% to +29%, larger in relative terms where the unit is smaller), its
slope over M matches synthesis (57 vs 53 GE per accumulator mantissa bit), and Yosys scatters by
about 8% between neighbouring units (e8m12 synthesises to 1431 GE, e8m13 to 1337). Synthesised
apart, the FP adder is within 9% of the model (e8m13: 1438 GE vs 1312; fp32: 1643 vs 1752) and
the fp8 product about 60 GE below it (230 vs 294); the rest is optimisation across the
product/adder boundary, 0% to 25% of the two parts depending on the unit (0% into fp16, 6% into
fp32, 7% into bf16, 25% into e8m13), with no monotone dependence on the operand widths.
A width-parameterised FP-adder formula therefore cannot close it without a per-unit fit; the
test allows this one unit 25%.
"""

from __future__ import annotations

import dataclasses

from fmtlab.errors import FmtlabError
from fmtlab.hw.catalogue import BASELINE
from fmtlab.hw.mac import make_unit, unit_cost
from fmtlab.hw.rtl import generate
from fmtlab.hw.rtl_scale import scale_units
from fmtlab.hw.scale_units import price_parts
from fmtlab.hw.synth import cached, liberty_path, synthesize

__all__ = ["CostUnitRow", "cost_unit_rows", "cost_unit_table", "COST_MAC_UNITS"]

#: MAC units of the cross-check: (weight, activation, accumulator, ftz)
COST_MAC_UNITS = (("fp8_e4m3", "fp8_e4m3", "fp32", False), ("fp8_e4m3", "fp8_e4m3", "fp32", True),
                  ("fp8_e4m3", "fp8_e4m3", "e8m13", False))


@dataclasses.dataclass(frozen=True)
class CostUnitRow:
    """Model and Yosys area (GE, OSU 0.18 um) of one datapath and the errors."""

    unit: str
    model_ge: float
    synth_ge: float
    transistors: int
    base_model_ge: float
    base_synth_ge: float

    @property
    def error(self) -> float:
        return self.model_ge / self.synth_ge - 1.0

    @property
    def ratio_error(self) -> float:
        return (self.model_ge / self.base_model_ge) / (self.synth_ge / self.base_synth_ge) - 1.0


def _synth(rtl, cache_only: bool):
    lib = liberty_path()
    if cache_only:
        return cached(rtl, lib if lib else "shipped")
    if lib is None:
        raise FmtlabError("the OSU 0.18 um Liberty file is missing (Debian: apt-get install qflow-tech-osu018)")
    return synthesize(rtl, lib)


def cost_unit_rows(cache_only: bool = False) -> list[CostUnitRow]:
    """One row per datapath (units without a cached result are skipped when ``cache_only``)."""
    base = make_unit(*BASELINE)
    bs = _synth(generate(base), cache_only)
    if bs is None:
        raise FmtlabError("no cached synthesis result for the int8 baseline")
    bm = unit_cost(base, library="osu018").area_ge
    rows = []
    items = [(make_unit(w, a, acc, ftz=ftz), None) for w, a, acc, ftz in COST_MAC_UNITS]
    items += [(None, u) for u in scale_units()]
    for mu, su in items:
        if mu is not None:
            rtl, name, model = generate(mu), mu.name, unit_cost(mu, library="osu018").area_ge
        else:
            rtl, name, model = su.rtl, su.name, price_parts(su.name, list(su.parts), library="osu018").area_ge
        s = _synth(rtl, cache_only)
        if s is None or s.ge is None:
            continue
        rows.append(CostUnitRow(name, model, s.ge, s.transistors, bm, bs.ge))
    return rows


def cost_unit_table(rows: list[CostUnitRow]) -> str:
    """Markdown table of :func:`cost_unit_rows`, plus the FTZ / IEEE ratio when both are there."""
    out = ["| datapath | model GE | Yosys GE (osu018) | Yosys transistors | error | ratio error vs int8 MAC |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.unit} | {r.model_ge:.0f} | {r.synth_ge:.0f} | {r.transistors} | "
                   f"{100 * r.error:+.1f}% | {100 * r.ratio_error:+.1f}% |")
    by = {r.unit: r for r in rows}
    ieee, ftz = by.get("fp8_e4m3 x fp8_e4m3 -> fp32"), by.get("fp8_e4m3 x fp8_e4m3 -> fp32 ftz")
    if ieee and ftz:
        out.append("")
        out.append(f"IEEE / FTZ FP8 x FP8 -> FP32 area: model {ieee.model_ge / ftz.model_ge:.2f}x, "
                   f"Yosys {ieee.synth_ge / ftz.synth_ge:.2f}x (cells), "
                   f"{ieee.transistors / ftz.transistors:.2f}x (transistor estimate)")
    return "\n".join(out)
