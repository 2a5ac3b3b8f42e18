"""Design-space parser: the shipped example, the Python API, and clear errors naming the key."""

from __future__ import annotations

import pytest

from fmtlab.explore.space import (
    DesignSpace, Family, SideSpace, SpaceError, load_space, parse_space, quantizer_spec,
)


def _doc(**over):
    d = {"weights": {"family": [{"kind": "int", "bits": [4, 8]}], "granularity": ["channel"]},
         "activations": {"family": [{"kind": "int", "bits": [8]}], "granularity": ["token"]}}
    d.update(over)
    return d


def test_example_space_covers_report_configs_and_thousands_more():
    """Every priced config of the report (DEFAULT_CONFIGS but the fp32 reference) is a point of the
    shipped example space, with the report's own quantizer spellings, except w4a8_dint_aqas (left
    out for its fit cost, see example.toml); with "aqas" added it is a point too. Thousands of points."""
    from fmtlab.analysis.defaults import DEFAULT_CONFIGS
    from fmtlab.sim.replay import PRESETS

    sp = load_space("example")
    kept, dropped = sp.candidates(k_max=1536)
    dims = {(c.weight, c.act, c.transform, c.act_calib) for c, _ in kept}
    missing = [n for n in DEFAULT_CONFIGS if n != "fp32" and
               (PRESETS[n].weight, PRESETS[n].act, PRESETS[n].transform, PRESETS[n].act_calib) not in dims]
    assert missing == ["w4a8_dint_aqas"]
    assert len(kept) >= 3000
    import dataclasses

    sp2 = dataclasses.replace(sp, transforms=sp.transforms + ("aqas",))
    p = PRESETS["w4a8_dint_aqas"]
    assert any((c.weight, c.act, c.transform) == (p.weight, p.act, p.transform) for c, _ in sp2.candidates(1536)[0])
    assert all(cost["area_um2"] > 0 for _, cost in kept[:200])
    assert sum(dropped.values()) > 0  # unpriceable pairs are left out, and counted


def test_python_api_equals_toml():
    """The dataclasses built by hand are the same space as the TOML document."""
    by_hand = DesignSpace(SideSpace((Family("int", {"bits": [4, 8]}),), ("channel",)),
                          SideSpace((Family("int", {"bits": [8]}),), ("token",)))
    assert parse_space(_doc()) == by_hand
    assert [c.key for c in by_hand.raw_points()] == [
        "w=int4_per_channel;a=int8_per_token;acc=auto", "w=int8_per_channel;a=int8_per_token;acc=auto"]


@pytest.mark.parametrize("doc, key", [
    (_doc(colour="red"), "space.colour"),
    (_doc(weights={"family": [{"kind": "int", "bits": [4], "width": 3}]}), "weights.family[0].width"),
    (_doc(weights={"family": [{"kind": "int", "bits": {"min": 8, "max": 4}}]}), "weights.family[0].bits: empty range"),
    (_doc(weights={"family": [{"kind": "int", "bits": []}]}), "weights.family[0].bits: empty list"),
    (_doc(weights={"family": [{"kind": "table", "names": ["fp9_e9m9"]}]}), "weights.family[0].names"),
    (_doc(weights={"family": [{"kind": "minifloat", "exp": [9], "man": [9], "bits_max": 8}]}),
     "weights.family[0]: no possible format"),
    (_doc(weights={"family": [{"kind": "quantum", "bits": [4]}]}), "weights.family[0].kind"),
    (_doc(weights={"family": [{"kind": "int", "bits": [4]}], "granularity": ["token"]}), "weights.granularity"),
    (_doc(activations={"family": [{"kind": "int", "bits": [8]}], "granularity": ["channel"]}),
     "activations.granularity"),
    (_doc(activations={"family": [{"kind": "int", "bits": [8]}], "granularity": ["group"]}),
     "activations.granularity"),
    (_doc(activations={"family": [{"kind": "int", "bits": [8]}], "scale": ["fp64"]}), "activations.scale"),
    (_doc(accumulators=["quad"]), "accumulators[0]"),
    (_doc(transforms=["none", "teleport"]), "transforms[1]"),
    (_doc(constraints=["area is small"]), "constraints"),
    (_doc(objectives=["ppl", "area_um2"]), "objectives"),
    (_doc(weights={"granularity": ["channel"]}), "weights.family"),
])
def test_bad_space_names_the_key(doc, key):
    with pytest.raises(SpaceError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_space(doc)


def test_bad_toml_file_names_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("name = \n")
    with pytest.raises(SpaceError, match="s.toml: not valid TOML"):
        load_space(str(p))
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(str(tmp_path / "nope.toml"))


def test_constraints_filter_points():
    """bits <= 4.5 keeps 4-bit weights (4 + 32/128 = 4.25 bits with fp32 group scales) and drops int8;
    area <= 0.8 x int8 drops the int8 x int8 unit."""
    sp = parse_space(_doc(weights={"family": [{"kind": "int", "bits": [4, 8]}], "granularity": ["group:128"]},
                          constraints=["bits <= 4.5"]))
    kept, _ = sp.candidates(k_max=64)
    assert [(c.weight, c.w_bits) for c, _ in kept] == [("int4_g128", 4.25)]
    sp = parse_space(_doc(constraints=["area <= 0.8 x int8"]))
    assert [c.weight for c, _ in sp.candidates(k_max=64)[0]] == ["int4_per_channel"]


def test_narrow_accumulators_are_measured_points():
    """int24 holds int8 x int8 sums for K=64 (16 + 6 bits) but not for K=1536 (16 + 11 bits): there
    it is kept as a point whose replay computes the accumulator (acc= in its config), as bf16 is."""
    sp = parse_space(_doc(weights={"family": [{"kind": "int", "bits": [8]}], "granularity": ["channel"]},
                          accumulators=["int24", "auto"]))
    (c64, _), (auto64, _) = sp.candidates(k_max=64)[0]
    assert not c64.acc_measured and c64.replay_key == auto64.replay_key
    (c, _), (auto, _) = sp.candidates(k_max=1536)[0]
    assert c.acc_measured and c.replay_key.endswith(";acc=int24") and c.replay_config().accumulator == "int24"
    assert c.replay_key != auto.replay_key and not auto.acc_measured
    from fmtlab.sim.replay import make_config

    assert make_config(c.config_string) == c.replay_config()
    sp = parse_space(_doc(activations={"family": [{"kind": "minifloat", "exp": [4], "man": [3]}],
                                       "granularity": ["token"]},
                          weights={"family": [{"kind": "minifloat", "exp": [4], "man": [3]}], "granularity": ["channel"]},
                          accumulators=["bf16_k32", "fp32"]))
    kept, _ = sp.candidates(k_max=1536)
    assert [p.acc_measured for p, _ in kept] == [True, False]


def test_quantizer_spec_names():
    """Named presets where one matches; overrides otherwise; excluded combinations give None."""
    assert quantizer_spec("fp4_e2m1", "block:32", "e8m0") == "mxfp4"
    assert quantizer_spec("fp4_e2m1", "block:16", "fp8_e4m3") == "nvfp4"
    assert quantizer_spec("fp6_e3m2", "block:16", "e8m0") == "mxfp4(format=fp6_e3m2, block_size=16)"
    assert quantizer_spec("int8", "token", "fp32") == "int8_per_token"
    assert quantizer_spec("int4", "group:128", "e8m0") == "int4_g128_pow2"
    assert quantizer_spec("int4", "group:128", "fp8_e4m3") is None
    assert quantizer_spec("int4", "block:32", "fp32") is None


def test_group_size_must_divide_the_trace_widths():
    """Groups of 128 cannot tile K=576 (SmolLM2's hidden width): such points are left out, with why."""
    sp = parse_space(_doc(weights={"family": [{"kind": "int", "bits": [4]}],
                                   "granularity": ["group:128", "group:64"]}))
    kept, dropped = sp.candidates(k_max=1536, k_all=(576, 1536))
    assert [c.weight for c, _ in kept] == ["int4_g64"]
    assert any("does not divide K=576" in k for k in dropped)


def test_config_strings_resolve_as_replay_configs():
    """Every point's config string is a `fmtlab replay -c` config equal to its ReplayConfig, and its
    quantizer specs resolve (fmtlab.sim.quant.resolve)."""
    from fmtlab.sim.quant import resolve
    from fmtlab.sim.replay import make_config

    kept, _ = load_space("example").candidates(k_max=1536, k_all=(576, 1536))
    for c, _ in kept[::97]:
        assert make_config(c.config_string) == c.replay_config()
        assert resolve(c.weight).obj is not None and resolve(c.act).obj is not None


def test_energy_objective_prices_each_point():
    """With an energy-per-token objective, transforms change a point's cost (Hadamard's adds) and
    merged ones do not (SmoothQuant)."""
    import dataclasses

    sp = dataclasses.replace(parse_space(_doc(transforms=["none", "hadamard", "smoothquant(alpha=0.5)"])),
                             objectives=("pooled_out_sqnr_db", "energy_per_token_uj"))
    kept, _ = sp.candidates(k_max=1536)
    e = {(c.weight, c.transform): cost["energy_per_token_uj"] for c, cost in kept}
    w = "int4_per_channel"
    assert e[(w, "hadamard")] > e[(w, None)] == e[(w, "smoothquant(alpha=0.5)")]
    assert all(cost["energy_per_token_b64_uj"] < cost["energy_per_token_uj"] for _, cost in kept)
    with pytest.raises(SpaceError, match="objectives"):
        parse_space(_doc(objectives=["pooled_out_sqnr_db", "joules"]))


def test_fp8_block_scales_are_priced_like_the_report():
    """An NVFP4-style point costs the block-dot unit plus its E4M3 scale multiply per block, the
    same per-MAC price the report's configs table gives (fmtlab.hw.config_pricing)."""
    from types import SimpleNamespace

    from fmtlab.explore.objectives import price
    from fmtlab.explore.space import Candidate
    from fmtlab.hw.config_pricing import price_config

    c = Candidate("nvfp4", "nvfp4", None, None, "auto", 4.5, 4.5)
    got = price(c)
    want = price_config(SimpleNamespace(name="nv", weight="nvfp4", act="nvfp4", transform=None))
    assert got["area_um2"] == pytest.approx(want["area_um2"]) and got["energy_pj"] == pytest.approx(want["energy_pj"])
