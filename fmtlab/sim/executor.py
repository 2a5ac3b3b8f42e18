"""Where replay work runs: in this process, or on a Dask cluster (LocalCluster or any scheduler).

The unit of work is :class:`Unit` = (trace path, calibration trace path, one replay task of
:mod:`fmtlab.sim.replay_engine` (a group of Linear layers sharing an input, or one activation),
a batch of configs) -> (rows, per-sequence entries). Units are small and pure: a worker opens the
trace shards by path (:func:`fmtlab.sim.trace.open_trace`, without re-hashing, checking the manifest digest:
the client verified them), and arrays never travel through the scheduler. Each unit has a
deterministic key; Dask reruns the units of a lost worker (``retries`` covers exceptions too),
and :func:`run_units` keeps one result per key and checks that every (tensor, config) row
arrives exactly once, so a retried task never duplicates or loses a row.

Workers need the trace at the same path (shared storage on a real cluster). Worker processes of
the LocalCluster run one thread each with single-threaded BLAS/numba, so N workers use N cores.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from fmtlab.errors import FmtlabError, TraceError, compile_pattern
from fmtlab.sim.replay_engine import Engine, LayerCache, Task, resolve_config
from fmtlab.sim.trace import open_trace

__all__ = ["Unit", "run_unit", "SerialExecutor", "DaskExecutor", "make_executor", "run_units",
           "replay_tasks", "WORKER_ENV"]

#: environment of LocalCluster worker processes: one thread per process for BLAS and numba
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": "65536",
              "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}


@dataclass(frozen=True)
class Unit:
    """One unit of replay work (see the module doc). ``configs`` are ReplayConfig values."""

    trace: str
    calib: str | None
    kind: str
    names: tuple[str, ...]
    tensor: str
    configs: tuple[Any, ...]
    max_tokens: int | None = None
    top_k: int = 3
    label: str = ""
    #: a config that raises gets one row {"config", "tensor", "error"} instead of failing the unit
    isolate_errors: bool = False
    #: manifest digests of (trace, calib) as the client opened them: a worker refuses a trace whose
    #: content changed since, and a trace replaced at the same path is never served from a cache
    digests: tuple[str | None, str | None] = (None, None)

    @property
    def key(self) -> str:
        """Deterministic id of this unit (same inputs -> same key, on every machine)."""
        h = hashlib.sha1()
        for part in (self.trace, self.calib, self.kind, self.names, self.tensor, self.max_tokens, self.top_k,
                     self.label, tuple(_config_id(c) for c in self.configs), self.digests):
            h.update(repr(part).encode())
            h.update(b"\0")
        return "fmtlab-unit-" + h.hexdigest()[:20]


def _config_id(c: Any) -> str:
    return f"{c.name}|{c.weight!r}|{c.act!r}|{c.transform!r}|{c.hp_dtype}|{c.act_calib}"


def _stamp(path: str) -> tuple:
    """Identity of the manifest file now (a rewritten trace gets a new manifest inode)."""
    try:
        st = os.stat(os.path.join(path, "manifest.json"))
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _open(path: str, digest: str | None = None):
    return _open_cached(path, digest, _stamp(path))


@functools.lru_cache(maxsize=4)
def _open_cached(path: str, digest: str | None, stamp: tuple):
    tr = open_trace(path, verify=False)
    if digest is not None and tr.digest != digest:
        raise TraceError(f"trace {path} changed since this run opened it (its manifest digest differs); "
                         "run again")
    return tr


def _engine(trace: str, calib: str | None, configs: tuple, max_tokens: int | None, top_k: int, label: str,
            digests: tuple = (None, None)):
    return _engine_cached(trace, calib, configs, max_tokens, top_k, label, digests,
                          _stamp(trace), _stamp(calib) if calib else ())


#: this process's last replay task inputs, shared by the engines of all config batches: the units
#: of one layer (one per config in the explore search) read X and W and compute X W^T once
_LAYER_CACHE = LayerCache()


@functools.lru_cache(maxsize=16)
def _engine_cached(trace, calib, configs, max_tokens, top_k, label, digests, stamp, cstamp):
    return Engine(_open(trace, digests[0]), [resolve_config(c) for c in configs],
                  _open(calib, digests[1]) if calib else None, max_tokens, top_k, label, cache=_LAYER_CACHE)


def run_unit(unit: Unit) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(unit key, rows, per-sequence entries) of one unit; runs anywhere the trace path exists."""
    task = Task(unit.kind, list(unit.names), unit.tensor)
    try:
        eng = _engine(unit.trace, unit.calib, tuple(unit.configs), unit.max_tokens, unit.top_k, unit.label,
                      unit.digests)
        rows, seqs = eng.run(task)
    except (FmtlabError, ValueError, ArithmeticError) as exc:
        if not unit.isolate_errors:
            raise
        if len(unit.configs) == 1:
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())
            return unit.key, [{"config": c.name, "tensor": n, "error": msg} for c in unit.configs
                              for n in unit.names], []
        rows, seqs = [], []
        for c in unit.configs:
            _, r, s = run_unit(Unit(unit.trace, unit.calib, unit.kind, unit.names, unit.tensor, (c,),
                                    unit.max_tokens, unit.top_k, unit.label, True, unit.digests))
            rows += r
            seqs += s
    return unit.key, rows, seqs


def replay_tasks(trace, layers: str | None = None, kinds: Sequence[str] = ("linear",)) -> list[tuple[str, tuple, str]]:
    """[(kind, layer names, tensor)] of a trace, in trace order: the replay tasks (of
    :func:`fmtlab.sim.replay.replay` and the explore search; Linear layers sharing an input are one
    task). ``layers``: regular expression over tensor names; ``kinds``: recorded kinds to include."""
    pat = compile_pattern(layers, "layers") if layers else None
    out: list[tuple[str, tuple, str]] = []
    if "linear" in kinds:
        groups: dict[str, list[str]] = {}
        for n, meta in trace.layers.items():
            if (pat and not pat.search(n)) or not meta.get("input") or not meta.get("weight"):
                continue
            groups.setdefault(meta["input"], []).append(n)
        out += [("linear", tuple(ns), inp) for inp, ns in groups.items()]
    for n, info in trace.activations.items():
        if info["kind"] in kinds and info["kind"] != "linear" and (not pat or pat.search(n)):
            out.append(("activation", (n,), info["tensor"]))
    return out


# ------------------------------------------------------------------------------------ executors

class SerialExecutor:
    """Runs units one after another in this process (no Dask)."""

    workers = 1
    description = "in-process"

    def map_unordered(self, fn, items: Sequence[Any]) -> Iterator[Any]:
        for it in items:
            yield fn(it)

    def close(self) -> None:
        pass

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskExecutor:
    """Runs units on Dask: a new LocalCluster of ``workers`` processes, or the scheduler at
    ``scheduler`` (``tcp://host:8786``, or a scheduler-file path). ``processes=False`` runs the
    LocalCluster's workers as threads of this process (tests)."""

    def __init__(self, scheduler: str | None = None, workers: int = 2, processes: bool = True,
                 retries: int = 3):
        try:
            from distributed import Client, LocalCluster  # lazy: dask is optional and slow to import
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise FmtlabError("Dask execution needs the 'distributed' package") from exc
        self.retries = retries
        self.cluster = None
        if scheduler:
            try:
                if os.path.isfile(scheduler):
                    self.client = Client(scheduler_file=scheduler, timeout=30)
                else:
                    self.client = Client(scheduler, timeout=30)
            except (OSError, TimeoutError) as exc:
                raise FmtlabError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
            self.description = f"Dask scheduler {scheduler}"
        else:
            if workers < 1:
                raise FmtlabError(f"--workers must be >= 1, got {workers}")
            kw: dict[str, Any] = dict(n_workers=workers, threads_per_worker=1, processes=processes,
                                      dashboard_address=None, silence_logs=50)
            if processes:
                kw["env"] = dict(WORKER_ENV)
            self.cluster = LocalCluster(**kw)
            self.client = Client(self.cluster)
            self.description = f"Dask LocalCluster, {workers} worker {'processes' if processes else 'threads'}"
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})) or workers)

    def map_unordered(self, fn, items: Sequence[Any]) -> Iterator[Any]:
        from distributed import as_completed  # lazy: dask is optional and slow to import

        futs = [self.client.submit(fn, it, key=f"{it.key}", pure=False, retries=self.retries) for it in items]
        for f in as_completed(futs):
            yield f.result()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_executor(scheduler: str | None = None, workers: int | None = None, processes: bool = True):
    """A DaskExecutor for a scheduler address, ``"local"`` (a LocalCluster of ``workers``, default 2)
    or ``workers`` >= 2; otherwise a SerialExecutor."""
    if scheduler == "local":
        return DaskExecutor(workers=workers or 2, processes=processes)
    if scheduler:
        return DaskExecutor(scheduler=scheduler, processes=processes)
    if workers is not None and workers >= 2:
        return DaskExecutor(workers=workers, processes=processes)
    return SerialExecutor()


def run_units(executor, units: Sequence[Unit], progress: bool = False, desc: str = "replay",
              on_result=None) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Run ``units`` on ``executor``: {unit key: (rows, per-sequence entries)}.

    Every unit's key is kept once (a rerun after a lost worker replaces, never adds); raises
    FmtlabError if a unit's result is missing or a (tensor, config) row comes back twice.
    ``on_result(key, rows)`` is called as results arrive (e.g. to checkpoint them).
    """

    by_key = {u.key: u for u in units}
    if len(by_key) != len(units):
        raise FmtlabError("two replay units with the same key (duplicate tensor x config batch)")
    out: dict[str, tuple[list, list]] = {}
    with tqdm(total=len(units), unit="unit", desc=desc, disable=not progress) as bar:
        for key, rows, seqs in executor.map_unordered(run_unit, list(units)):
            if key not in by_key:
                raise FmtlabError(f"executor returned an unknown unit {key}")
            if key not in out:
                bar.update(1)
                if on_result is not None:
                    on_result(key, rows)
            out[key] = (rows, seqs)
    missing = [k for k in by_key if k not in out]
    if missing:
        raise FmtlabError(f"{len(missing)} replay unit(s) returned no result (first: {missing[0]})")
    seen: set[tuple[str, str]] = set()
    for rows, _ in out.values():
        for r in rows:
            k = (r["tensor"], r["config"])
            if k in seen:
                raise FmtlabError(f"row {k} came back twice")
            seen.add(k)
    return out


def chunks(seq: Sequence[Any], n: int) -> Iterable[tuple[Any, ...]]:
    """``seq`` in consecutive tuples of at most ``n``."""
    for i in range(0, len(seq), max(1, n)):
        yield tuple(seq[i:i + n])
