"""A MAC priced by :func:`fmtlab.hw.mac_cost`, in the SI units hwcomponents / Accelergy expect.

:func:`mac_si` needs nothing but fmtlab; :mod:`fmtlab.hw.hwc_model` wraps it as an
``hwcomponents.ComponentModel`` (``FmtlabMAC``), which hwcomponents discovers through the
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

#: What the numbers are worth; quoted by the hwcomponents model's docstring and the README.
ACCURACY = (
    "Area: analytical gate-level model; its area ratios to an int8 x int8 -> int32 MAC are "
    "within 15% of Yosys synthesis of fmtlab's own RTL (OSU 0.18 um cells) for all 16 units of "
    "`fmtlab hw synth` (mean |error| 7%, max 14.7%); absolute GE lie within -5%..+20% of "
    "synthesis. Energy: per-class fJ/GE fitted to Horowitz (ISSCC 2014) 45 nm add/mult "
    "energies (mean |error| 20%, max 49% over the 8 calibration ops). Node scaling: Stillmaker "
    "& Baas 2017. Leakage and latency are not modelled (0)."
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
