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
    assert "transform hadamard overhead not priced" in t["hw_note"]
