"""`fmtlab hw` command."""

import json

import pytest

from fmtlab.cli import main


def test_hw_prints_the_standard_table(capsys):
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    for unit in ("int8 x int8 -> int32", "dint4 x int8 -> int32", "mxfp8 x mxfp8 -> fp32", "bf16 x bf16 -> fp32"):
        assert unit in out
    assert "baseline int8 x int8 -> int32" in out and "45 nm" in out


def test_hw_formats_units_and_baseline(capsys):
    assert main(["hw", "--units", "int4,int4", "fp8_e4m3,fp8_e4m3,kulisch", "--baseline", "int4,int4,int32",
                 "--format", "json", "--node", "7"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["baseline"] == "int4 x int4 -> int32" and d["node_nm"] == 7
    assert d["units"][0]["area_ratio"] == pytest.approx(1.0)
    assert main(["hw", "--units", "int8,int8", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("unit,GE,um2")
    assert main(["hw", "--units", "int8,int8", "--format", "markdown", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "| int8 x int8 -> int32 |" in out and "accumulator register" in out


def test_hw_calibration_and_rtl(capsys, tmp_path):
    assert main(["hw", "calibration"]) == 0
    assert "| int8_add |" in capsys.readouterr().out
    f = tmp_path / "u.v"
    assert main(["hw", "rtl", "dint4,int8,int32", "-o", str(f)]) == 0
    assert "module mac_dint4_x_int8_int32(" in f.read_text()


def test_hw_synth_from_cache(capsys):
    assert main(["hw", "synth", "--units", "int4,int4,int32", "--cache-only"]) == 0
    assert "| int4 x int4 -> int32 |" in capsys.readouterr().out


def test_hw_synth_script_variant(capsys, tmp_path, monkeypatch):
    """--variant selects a documented Yosys script; the shipped cache holds the reference only."""
    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    assert main(["hw", "synth", "--cache-only", "--variant", "dch"]) == 2
    assert "no cached synthesis result for the baseline" in capsys.readouterr().err
    assert main(["hw", "synth", "--variant", "map", "--write-cache", str(tmp_path / "c.json")]) == 2
    assert "reference results only" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_hw_bad_input_exits_2(capsys):
    assert main(["hw", "--units", "int8,fp8_e4m3"]) == 2
    assert "mixed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["hw", "--units", "int8"])


def test_hw_prices_lookup_formats_and_names_the_lut(capsys):
    assert main(["hw", "--units", "iq4nl,int8", "--format", "markdown", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "| iq4nl x int8 -> int32 |" in out and "decode LUT (2**4 x 8 bits)" in out
    assert main(["hw", "--units", "nf4,int8"]) == 2
    assert "nf4 x int8 products need 36 bits; int32 is narrower (use int36 or wider)" in capsys.readouterr().err
