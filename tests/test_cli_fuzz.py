"""Issue 23 harness: every subcommand with generated bad argument values.

Every outcome must be exit status 2 with exactly one line on stderr, before any heavy work: the
functions that load a model, record, replay, hash a trace's shards, run the report, search a
space or start Yosys/iverilog are replaced by tripwires that fail the test if reached. Bounded
examples in the default run; FMTLAB_FUZZ_LONG=1 runs the long profile (marker ``fuzz_long``).
"""

from __future__ import annotations

import os
import re
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtlab.cli import main


class HeavyWork(AssertionError):
    """Raised by a tripwire: the command started heavy work with a bad argument."""


def _tripwire(name):
    def trip(*a, **k):
        raise HeavyWork(f"{name} started before the bad argument was refused")
    return trip


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    from fmtlab.sim.trace import TraceWriter

    d = tmp_path_factory.mktemp("cli-fuzz")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    wr = TraceWriter(str(d / "t"))
    wr.add("L:input", x)
    wr.add("L:weight", rng.standard_normal((8, 16)).astype(np.float32))
    wr.close({"seq_len": 16, "n_sequences": 2, "n_tokens": 32,
              "layers": {"L": {"op": "linear", "type": "p", "block": 0, "in_features": 16, "out_features": 8,
                               "input": "L:input", "weight": "L:weight"}}})
    (d / "file.txt").write_text("not a folder\n")
    bad_model = d / "badmodel"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{broken")
    pickled = d / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "llama"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    big = d / "big.toml"
    big.write_text('name = "big"\nobjectives = ["pooled_out_sqnr_db", "area_um2"]\n[weights]\n'
                   'granularity = ["channel"]\n[[weights.family]]\nkind = "int"\nbits = {min = 2, max = 99999999999}\n'
                   '[activations]\ngranularity = ["token"]\n[[activations.family]]\nkind = "int"\nbits = [8]\n')
    return d


@pytest.fixture
def tripwires(monkeypatch):
    """Replace each heavy function by a tripwire wherever it is bound: in its own module and in
    every loaded module that imported it by name."""
    import importlib
    import subprocess
    import sys

    import fmtlab.analysis.cli  # noqa: F401 - load every command module, so their bindings are found
    import fmtlab.cli  # noqa: F401

    m = importlib.import_module
    targets = [(m("fmtlab.models.loading"), "load_model"), (m("fmtlab.models.loading"), "load_default_model"),
               (m("fmtlab.models.loading"), "_load_dir"), (m("fmtlab.models.record"), "record"),
               (m("fmtlab.sim.replay"), "replay"), (m("fmtlab.analysis.report"), "run_report"),
               (m("fmtlab.explore.search"), "search"), (m("fmtlab.explore.search"), "Evaluator"),
               (m("fmtlab.sim.executor"), "make_executor"), (subprocess, "run"), (subprocess, "Popen")]
    try:
        run = m("fmtlab.explore.run")
    except ImportError:  # older layout: these live in fmtlab.explore.cli
        run = m("fmtlab.explore.cli")
    targets.append((run, "record_default_traces"))
    m("fmtlab.explore.cli")
    for mod, name in targets:
        original = getattr(mod, name)
        trip = _tripwire(f"{mod.__name__}.{name}")
        for other in list(sys.modules.values()):
            if getattr(other, "__name__", "").startswith("fmtlab") and getattr(other, name, None) is original:
                monkeypatch.setattr(other, name, trip)
        monkeypatch.setattr(mod, name, trip)
    trace = m("fmtlab.sim.trace")
    monkeypatch.setattr(trace.Trace, "verify", _tripwire("Trace.verify"))


def _bad_regex(text: str) -> bool:
    try:
        re.compile(text)
        return False
    except (re.error, OverflowError, RecursionError):
        return True


NON_POSITIVE = st.integers(-(2 ** 70), 0).map(str)
NOT_INT = st.sampled_from(["abc", "1.5", "", "1e3", "0x10", "--", "½"])
BAD_COUNT = NON_POSITIVE | NOT_INT
BAD_REGEX = (st.integers(2 ** 32, 2 ** 80).map(lambda n: f"a{{{n}}}")
             | st.sampled_from(["(", "[z-a]", "*", "a{99999999999}", "(?P<", "\\"])
             | st.text(string.printable, max_size=6).map(lambda t: "(" + t).filter(_bad_regex))
BAD_STEM = (st.text(string.ascii_letters, max_size=6).map(lambda t: "../" + t)
            | st.text(string.ascii_letters, min_size=1, max_size=6).map(lambda t: "/tmp/" + t)
            | st.sampled_from(["", ".", "..", ".hidden", "a/b", "x\ny", "\x01"]))
BAD_SIZE = st.sampled_from(["-1M", "0", "abc", "1e400", "12Q", "", "0.0001"]) | NON_POSITIVE
BAD_CONFIG = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).map(lambda t: "zz" + t) \
    | st.sampled_from(["w8:w=nope", "x:a=int8_per_tensor;q=1", ":::"])
BAD_FLOAT = st.sampled_from(["nan", "inf", "-inf", "-1", "abc"])
MISSING = st.text(string.ascii_lowercase, min_size=1, max_size=8).map(lambda t: f"/nonexistent-fmtlab/{t}")


def bases(d: str, t: str) -> dict[str, list[str]]:
    """Valid command lines (each reaches its heavy work: test_tripwires_fire_on_good_arguments)."""
    return {"record": ["record", "--out", f"{d}/new", "--quiet", "--text-file", f"{d}/file.txt"],
            "replay": ["replay", t, "-c", "fp32", "--out", f"{d}/out", "--quiet"],
            "outliers": ["outliers", t],
            "e2e": ["e2e", "-c", "fp32", "--out", f"{d}/e2e", "--quiet"],
            "report": ["report", "--trace", t, "--out", f"{d}/rep", "--quiet", "--no-perplexity"],
            "explore": ["explore", "--trace", t, "--calib", t, "--out", f"{d}/exp", "--quiet"]}


def cases(d: str, t: str):
    """(argv prefix, option, strategy) for every subcommand: the option gets one bad value."""
    b = bases(d, t)
    rec, rep, e2e, rpt, exp = b["record"], b["replay"], b["e2e"], b["report"], b["explore"]
    models = MISSING | st.sampled_from([f"{d}/badmodel", f"{d}/pickled", f"{d}/file.txt", d])
    return [
        (rec, "--seq-len", BAD_COUNT), (rec, "--n-sequences", BAD_COUNT), (rec, "--batch-size", BAD_COUNT),
        (rec, "--layers", BAD_REGEX), (rec, "--memory-limit", BAD_SIZE), (rec, "--max-bytes", BAD_SIZE),
        (rec, "--model", models), (rec, "--text-file", MISSING), (rec, "--split", st.sampled_from(["x", ""])),
        (rec, "--out", st.sampled_from([f"{d}/file.txt", f"{d}/file.txt/sub", "."])),
        (rep, "--layers", BAD_REGEX), (rep, "--stem", BAD_STEM), (rep, "--max-tokens", BAD_COUNT),
        (rep, "--workers", BAD_COUNT), (rep, "-c", BAD_CONFIG), (rep, "--calib", MISSING),
        (rep, "--kinds", st.sampled_from(["x", "linear,zz", ","])),
        (rep, "--out", st.sampled_from([f"{d}/file.txt", f"{d}/file.txt/x"])),
        (["replay", "--out", f"{d}/out", "--quiet"], "", MISSING),
        (b["outliers"], "--top-k", BAD_COUNT), (b["outliers"], "--min-ratio", BAD_FLOAT),
        (b["outliers"], "--min-abs", BAD_FLOAT), (["outliers"], "", MISSING),
        (e2e, "--seq-len", NON_POSITIVE | NOT_INT | st.just("1")), (e2e, "--n-sequences", BAD_COUNT),
        (e2e, "--batch-size", BAD_COUNT), (e2e, "-c", BAD_CONFIG), (e2e, "--replay", MISSING),
        (e2e, "--calib", MISSING), (e2e, "--model", models),
        (rpt, "--area-budget", st.sampled_from(["int8", "zz x int8", "int8 x zz", "x x y", ""])),
        (rpt, "--layers", BAD_REGEX), (rpt, "--sequences", BAD_COUNT), (rpt, "--seq-lens", NOT_INT),
        (rpt, "--ppl-sequences", BAD_COUNT), (rpt, "--max-tokens", BAD_COUNT), (rpt, "--workers", BAD_COUNT),
        (rpt, "--explore-trials", BAD_COUNT), (rpt, "--model", models), (rpt, "--trace", MISSING),
        (rpt, "--methods", st.sampled_from(["zz", "cushion,zz"])), (rpt, "--explore", MISSING),
        (exp, "--trials", BAD_COUNT), (exp, "--space", MISSING | st.just(f"{d}/big.toml") | st.just(f"{d}/file.txt")),
        (exp, "--trace", MISSING), (exp, "--method", st.sampled_from(["zz", ""])),
        (exp, "--workers", NOT_INT), (exp, "--out", st.just(f"{d}/file.txt")),
        (["formats", "show"], "", st.sampled_from(["zz", "", "int99"])),
        (["hw"], "--units", st.sampled_from(["zz", "int8", "int8,zz", ",,"])),
        (["hw"], "--node", NOT_INT), (["hw", "rtl"], "", st.sampled_from(["zz", "int8,zz"])),
        (["methods", "--out", f"{d}/m"], "--claims", st.sampled_from(["zz", "cushion,zz"])),
    ]


def _run_case(capsys, d, t, case, value):
    argv, opt, _ = case
    argv = [*argv, *([opt] if opt else []), value]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert err and "\n" not in err and "Traceback" not in err, f"{argv}: stderr {err!r}"


FUZZ = settings(max_examples=int(os.environ.get("FMTLAB_FUZZ_EXAMPLES", "150")),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_cli_bad_arguments_fail_fast_in_one_line(trace_path, tripwires, capsys, monkeypatch, data):
    monkeypatch.chdir(trace_path)
    all_cases = cases(str(trace_path), str(trace_path / "t"))
    case = data.draw(st.sampled_from(all_cases), label="case")
    value = data.draw(case[2], label="value")
    _run_case(capsys, str(trace_path), str(trace_path / "t"), case, value)


def test_every_case_runs_once(trace_path, tripwires, capsys, monkeypatch):
    """Each (subcommand, option) once with a fixed bad value, so none is left to chance."""
    monkeypatch.chdir(trace_path)
    from hypothesis import find

    for case in cases(str(trace_path), str(trace_path / "t")):
        value = find(case[2], lambda v: True)
        _run_case(capsys, str(trace_path), str(trace_path / "t"), case, value)


@pytest.mark.fuzz_long
@pytest.mark.skipif(not os.environ.get("FMTLAB_FUZZ_LONG"), reason="long fuzz profile: set FMTLAB_FUZZ_LONG=1")
@settings(max_examples=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_cli_bad_arguments_long(trace_path, tripwires, capsys, monkeypatch, data):
    test_cli_bad_arguments_fail_fast_in_one_line.hypothesis.inner_test(trace_path, tripwires, capsys,
                                                                       monkeypatch, data)


@pytest.mark.parametrize("name", ["record", "replay", "outliers", "e2e", "report", "explore"])
def test_tripwires_fire_on_good_arguments(trace_path, tripwires, monkeypatch, name):
    """The harness can fail: each base command line, without a bad value, reaches its heavy work."""
    monkeypatch.chdir(trace_path)
    with pytest.raises(HeavyWork):
        main(bases(str(trace_path), str(trace_path / "t"))[name])
