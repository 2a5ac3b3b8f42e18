"""hwcomponents ``ComponentModel`` classes: ``FmtlabMAC`` (a MAC of any fmtlab format pair),
``FmtlabPromotedMAC`` (a MAC lane into a promoted accumulator) and ``FmtlabScaleUnit`` (a scale /
quantizer unit by name: ``e4m3_scale_multiply``, ``mx_shared_exponent``, ``absmax``,
``fp32_scale_multiply``, ``promotion_adder``).

Needs ``hwcomponents`` (Python >= 3.12). Discovered by hwcomponents through the top-level
package ``hwcomponents_fmtlab``; look it up with hwcomponents' own API, e.g.::

    import hwcomponents as hwc
    attrs = dict(weight_format="mxfp4", activation_format="mxfp4", tech_node=7e-9)
    area_m2 = hwc.get_area("fmtlab_mac", attrs)
    energy_j = hwc.get_action_cost("fmtlab_mac", attrs, "compute", {}).energy

Numbers come from :func:`fmtlab.hw.hwc.mac_si`; their accuracy is :data:`fmtlab.hw.hwc.ACCURACY`.
"""

from __future__ import annotations

from hwcomponents import ActionCost, ComponentModel, action

from fmtlab.hw.hwc import ACCURACY, mac_si, promoted_mac_si, scale_unit_si


class _PricedOperation:
    """What the three models share: built from an fmtlab SI cost record (``unit``, ``energy_j``,
    ``area_m2``), one ``compute`` action costing ``energy_j``; leakage and latency 0 (not modelled)."""

    def _price(self, si) -> None:
        self.unit = si.unit
        self.energy_j = si.energy_j
        self.accuracy = ACCURACY
        ComponentModel.__init__(self, area=si.area_m2, leak_power=0.0)

    @action
    def compute(self) -> ActionCost:
        """One operation (a multiply-accumulate, a block scale, ...): energy in J; latency 0."""
        return ActionCost(energy=self.energy_j, latency=0.0, throughput=float("inf"))


class FmtlabMAC(_PricedOperation, ComponentModel):
    """One MAC lane for ``weight_format x activation_format -> accumulator`` (fmtlab names,
    e.g. ``"fp8_e4m3"``, ``"mxfp4"``, accumulator ``"fp32"``, ``"int32"``, ``"kulisch"``; None:
    int32 for integer-like operands, fp32 for floats) at ``tech_node`` (metres) and ``vdd`` (V;
    None: the node's nominal supply). Area in m^2 per MAC (an MX block unit's area over its
    block size), ``compute``: energy in J of one multiply-accumulate. Leakage 0 and latency 0
    (not modelled); throughput: one MAC per action.
    """

    component_name = ["fmtlab_mac", "FmtlabMAC"]
    priority = 0.5

    def __init__(self, weight_format: str, activation_format: str, accumulator: str | None = None,
                 tech_node: float = 45e-9, vdd: float | None = None, library: str = "nangate45"):
        self._price(mac_si(weight_format, activation_format, accumulator, tech_node=tech_node, vdd=vdd,
                           library=library))


class FmtlabPromotedMAC(_PricedOperation, ComponentModel):
    """One MAC lane of ``weight_format x activation_format`` into a two-level promoted accumulator
    (``accumulator``: a preset such as ``"hopper_fp8_mma"``: an e8m13 inner accumulator promoted into
    fp32 every 128 products) at ``tech_node`` (metres). Area in m^2 per lane (the promotion adder
    shared by its interval's lanes), ``compute``: J per multiply-accumulate. Leakage and latency 0."""

    component_name = ["fmtlab_promoted_mac", "FmtlabPromotedMAC"]
    priority = 0.5

    def __init__(self, weight_format: str, activation_format: str, accumulator: str = "hopper_fp8_mma",
                 tech_node: float = 45e-9, vdd: float | None = None, library: str = "nangate45"):
        self._price(promoted_mac_si(weight_format, activation_format, accumulator, tech_node=tech_node,
                                    vdd=vdd, library=library))


class FmtlabScaleUnit(_PricedOperation, ComponentModel):
    """A scale / quantizer unit by ``kind`` (:data:`fmtlab.hw.hwc.SCALE_UNITS`): ``e4m3_scale_multiply``
    (NVFP4's block-scale multiply; ``sum_bits``), ``mx_shared_exponent`` and ``absmax`` (over a block of
    ``block`` inputs), ``fp32_scale_multiply``, ``promotion_adder``. Area in m^2 of one unit,
    ``compute``: J of one operation (one block, one output, one promotion). Leakage and latency 0."""

    component_name = ["fmtlab_scale_unit", "FmtlabScaleUnit"]
    priority = 0.5

    def __init__(self, kind: str, block: int | None = None, sum_bits: int | None = None,
                 tech_node: float = 45e-9, vdd: float | None = None, library: str = "nangate45"):
        self._price(scale_unit_si(kind, block=block, sum_bits=sum_bits, tech_node=tech_node, vdd=vdd,
                                  library=library))
