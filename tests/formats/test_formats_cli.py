"""``fmtlab formats`` through fmtlab.cli.main and once as ``python -m fmtlab formats``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmtlab.cli import main
from fmtlab.formats import get_format, list_formats

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_default(capsys):
    rc, out, err = run(capsys, "formats")
    assert rc == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "bits", "max", "min>0"]
    names = [ln.split()[0] for ln in lines[1:]]
    assert names == list_formats()
    row = next(ln for ln in lines if ln.startswith("fp8_e4m3 "))
    assert "448" in row and "S.EEEE.MMM, bias 7; no Inf, NaN S.1111.111" in row
    assert run(capsys, "formats", "list")[1] == out


def test_list_json_matches_the_formats(capsys):
    rc, out, _ = run(capsys, "formats", "--json")
    assert rc == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == list_formats()
    by = {d["name"]: d for d in data}
    hand = {"fp8_e4m3": 448, "fp8_e5m2": 57344, "fp8_e4m3fnuz": 240, "fp6_e3m2": 28, "fp6_e2m3": 7.5,
            "fp4_e2m1": 6, "dint4": 6, "int4": 7}
    for name, mx in hand.items():
        assert by[name]["max"] == mx
    assert by["fp8_e5m2"]["has_inf"] and not by["fp8_e4m3"]["has_inf"]
    assert by["fp8_e4m3fnuz"]["has_negative_zero"] is False and by["int8"]["default_overflow"] == "saturate"


def test_list_named_generic_formats(capsys):
    rc, out, _ = run(capsys, "formats", "list", "e3m4_ieee", "log5_b1.5_lin", "--json")
    assert rc == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == ["e3m4_ieee", "log5_b1.5_lin"]
    assert data[0]["max"] == 15.5 and data[1]["max"] == 1.0


def test_show_table(capsys):
    rc, out, _ = run(capsys, "formats", "show", "fp4_e2m1")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("fp4_e2m1: 4 bits")
    body = lines[3:]
    assert len(body) == 16
    assert body[7].split() == ["7", "0.11.1", "0x7", "6.0", "max"]
    assert body[8].split() == ["8", "1.00.0", "0x8", "-0.0", "-0"]
    assert body[1].split() == ["1", "0.00.1", "0x1", "0.5", "subnormal"]


def test_show_nan_inf_and_unused_codes(capsys):
    _, out, _ = run(capsys, "formats", "show", "fp8_e5m2")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[3:]}
    assert rows["124"][1:] == ["0.11111.00", "0x7C", "inf", "+Inf"]
    assert rows["126"][3:] == ["nan", "NaN"]
    _, out, _ = run(capsys, "formats", "show", "int4_sym")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[3:]}
    assert rows["8"][1:] == ["1000", "0x8", "nan", "unused"]


@pytest.mark.parametrize("name", ["fp8_e4m3", "log4_b1.4142135623730951", "e8m0", "dint4_nz"])
def test_show_json_is_exact(capsys, name):
    """The JSON code table reproduces values() exactly (value_hex) for every code."""
    rc, out, _ = run(capsys, "formats", "show", name, "--json")
    assert rc == 0
    data = json.loads(out)
    fmt = get_format(name)
    v = fmt.values()
    assert data["name"] == fmt.name and len(data["codes"]) == 1 << fmt.bits
    for c, row in enumerate(data["codes"]):
        assert row["code"] == c and int(row["bin"], 2) == c and int(row["hex"], 16) == c
        if math.isfinite(v[c]):
            assert float.fromhex(row["value_hex"]) == v[c] and row["value"] == v[c]
            assert math.copysign(1, float(row["repr"])) == math.copysign(1, v[c])
        else:
            assert row["value"] is None and row["repr"] in ("nan", "inf", "-inf")
    assert run(capsys, "formats", "--json", "show", name)[1] == out  # --json before show works too


def test_unknown_format_is_a_clear_error(capsys):
    rc, out, err = run(capsys, "formats", "show", "fp9_e4m4")
    assert rc == 2 and out == ""
    assert "unknown format 'fp9_e4m4'" in err and "fp8_e4m3" in err
    rc, _, err = run(capsys, "formats", "list", "int1")
    assert rc == 2 and "bits=1" in err


def test_show_every_standard_format(capsys):
    for name in list_formats():
        rc, out, _ = run(capsys, "formats", "show", name)
        assert rc == 0 and len(out.strip().splitlines()) == 3 + (1 << get_format(name).bits)


def test_python_m_fmtlab_formats():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "fmtlab", "formats"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fp8_e4m3" in r.stdout and "bf16" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fmtlab", "formats", "show", "nope"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown format 'nope'" in r.stderr




def test_formats_quantizers_lists_presets_and_the_new_block_names(capsys):
    from fmtlab.formats.cli import GRAMMAR_EXAMPLES
    from fmtlab.formats.presets import get_quantizer, list_quantizers

    assert main(["formats", "quantizers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert names == list(dict.fromkeys(list_quantizers() + list(GRAMMAR_EXAMPLES)))
    for n in ("mixfp4", "nvfp4_4over6", "mxint4", "nvint4", "mxfp4_midmax", "nvfp4_16x16", "fp8_e4m3_b128x128_ue8m0"):
        assert n in names
    row = dict(zip(names, lines))
    assert "tile=16x16" in row["nvfp4_16x16"] and "scale rule midmax" in row["mxfp4_midmax"]
    assert main(["formats", "quantizers", "--json", "mixfp4"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["canonical"] == str(get_quantizer("mixfp4")) and "scale rule mixfp4" in entry["describe"]


def test_formats_quantizers_refuses_an_unknown_name_in_one_line(capsys):
    assert main(["formats", "quantizers", "no_such_quantizer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_quantizer" in err[0]
