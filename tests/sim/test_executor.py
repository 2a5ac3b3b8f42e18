"""The Dask path: the same rows as in-process, keyed units, and a killed worker loses no row.

Float metrics are compared with rtol 1e-5, not exactly: worker processes use single-threaded
BLAS, and float32 GEMM sums may round differently in another thread layout; the quantized codes
themselves are the same kernels. Row keys (tensor, config) are compared exactly.
"""

from __future__ import annotations

import math
import os
import signal

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.sim.executor import DaskExecutor, SerialExecutor, Unit, chunks, replay_tasks, run_units
from fmtlab.sim.replay import ReplayConfig, replay
from fmtlab.sim.trace import open_trace

CONFIGS = tuple(ReplayConfig(f"c{i}", w, a) for i, (w, a) in enumerate(
    [("int8_per_channel", "int8_per_token"), ("int4_per_channel", "int8_per_token"),
     ("int4_g32", "int8_per_tensor"), ("dint4_per_channel", "int8_per_token"),
     ("log4_per_channel", "int8_per_token"), ("int8_per_tensor", "int8_per_tensor")]))


def _units(trace, calib, per_unit=1):
    tr = open_trace(trace)
    return [Unit(tr.path, calib, k, names, tensor, batch) for k, names, tensor in replay_tasks(tr)
            for batch in chunks(CONFIGS, per_unit)]


def _rows(got):
    return {(r["tensor"], r["config"]): r for rows, _ in got.values() for r in rows}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for col in ("out_sqnr_db", "out_nsr", "a_underflow_rate", "w_sqnr_db"):
            x, y = a[k][col], b[k][col]
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-5), (k, col)


def test_unit_keys_are_deterministic_and_distinct(traces):
    u1, u2 = _units(*traces), _units(*traces)
    assert [u.key for u in u1] == [u.key for u in u2]
    assert len({u.key for u in u1}) == len(u1) == 4 * len(CONFIGS)


def test_dask_threads_match_serial(traces):
    """A 2-worker LocalCluster (threads) returns the same (tensor, config) rows as in-process."""
    units = _units(*traces, per_unit=3)
    ref = _rows(run_units(SerialExecutor(), units))
    assert len(ref) == 6 * len(CONFIGS)
    with DaskExecutor(workers=2, processes=False) as ex:
        _same(_rows(run_units(ex, units)), ref)
        res = replay(traces[0], list(CONFIGS), progress=False, executor=ex)
    base = replay(traces[0], list(CONFIGS), progress=False, workers=1)
    assert [(r["tensor"], r["config"]) for r in res.rows] == [(r["tensor"], r["config"]) for r in base.rows]
    _same({(r["tensor"], r["config"]): r for r in res.rows}, {(r["tensor"], r["config"]): r for r in base.rows})
    assert len(res.per_sequence) == len(base.per_sequence)


def test_duplicate_units_refused(traces):
    u = _units(*traces)[:1]
    with pytest.raises(FmtlabError, match="same key"):
        run_units(SerialExecutor(), u + u)


def test_killed_worker_loses_and_duplicates_no_row(traces):
    """Invariant: with a worker process killed (SIGKILL) after the first result, every
    (tensor, config) row still arrives exactly once, equal to the in-process result."""
    units = _units(*traces, per_unit=1)
    ref = _rows(run_units(SerialExecutor(), units))
    with DaskExecutor(workers=2, processes=True) as ex:
        before = ex.client.run(os.getpid)
        victim = sorted(before.values())[0]
        killed = []

        def kill_once(key, rows):
            if not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(key)

        got = run_units(ex, units, on_result=kill_once)
        ex.client.wait_for_workers(2, timeout=60)
        after = ex.client.run(os.getpid)
    assert killed and victim not in after.values()  # the worker really died (its nanny restarted it)
    rows = [r for rs, _ in got.values() for r in rs]
    assert len(rows) == len({(r["tensor"], r["config"]) for r in rows}) == len(ref)
    _same(_rows(got), ref)
