"""MAC pricing of a replay config (fmtlab.hw.config_pricing)."""

import math
from types import SimpleNamespace

from fmtlab.hw import mac_cost
from fmtlab.hw.config_pricing import hw_operand, price_config


def test_hw_operand_mapping():
    assert hw_operand("int8_per_token") == ("int8", "element MAC")
    assert hw_operand("mxfp8_e4m3")[0] == "mxfp8_e4m3"
    assert hw_operand("nvfp4")[0] == "mxfp4_e2m1_b16"
    assert hw_operand(None)[0] is None
    assert hw_operand(object()) == (None, "custom quantizer (not priced)")


def test_price_config_is_the_mac_cost_of_its_operands():
    cfg = SimpleNamespace(name="w8a8", weight="int8_per_channel", act="int8_per_token", transform=None)
    row = price_config(cfg, node=45)
    c = mac_cost("int8", "int8", node=45)
    assert row["mac_unit"] == c.unit and row["area_ge"] == c.area_ge_per_mac and row["energy_pj"] == c.energy_pj
    assert row["hw_note"] == ""
    ref = price_config(SimpleNamespace(name="fp32", weight=None, act=None, transform=None))
    assert math.isnan(ref["area_ge"]) and ref["hw_note"] == "reference (not priced)"
    t = price_config(SimpleNamespace(name="h", weight="int8_per_channel", act="int8_per_token", transform="hadamard"))
    assert "per-token overhead is priced in the energy per token" in t["hw_note"]
    sq = price_config(SimpleNamespace(name="s", weight="int8_per_channel", act="int8_per_tensor",
                                      transform="smoothquant(alpha=0.5)"))
    assert sq["hw_note"] == "merged into the weights (0)" and sq["energy_pj"] == mac_cost("int8", "int8").energy_pj


def test_nvfp4_carries_its_e4m3_scale_multiply():
    """NVFP4 = the FP4 block-16 unit + one E4M3 x E4M3 scale multiply per block (area and energy / 16)."""
    from fmtlab.hw.scale_units import fp8_scale_multiply_parts, price_parts

    row = price_config(SimpleNamespace(name="nv", weight="nvfp4", act="nvfp4", transform=None))
    unit = mac_cost("mxfp4_e2m1_b16", "mxfp4_e2m1_b16")
    sm = price_parts("s", fp8_scale_multiply_parts(13))
    assert row["energy_pj"] == unit.energy_pj + sm.energy_pj / 16
    assert row["area_ge"] == unit.area_ge_per_mac + sm.area_ge / 16
    assert "block-scale multiply" in row["hw_note"] and "not modelled" not in row["hw_note"]
