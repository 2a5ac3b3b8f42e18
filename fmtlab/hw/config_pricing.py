"""MAC pricing of a replay config: the MAC unit of its (weight, activation) element formats.

A config is priced by the MAC unit of its (weight, activation) element formats; MX block
quantizers by the MX block-dot unit; NVFP4 by an MX FP4 unit with block 16 plus its E4M3
block-scale multiply (:func:`fmtlab.hw.scale_units.fp8_scale_multiply_parts`, one per block: its
area and energy / block per MAC). Costs are per MAC at a technology node (nm): area in gate
equivalents and um^2, energy in pJ (:func:`fmtlab.hw.mac.mac_cost`). What happens once per output
or per token rather than per MAC -- per-channel / per-token scale multiplies, the dynamic
quantizers, transform overheads, memory traffic -- is priced per decoded token by
:func:`fmtlab.hw.inference_cost`; the notes say so.

Used by ``fmtlab report`` (the cost columns) and ``fmtlab explore`` (the cost objectives).
"""

from __future__ import annotations

import math
from typing import Any

from fmtlab.formats import PerBlock, Quantizer, get_quantizer
from fmtlab.formats.scaling import MixFP4
from fmtlab.formats.names import parse_call
from fmtlab.hw.mac import mac_cost, mx_geometry
from fmtlab.hw.operands import parse_operand, view
from fmtlab.hw.scale_units import fp8_scale_multiply_parts, price_parts
from fmtlab.hw.transform_cost import transform_cost

__all__ = ["hw_operand", "price_config", "block_scale_per_mac", "FP8_SCALE_NOTE"]

#: the hw_operand note of a block quantizer with FP8 (E4M3) block scales, priced with its multiply
FP8_SCALE_NOTE = "block-scale multiply (one per block)"


def block_scale_per_mac(w: str, a: str, node: int = 45) -> tuple[float, float, float]:
    """(GE, um^2, pJ) per MAC of the E4M3 x E4M3 block-scale multiply of a block-dot unit of hw
    operands ``w`` x ``a`` (one multiply per block, so its cost / block per MAC)."""
    bf = parse_operand(w)
    sb = mx_geometry(view(bf.element), view(parse_operand(a).element), bf.block)["sum_bits"]
    ps = price_parts("fp8 scale multiply", fp8_scale_multiply_parts(sb), node)
    return ps.area_ge / bf.block, ps.area_um2 / bf.block, ps.energy_pj / bf.block


def hw_operand(spec: Any) -> tuple[str | None, str]:
    """(hw operand name, note) of a quantizer spec: element format, or an MX block unit."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "fp32", "float32", "identity")):
        return None, "not quantized"
    if isinstance(spec, Quantizer):
        q = spec
    elif isinstance(spec, str):
        name, kw = parse_call(spec)
        q = get_quantizer(name, **kw)
    else:
        return None, "custom quantizer (not priced)"
    fmt = q.format
    g = q.granularity
    if isinstance(g, PerBlock):
        # a 2-D r x c tile holds c elements of the reduction axis per scale (weights [out, in])
        k = g.size if g.tile is None else g.tile[1]
        if isinstance(q.scale_rule, MixFP4):  # arXiv 2605.31035: both element types decode to E2M2
            return (f"mxe2m2_fin_b{k}", f"MixFP4: E2M1/E1M2 elements priced as the internal E2M2 "
                    f"(e2m2_fin) block-{k} unit with its {g.scale_format} {FP8_SCALE_NOTE}; the "
                    "per-block format-select decode is not priced")
        if g.scale_format == "e8m0":
            return (f"mx{fmt.name}" if k == 32 else f"mx{fmt.name}_b{k}"), "MX block unit"
        return f"mx{fmt.name}_b{k}", f"block-{k} unit with its {g.scale_format} {FP8_SCALE_NOTE}"
    return fmt.name, "element MAC"


def price_config(cfg, node: int = 45) -> dict[str, Any]:
    """MAC cost of a replay config: area (GE, um^2 per MAC) and energy per MAC, or NaN + a note."""
    w, wn = hw_operand(cfg.weight)
    a, an = hw_operand(cfg.act)
    row: dict[str, Any] = {"config": cfg.name, "hw_weight": w, "hw_activation": a, "mac_unit": None,
                           "area_ge": math.nan, "area_um2": math.nan, "energy_pj": math.nan, "hw_note": ""}
    if w is None or a is None:
        row["hw_note"] = "reference (not priced)" if w is None and a is None else f"w: {wn}; a: {an}"
        return row
    try:
        c = mac_cost(w, a, node=node)
    except Exception as exc:  # noqa: BLE001 - an unpriceable pair is reported, not fatal
        row["hw_note"] = f"not priced: {exc}"
        return row
    notes = {wn, an} - {"element MAC", "MX block unit"}
    area_ge, area_um2, energy = c.area_ge_per_mac, c.area_um2_per_mac, c.energy_pj
    if FP8_SCALE_NOTE in wn + an:
        ge, um2, pj = block_scale_per_mac(w, a, node)
        area_ge, area_um2, energy = area_ge + ge, area_um2 + um2, energy + pj
    if cfg.transform:
        t = transform_cost(cfg.transform)
        notes.add(t.note if t.kind in ("merged", "none") and t.note else
                  f"transform {t.name}: its per-token overhead is priced in the energy per token")
    row.update(mac_unit=c.unit, area_ge=area_ge, area_um2=area_um2, energy_pj=energy,
               hw_note="; ".join(sorted(notes)))
    return row
