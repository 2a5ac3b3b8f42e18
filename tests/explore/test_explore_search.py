"""Search: exhaustive front, same seed -> same front, resume after an interrupt, CLI errors."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.explore.run import run_explore
from fmtlab.explore.results import front_mask
from fmtlab.explore.search import Evaluator, search
from fmtlab.explore.space import load_space


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_exhaustive_front_is_the_nondominated_set(traces, small_space, tmp_path):
    """Exhaustive search measures every point once; pareto.csv is exactly the set of trials that no
    other trial beats in both accuracy and area (checked by brute force)."""
    s = run_explore(small_space, str(tmp_path / "o"), trace=traces[0], calib=traces[1], trials=100, workers=1,
                    quiet=True)
    assert s["method"] == "exhaustive" and s["measured"] == 12
    trials = _csv(tmp_path / "o" / "trials.csv")
    front = {r["key"] for r in _csv(tmp_path / "o" / "pareto.csv")} if "key" in trials[0] else None
    acc = np.array([float(r["accuracy"]) for r in trials])
    cost = np.array([float(r["cost"]) for r in trials])
    brute = [i for i in range(len(trials)) if not any(
        (cost[j] <= cost[i]) and (acc[j] >= acc[i]) and (cost[j] < cost[i] or acc[j] > acc[i])
        for j in range(len(trials)))]
    assert sorted(r["config"] for r in _csv(tmp_path / "o" / "pareto.csv")) == sorted(trials[i]["config"] for i in brute)
    assert [r["on_front"] == "True" for r in trials] == [i in brute for i in range(len(trials))]
    assert front is None
    assert os.path.getsize(tmp_path / "o" / "pareto.png") > 1000
    # a rerun measures nothing again (metrics.jsonl cache) and gives the same front
    s2 = run_explore(small_space, str(tmp_path / "o"), trace=traces[0], calib=traces[1], trials=100, workers=1,
                     quiet=True)
    assert s2["configs_replayed_this_run"] == 0 and s2["front"] == s["front"]


def test_front_mask_ignores_nan():
    rows = [{"accuracy": 10, "cost": 1}, {"accuracy": float("nan"), "cost": 0.1}, {"accuracy": 5, "cost": 2}]
    assert front_mask(rows).tolist() == [True, False, False]


def _nsga(traces, out, space, trials=10, seed=3, report_first=False):
    return run_explore(space, out, trace=traces[0], calib=traces[1], trials=trials, workers=1, seed=seed,
                       population=5, method="nsga2", quiet=True, report_first=report_first)


def test_same_seed_same_front(traces, medium_space, tmp_path):
    """Two fresh NSGA-II runs with the same seed sample the same trials and give the same front."""
    a = _nsga(traces, str(tmp_path / "a"), medium_space)
    b = _nsga(traces, str(tmp_path / "b"), medium_space)
    ta = [(r["trial"], r["config"], r["accuracy"]) for r in _csv(tmp_path / "a" / "trials.csv")]
    tb = [(r["trial"], r["config"], r["accuracy"]) for r in _csv(tmp_path / "b" / "trials.csv")]
    assert ta == tb and len(ta) == 10
    assert a["front"] == b["front"]
    c = _nsga(traces, str(tmp_path / "c"), medium_space, seed=4)
    assert [r["config"] for r in _csv(tmp_path / "c" / "trials.csv")] != [t[1] for t in ta]


def test_report_configs_come_first(traces, medium_space, tmp_path):
    """By default the report's configs (those that are points of the space) are the first trials,
    in the report's order."""
    from fmtlab.analysis.defaults import DEFAULT_CONFIGS

    _nsga(traces, str(tmp_path / "a"), medium_space, trials=3, report_first=True)
    got = [r["report_config"] for r in _csv(tmp_path / "a" / "trials.csv")]
    assert len(got) == 3 and all(got) and got == sorted(got, key=DEFAULT_CONFIGS.index)
    assert got[0] == "w8a8_int_tensor"


def test_resume_after_interrupt(traces, medium_space, tmp_path, monkeypatch):
    """Ctrl-C in the second batch: the rerun resumes the study (the first batch's trials stay done,
    their configs are not replayed again) and ends with the asked number of trials."""
    out = str(tmp_path / "r")
    calls = {"n": 0}
    real = Evaluator.evaluate

    def flaky(self, cands):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, cands)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        _nsga(traces, out, medium_space, trials=10)
    monkeypatch.setattr(Evaluator, "evaluate", real)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        first = [json.loads(line)["replay_key"] for line in fh]
    assert len(first) == 5
    s = _nsga(traces, out, medium_space, trials=10)
    assert s["measured"] == 10
    assert s["configs_replayed_this_run"] <= 10 - 5 + 1  # first batch not replayed again
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        keys = [json.loads(line)["replay_key"] for line in fh]
    assert len(keys) == len(set(keys))


def test_search_needs_a_linear_layer(traces):
    with pytest.raises(FmtlabError, match="nothing to replay"):
        Evaluator(traces[0], traces[1], layers="no_such_layer")


def test_unknown_method(traces, small_space):
    ev = Evaluator(traces[0], traces[1])
    with pytest.raises(FmtlabError, match="unknown search method"):
        search(load_space(small_space), ev, method="grid")


@pytest.mark.parametrize("argv, msg", [
    (["--space", "nope.toml"], "does not exist"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--calib", "x"], "--calib needs --trace"),
    (["--trace", "/nonexistent"], "--calib CALIB_TRACE"),
    (["--trace", "/nonexistent", "--calib", "/nonexistent"], "is not a trace directory"),
])
def test_cli_errors_are_one_line_exit_2(argv, msg, capsys, tmp_path):
    from fmtlab.cli import main

    assert main(["explore", "--out", str(tmp_path / "o"), "--quiet"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and msg in err and err.startswith("fmtlab explore: error:")


def test_cli_bad_space_key(capsys, tmp_path):
    from fmtlab.cli import main

    p = tmp_path / "s.toml"
    p.write_text('colour = "red"\n')
    assert main(["explore", "--space", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown key space.colour" in err and err.count("\n") == 1


def test_energy_per_token_objective(traces, small_space, tmp_path):
    """--cost energy_per_token: the cost column is fmtlab.hw.inference_cost's energy per decoded token
    (uJ, batch 1), fewer weight bits cost less, and the batch-64 column is cheaper still."""
    s = run_explore(small_space, str(tmp_path / "e"), trace=traces[0], calib=traces[1], trials=100, workers=1,
                    quiet=True, cost="energy_per_token")
    assert s["method"] == "exhaustive"
    trials = _csv(tmp_path / "e" / "trials.csv")
    assert all(float(r["cost"]) == float(r["energy_per_token_uj"]) > float(r["energy_per_token_b64_uj"]) > 0
               for r in trials)
    by = {(r["weight"], r["activation"]): float(r["cost"]) for r in trials}
    assert by[("int4_per_channel", "int8_per_token")] < by[("int8_per_channel", "int8_per_token")]
