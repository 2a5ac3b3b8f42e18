"""MAC pricing of a replay config: the MAC unit of its (weight, activation) element formats.

A config is priced by the MAC unit of its (weight, activation) element formats; MX block
quantizers by the MX block-dot unit; NVFP4 by an MX FP4 unit with block 16 (its E4M3 block-scale
multiply is not modelled); per-channel/per-token scale multiplies (once per output, not per MAC)
and transform overheads are not priced. Costs are per MAC at a technology node (nm): area in gate
equivalents and um^2, energy in pJ (:func:`fmtlab.hw.mac.mac_cost`).

Used by ``fmtlab report`` (the cost columns) and ``fmtlab explore`` (the cost objectives).
"""

from __future__ import annotations

import math
from typing import Any

from fmtlab.formats import PerBlock, Quantizer, get_quantizer
from fmtlab.formats.names import parse_call
from fmtlab.hw.mac import mac_cost

__all__ = ["hw_operand", "price_config"]


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
        if g.scale_format == "e8m0":
            return (f"mx{fmt.name}" if g.size == 32 else f"mx{fmt.name}_b{g.size}"), "MX block unit"
        return f"mx{fmt.name}_b{g.size}", (f"priced as an E8M0-scaled block-{g.size} unit "
                                           f"({g.scale_format} block-scale multiply not modelled)")
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
    if cfg.transform:
        notes.add(f"transform {cfg.transform} overhead not priced")
    row.update(mac_unit=c.unit, area_ge=c.area_ge_per_mac, area_um2=c.area_um2_per_mac,
               energy_pj=c.energy_pj, hw_note="; ".join(sorted(notes)))
    return row
