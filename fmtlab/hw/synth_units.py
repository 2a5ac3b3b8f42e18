"""Yosys cross-check of the datapaths issue 21 added beside the MAC table: the flush-to-zero FP8
MAC (with its IEEE twin), the inner unit of ``hopper_fp8_mma``, NVFP4's E4M3 scale multiply, the
MX shared-exponent logic, the quantizer's absmax tree and the promotion adder.

``fmtlab hw synth --cost-units`` prints :func:`cost_unit_table`. Model areas are priced in the
cell library the synthesis maps to (OSU 0.18 um, ``osu018``); "ratio error" compares model / synth
of each unit relative to the int8 x int8 -> int32 MAC, as ``fmtlab hw synth`` does for MAC units.

The known exception is the inner e8m13 unit of ``hopper_fp8_mma``: +24.0% absolute, +18.8% as a
ratio (session 6 of issue 21, after the leading-zero counter and the FP product were priced from
their own RTL synthesised; before: +28.9% / +23.4%). What dominates (same flow; commands in the
session-5 and session-6 notes of issue 21): synthesised apart, the model prices the FP adder 12%
*below* Yosys (model 1271 GE, Yosys 1438) and the fp8 product 40 GE above it (270 vs 230), but
the whole unit synthesises 420 GE (25%) smaller than its two parts apart; that saving is 6-7%
into fp32, e8m12 and bf16 and does not follow the operand widths, so a sum-of-parts model cannot
price it without a per-unit fit. The reference itself is sensitive to the abc step: the same RTL
under the documented script variants (:data:`fmtlab.hw.synth.SCRIPT_VARIANTS`) spans 1231-1593
GE (29%), the fp32 twin 1744-2129 GE (22%), the int8 MAC 859-897 GE (4%); against the median of
the variants the e8m13 ratio error is +13.4%. The test allows this one unit 20%.
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


def _synth(rtl, cache_only: bool, variant: str = "default"):
    lib = liberty_path()
    if cache_only:
        return cached(rtl, lib if lib else "shipped", variant)
    if lib is None:
        raise FmtlabError("the OSU 0.18 um Liberty file is missing (Debian: apt-get install qflow-tech-osu018)")
    return synthesize(rtl, lib, variant=variant)


def cost_unit_rows(cache_only: bool = False, variant: str = "default") -> list[CostUnitRow]:
    """One row per datapath (units without a cached result are skipped when ``cache_only``);
    ``variant``: the Yosys script (:data:`fmtlab.hw.synth.SCRIPT_VARIANTS`)."""
    base = make_unit(*BASELINE)
    bs = _synth(generate(base), cache_only, variant)
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
        s = _synth(rtl, cache_only, variant)
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
