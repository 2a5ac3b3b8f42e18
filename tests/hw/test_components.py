"""Component formulas, cell libraries and technology scaling."""

import math

import pytest
from hypothesis import given, strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.hw.components import (ArrayMultiplier, BarrelShifter, BoothMultiplier, Comparator,
                                  Decoder, LeadingZeroCounter, Mux, PrefixAdder, Register,
                                  RippleAdder, adder, clog2, multiplier)
from fmtlab.hw.tech import Technology, get_library, list_nodes, load_data

LIB = get_library("nangate45")


def test_nand2_is_one_ge_in_every_library():
    for name in ("nangate45", "osu018"):
        for fa in ("gates", "cells"):
            assert get_library(name, fa).ge("NAND2") == 1.0


def test_every_data_file_names_its_source():
    cells = load_data("cells.json")
    for lib in cells["libraries"].values():
        assert lib["source"]
    assert cells["composite"]["source"]
    assert load_data("tech.json")["source"].startswith("A. Stillmaker and B. Baas")
    assert "Horowitz" in load_data("horowitz2014.json")["source"]


def test_full_adder_as_gates_is_two_xor_three_nand():
    """Gate-level FA = 2 XOR2 + 3 NAND2; HA = XOR2 + AND2 (cells.json 'composite')."""
    lib = get_library("nangate45", "gates")
    assert lib.ge("FA") == pytest.approx(2 * lib.ge("XOR2") + 3)
    assert lib.ge("HA") == pytest.approx(lib.ge("XOR2") + lib.ge("AND2"))
    assert get_library("nangate45", "cells").ge("FA") == pytest.approx(4.256 / 0.798)


def test_unknown_library_and_fa_style_raise():
    with pytest.raises(FmtlabError, match="unknown cell library"):
        get_library("tsmc3")
    with pytest.raises(FmtlabError, match="fa must be"):
        get_library("nangate45", "magic")


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_square_array_multiplier_textbook_count(n):
    """n x n array multiplier: n^2 AND2, n(n-2) FA, n HA."""
    c = ArrayMultiplier(n, n).cells()
    assert c["AND2"] == n * n and c["FA"] == n * (n - 2) and c["HA"] == n


@given(st.integers(2, 24), st.integers(2, 24))
def test_multiplier_reduction_keeps_n_plus_m_bits(n, m):
    """Every FA removes one partial-product bit: AND2 - FA == n + m."""
    c = ArrayMultiplier(n, m).cells()
    assert c["AND2"] - c["FA"] == n + m


@given(st.integers(1, 64))
def test_ripple_adder_has_one_adder_cell_per_bit(n):
    c = RippleAdder(n).cells()
    assert c["FA"] + c["HA"] == n
    assert RippleAdder(n, carry_in=True).cells()["FA"] == n


def test_prefix_adders_cost_more_than_ripple():
    for n in (8, 16, 32):
        r = RippleAdder(n).ge(LIB)
        bk = PrefixAdder(n, "brent_kung").ge(LIB)
        ks = PrefixAdder(n, "kogge_stone").ge(LIB)
        assert r < bk < ks


def test_factories_validate_style():
    assert isinstance(adder(8, "kogge_stone"), PrefixAdder)
    assert isinstance(multiplier(8, 8, style="booth"), BoothMultiplier)
    with pytest.raises(ValueError):
        adder(8, "carry_magic")
    with pytest.raises(ValueError):
        multiplier(8, 8, style="wallace_magic")


@given(st.integers(1, 64), st.integers(1, 64))
def test_barrel_shifter_has_log_stages(n, s):
    """ceil(log2(s+1)) stages; a fixed-width (right) shifter has n cells per stage."""
    c = BarrelShifter(n, s, "right").cells()
    assert c["MUX2"] + c["AND2"] == n * clog2(s + 1)
    left = BarrelShifter(n, s, "left").cells()
    assert left["MUX2"] + left["AND2"] <= (n + s) * clog2(s + 1)


def test_lzc_grows_like_n_log_n():
    g = [LeadingZeroCounter(n).ge(LIB) for n in (8, 16, 32, 64)]
    assert all(b > a for a, b in zip(g, g[1:]))
    assert g[-1] < 64 * 6 * 2.5
    assert all(LeadingZeroCounter(n).ge(LIB) <= LeadingZeroCounter(n + 1).ge(LIB) for n in range(1, 70))


def test_lzc_tree_counts():
    """2^k bits: 2^k - 1 nodes (NOR2 + INV each), level l has 2^(k-l) nodes with l - 1 OAI21;
    zero padding below the LSB folds (a node whose lower half is padding has no valid gate)."""
    for k in range(1, 7):
        c = LeadingZeroCounter(1 << k).cells()
        assert c["NOR2"] == c["INV"] == (1 << k) - 1
        assert c["OAI21"] == sum((1 << (k - lvl)) * (lvl - 1) for lvl in range(1, k + 1))
    # 5 bits in 8 slots: level 1 (x4 x3)(x2 x1)(x0 0)(0 0): 2 full + 1 half + 1 constant;
    # level 2: 1 full (+1 OAI21) + 1 half (+1 NOR2: c_h | ~v_h); level 3: 1 full (+2 OAI21)
    assert LeadingZeroCounter(5).cells() == {"INV": 6, "NOR2": 4 + 1, "OAI21": 3}


def test_lzc_is_near_its_synthesised_rtl():
    """The fit's data (LeadingZeroCounter docstring): the project's own ``lzc_module(n)``
    synthesised alone with Yosys 0.70 into OSU 0.18 um cells, GE = area / NAND2X1."""
    osu = get_library("osu018")
    yosys = {4: 5.0, 8: 15.4, 11: 27.5, 16: 35.8, 18: 44.1, 24: 60.1, 28: 71.8, 32: 80.6,
             40: 106.5, 48: 129.0}
    errs = {n: LeadingZeroCounter(n).ge(osu) / g - 1 for n, g in yosys.items()}
    assert all(abs(e) < 0.2 for e in errs.values()), errs
    assert sum(abs(e) for e in errs.values()) / len(errs) < 0.08, errs


def test_misc_components():
    assert Mux(8, 4).cells()["MUX2"] == 24
    assert Register(32).cells() == {"DFF": 32, "AND2": 32}
    assert Register(32, clear=False).cells() == {"DFF": 32}
    assert Decoder(3).cells()["AND2"] == 8 * 2
    assert Comparator(10).ge(LIB) > 0
    assert "ArrayMultiplier(n=4" in ArrayMultiplier(4, 4).describe()


def test_technology_reference_point_is_identity():
    t = Technology(45, 0.9)
    assert t.energy_factor() == pytest.approx(1.0)
    assert t.area_factor(45) == 1.0
    assert t.um2_per_ge(LIB) == pytest.approx(0.798)


def test_stillmaker_factors():
    """Area at 7 nm is 0.059x, at 180 nm 19x the 45 nm area (Stillmaker & Baas 2017 table)."""
    assert Technology(7).area_factor(45) == pytest.approx(0.059)
    assert Technology(180).area_factor(45) == pytest.approx(19.0)
    # the erratum's worked example: HP32 at 0.9 V -> 0.4571
    assert Technology.energy_poly(32, 0.9) == pytest.approx(0.4571, abs=2e-4)
    # osu018 GE at 180 nm is its own NAND2 area
    assert Technology(180).um2_per_ge(get_library("osu018")) == pytest.approx(24.0)


def test_energy_falls_with_node_at_nominal_supply():
    f = [Technology(n).energy_factor() for n in list_nodes()]
    assert all(b < a for a, b in zip(f, f[1:]))
    assert f[-1] < 0.2 and f[0] > 10


def test_energy_grows_with_supply():
    assert Technology(45, 1.1).energy_factor() > Technology(45, 0.9).energy_factor() > Technology(45, 0.7).energy_factor()


def test_technology_validation():
    with pytest.raises(FmtlabError, match="no scaling data"):
        Technology(3)
    with pytest.raises(FmtlabError, match="vdd"):
        Technology(45, 5.0)
    assert math.isclose(Technology(7).vdd, 0.7)
