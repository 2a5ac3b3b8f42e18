"""Cost of PEG (per-embedding-group) activation scales on a MAC row: K scales per row.

A dot product of length d (the reduction over the features) with PEG activations splits into K
group sums: ``y = sum_g s_g * sum_{j in g} a_j w_j`` (the weights are permuted offline with the
features, so every group is a contiguous run and one integer accumulator serves them in turn).
Per output element the MAC unit does d MACs as usual; in addition each group's partial sum is
scaled and added to a running float sum (one *scale multiply-add* per group), and the K group
scales sit in K 32-bit registers next to the row. Per-tensor scaling is the same datapath with
K = 1 (one scale multiply per output). So, for one row unit:

    energy per MAC  = E_mac + K * (E_smac + E_reg32) / d
    area per row    = A_mac + A_smac + K * A_reg32        (one scale unit, time-shared by the K groups)

E_mac / A_mac: :func:`fmtlab.hw.mac.mac_cost` of (weight, activation, accumulator); E_smac /
A_smac: the scale multiply-add, priced as the MAC unit of ``scale_mac`` (default FP16 x FP16 ->
FP32, the cheapest float MAC the model has; the INT32 -> float conversion of the partial sum is
not priced); E_reg32 / A_reg32: a 32-bit register (:class:`fmtlab.hw.components.Register`),
written once per group per row, with the energy calibration of :mod:`fmtlab.hw.energy`. The
overhead over per-tensor scales is the K - 1 extra terms.
"""

from __future__ import annotations

import dataclasses

from fmtlab.errors import FmtlabError
from fmtlab.hw.components import Register, ge_of
from fmtlab.hw.energy import calibrate
from fmtlab.hw.mac import mac_cost
from fmtlab.hw.tech import Technology, get_library

__all__ = ["PegRowCost", "peg_row_cost"]


@dataclasses.dataclass(frozen=True)
class PegRowCost:
    """PEG cost of one MAC row (see the module docstring for the formula). Energies in pJ, areas
    in gate equivalents; ``*_overhead`` are relative to the same row with per-tensor scales."""

    groups: int
    row_length: int
    mac_energy_pj: float
    scale_energy_pj: float  # one scale multiply-add + one register write
    energy_per_mac_pj: float
    area_ge: float
    energy_overhead: float
    area_overhead: float


def peg_row_cost(weight: str = "int8", activation: str = "int8", groups: int = 6, row_length: int = 576, *,
                 accumulator: str | None = None, scale_mac: tuple[str, str, str] = ("fp16", "fp16", "fp32"),
                 node: int = 45, library: str = "nangate45") -> PegRowCost:
    """Energy per MAC and area of a row unit with K = ``groups`` activation scales per row of
    ``row_length`` MACs (the layer's in_features)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise FmtlabError(f"groups must be an int >= 1, got {groups=!r}")
    if isinstance(row_length, bool) or not isinstance(row_length, int) or row_length < groups:
        raise FmtlabError(f"row_length must be an int >= groups ({groups}), got {row_length=!r}")
    mac = mac_cost(weight, activation, accumulator, node=node, library=library)
    smac = mac_cost(*scale_mac, node=node, library=library)
    lib = get_library(library)
    reg = Register(32)
    reg_ge = ge_of(reg.cells(), lib)
    reg_pj = reg_ge * calibrate(library).e[reg.energy_class] * Technology(node).energy_factor()
    per_group = smac.energy_pj + reg_pj
    e = mac.energy_pj + groups * per_group / row_length
    e1 = mac.energy_pj + per_group / row_length
    area = mac.area_ge + smac.area_ge + groups * reg_ge
    a1 = mac.area_ge + smac.area_ge + reg_ge
    return PegRowCost(groups, row_length, mac.energy_pj, per_group, e, area, e / e1 - 1.0, area / a1 - 1.0)
