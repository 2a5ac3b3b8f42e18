"""The hwcomponents (Accelergy / Timeloop) model of a fmtlab MAC: SI units, discovery, lookup.

Invariants: area_m2 = mac_cost's um^2 per MAC x 1e-12 and energy_j = its pJ per MAC x 1e-12, at
the node asked for; hwcomponents' own lookup (``get_models`` / ``get_area`` /
``get_action_cost`` by component name) finds ``FmtlabMAC`` through the ``hwcomponents_fmtlab``
package and returns those same numbers.
"""

from pathlib import Path

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.hw import mac_cost
from fmtlab.hw.hwc import ACCURACY, SCALE_UNITS, mac_si, node_nm_of, promoted_mac_si, scale_unit_si
from fmtlab.hw.scale_units import (fp8_scale_multiply_parts, mx_shared_exponent_parts, price_parts,
                                   promoted_mac_cost)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("w,a,acc", [("int8", "int8", None), ("fp8_e4m3", "fp8_e4m3", "fp32"),
                                     ("mxfp4", "mxfp4", None), ("dint4", "int8", "int32")])
def test_mac_si_is_mac_cost_in_si_units(w, a, acc):
    c = mac_cost(w, a, acc, node=7)
    si = mac_si(w, a, acc, tech_node=7e-9)
    assert si.unit == c.unit and si.node_nm == 7
    assert si.area_m2 == c.area_um2_per_mac * 1e-12
    assert si.energy_j == c.energy_pj * 1e-12


def test_mx_area_is_per_mac_lane():
    """An MX block unit prices k MACs; one Timeloop compute lane is 1/k of it."""
    c = mac_cost("mxfp8", "mxfp8")
    assert c.macs_per_cycle == 32
    assert mac_si("mxfp8", "mxfp8").area_m2 == pytest.approx(c.area_um2 / 32 * 1e-12, rel=1e-12)


def test_tech_node_in_metres_or_nm():
    assert node_nm_of(45e-9) == 45 and node_nm_of(7e-9) == 7 and node_nm_of(16) == 16
    for bad in (0, -45e-9, float("nan"), "x", 45.5e-9):
        with pytest.raises(FmtlabError):
            node_nm_of(bad)
    with pytest.raises(FmtlabError, match="node"):
        mac_si("int8", "int8", tech_node=11e-9)  # no scaling data for 11 nm
    with pytest.raises(FmtlabError, match="mixed"):
        mac_si("int8", "fp8_e4m3")


def test_accuracy_is_stated():
    assert "Yosys" in ACCURACY and "Horowitz" in ACCURACY


def _hwcomponents():
    try:
        import hwcomponents
    except (ImportError, SyntaxError) as e:  # its releases are Python >= 3.12 only
        pytest.skip(f"hwcomponents not importable here ({type(e).__name__}: {e})")
    return hwcomponents


def test_hwcomponents_finds_and_prices_fmtlab_mac(monkeypatch):
    """Through hwcomponents' own discovery (top-level ``hwcomponents_*`` modules), not by
    importing FmtlabMAC: the repo root is put on sys.path so an un-installed checkout works."""
    hwc = _hwcomponents()
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    found = hwc.get_models(name_must_include="fmtlab")
    assert sorted(m.__name__ for m in found) == ["FmtlabMAC", "FmtlabPromotedMAC", "FmtlabScaleUnit"]
    for w, a, acc, node in [("mxfp4", "mxfp4", None, 7e-9), ("fp8_e4m3", "fp8_e4m3", "fp32", 45e-9),
                            ("int8", "int8", "int32", 45e-9)]:
        attrs = dict(weight_format=w, activation_format=a, accumulator=acc, tech_node=node)
        si = mac_si(w, a, acc, tech_node=node)
        assert hwc.get_area("fmtlab_mac", attrs) == si.area_m2
        cost = hwc.get_action_cost("fmtlab_mac", attrs, "compute", {})
        assert cost.energy == si.energy_j
        assert hwc.get_leak_power("fmtlab_mac", attrs) == 0.0
    # swapping the format of one architecture component changes its price
    fp8 = hwc.get_area("fmtlab_mac", dict(weight_format="fp8_e4m3", activation_format="fp8_e4m3"))
    mx4 = hwc.get_area("fmtlab_mac", dict(weight_format="mxfp4", activation_format="mxfp4"))
    assert mx4 < fp8
    with pytest.raises(Exception, match="mixed integer-like"):
        hwc.get_area("fmtlab_mac", dict(weight_format="int8", activation_format="fp8_e4m3"))


def test_promoted_mac_and_scale_units_in_si_units():
    c = promoted_mac_cost("fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma", node=7)
    si = promoted_mac_si("fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma", tech_node=7e-9)
    assert si.unit == "fp8_e4m3 x fp8_e4m3 -> hopper_fp8_mma" and si.node_nm == 7
    assert si.area_m2 == c.area_um2_per_mac * 1e-12 and si.energy_j == c.energy_pj * 1e-12
    u = scale_unit_si("e4m3_scale_multiply", sum_bits=13)
    r = price_parts("e4m3_scale_multiply", fp8_scale_multiply_parts(13))
    assert u.area_m2 == r.area_um2 * 1e-12 and u.energy_j == r.energy_pj * 1e-12
    mx = scale_unit_si("mx_shared_exponent", block=32, tech_node=7e-9)
    assert mx.energy_j == price_parts("mx", mx_shared_exponent_parts(32), 7).energy_pj * 1e-12
    assert set(SCALE_UNITS) >= {"e4m3_scale_multiply", "mx_shared_exponent", "absmax", "promotion_adder"}
    for k in SCALE_UNITS:
        assert scale_unit_si(k).area_m2 > 0
    with pytest.raises(FmtlabError, match="unknown scale unit"):
        scale_unit_si("divider")
    with pytest.raises(FmtlabError, match="block"):
        scale_unit_si("absmax", block=1)


def test_hwcomponents_finds_scale_unit_and_promoted_mac(monkeypatch):
    hwc = _hwcomponents()
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    attrs = dict(kind="e4m3_scale_multiply", sum_bits=13, tech_node=7e-9)
    si = scale_unit_si("e4m3_scale_multiply", sum_bits=13, tech_node=7e-9)
    assert hwc.get_area("fmtlab_scale_unit", attrs) == si.area_m2
    assert hwc.get_action_cost("fmtlab_scale_unit", attrs, "compute", {}).energy == si.energy_j
    pattrs = dict(weight_format="fp8_e4m3", activation_format="fp8_e4m3", accumulator="hopper_fp8_mma",
                  tech_node=45e-9)
    psi = promoted_mac_si("fp8_e4m3", "fp8_e4m3", "hopper_fp8_mma")
    assert hwc.get_area("fmtlab_promoted_mac", pattrs) == psi.area_m2
    assert hwc.get_action_cost("fmtlab_promoted_mac", pattrs, "compute", {}).energy == psi.energy_j
