"""Search a design space for the Pareto front of accuracy against MAC cost.

* ``exhaustive``: every feasible point (the default when the space has no more distinct replay
  configs than ``trials``);
* ``nsga2`` (default otherwise) or ``tpe``: an Optuna multi-objective study over the space's
  dimensions (weight quantizer, activation quantizer, transform, calibration, accumulator);
  objectives (maximise accuracy, minimise cost). Sampled combinations that are not points of the
  space (unpriceable, breaking a constraint) are told as failed and do not count as trials; a point
  sampled again is told its known values and does not count either, so ``trials`` distinct points
  are measured.

Both keep every measured replay config in ``metrics.jsonl`` in the output folder (one JSON line
per config, appended after each batch, keyed by the content of the trace and calibration trace:
their manifest digests, not their paths, so a trace replaced at the same path is measured anew): a rerun, or a resumed run after Ctrl-C, never replays a
config twice. The Optuna study lives in ``study.journal`` (Optuna's JournalFileStorage) in the same
folder, so ``fmtlab explore`` with the same arguments resumes it; trials left running by an
interrupt are marked failed and asked again. With the same seed, space and trace, a run that is
not interrupted gives the same trials and front (replay is deterministic; trials are told in ask
order). The report's priced configs, where they are points of the space, are measured first
(enqueued), so the front can be compared with them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fmtlab.errors import FmtlabError
from fmtlab.safe_io import file_mode
from fmtlab.explore.defaults import DEFAULT_CONFIGS
from fmtlab.explore.objectives import accuracy_from_rows
from fmtlab.hw.model_shape import ModelShape
from fmtlab.explore.space import Candidate, DesignSpace
from fmtlab.sim.executor import SerialExecutor, Unit, chunks, replay_tasks, run_units
from fmtlab.sim.replay import PRESETS
from fmtlab.sim.trace import open_trace

__all__ = ["Evaluator", "SearchResult", "search", "report_candidates"]

DIMS = ("w", "a", "t", "c", "acc")


def _dims(c: Candidate) -> dict[str, str]:
    return {"w": c.weight, "a": c.act, "t": c.transform or "none", "c": c.act_calib or "dynamic",
            "acc": c.accumulator}


class Evaluator:
    """Accuracy of replay configs on a trace, through an executor, cached in ``cache_path``."""

    def __init__(self, trace: str, calib: str | None, executor=None, *, layers: str | None = None,
                 max_tokens: int | None = None, batch: int = 8, cache_path: str | None = None,
                 progress: bool = False):
        tr = open_trace(trace)  # verified once here; workers open by path without re-hashing
        cal = open_trace(calib) if calib is not None else None
        self.trace, self.calib = os.path.abspath(trace), (os.path.abspath(calib) if calib else None)
        # the cache is keyed by content: the manifest digests (each lists its shards' SHA-256)
        self.trace_digest, self.calib_digest = tr.digest, (cal.digest if cal is not None else None)
        self.tasks = replay_tasks(tr, layers, ("linear",))
        if not self.tasks:
            raise FmtlabError(f"nothing to replay in {trace}: no Linear layer with input and weight"
                              + (f" matching {layers!r}" if layers else ""))
        self.k_all = tuple(sorted({int(tr.layers[n].get("in_features") or tr.info(tr.layers[n]["input"])["shape"][-1])
                                   for _, ns, _ in self.tasks for n in ns}))
        self.k_max = max(self.k_all)
        try:
            self.model_shape = ModelShape.from_manifest(tr.manifest)
        except FmtlabError:
            self.model_shape = None  # an energy objective then prices SmolLM2-135M (said in the info)
        self.executor = executor or SerialExecutor()
        self.max_tokens, self.batch, self.progress = max_tokens, batch, progress
        self.cache_path = cache_path
        self.cache: dict[str, dict[str, Any]] = {}
        self.evaluations = 0
        if cache_path and os.path.exists(cache_path):
            with open(cache_path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        d = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by an interrupt: that config is measured again
                    if not isinstance(d, dict) or "replay_key" not in d or "metrics" not in d:
                        continue
                    if d.get("trace_digest") == self.trace_digest and d.get("calib_digest") == self.calib_digest \
                            and d.get("max_tokens") == self.max_tokens and d.get("layers") == layers:
                        self.cache[d["replay_key"]] = d["metrics"]
        self.layers = layers

    def evaluate(self, cands: Sequence[Candidate]) -> dict[str, dict[str, Any]]:
        """{replay_key: accuracy columns (or {"error": ...})} of ``cands`` (measured once each)."""
        todo = list(dict.fromkeys(c.replay_key for c in cands if c.replay_key not in self.cache))
        if todo:
            first = {c.replay_key: c for c in cands}
            cfgs = [first[k].replay_config() for k in todo]
            units = [Unit(self.trace, self.calib, kind, names, tensor, batch, self.max_tokens, 3,
                          os.path.basename(self.trace), isolate_errors=True,
                          digests=(self.trace_digest, self.calib_digest))
                     for kind, names, tensor in self.tasks for batch in chunks(cfgs, self.batch)]
            got = run_units(self.executor, units, progress=self.progress, desc=f"replay {len(todo)} configs")
            by_cfg: dict[str, list[dict[str, Any]]] = {}
            for rows, _ in got.values():
                for r in rows:
                    by_cfg.setdefault(r["config"], []).append(r)
            lines = []
            for k, cfg in zip(todo, cfgs):
                rows = by_cfg.get(cfg.name, [])
                err = next((r["error"] for r in rows if "error" in r), None)
                m = {"error": err} if err else accuracy_from_rows(rows)
                self.cache[k] = m
                self.evaluations += 1
                lines.append(json.dumps({"replay_key": k, "trace": self.trace, "calib": self.calib,
                                         "trace_digest": self.trace_digest, "calib_digest": self.calib_digest,
                                         "max_tokens": self.max_tokens, "layers": self.layers,
                                         "metrics": _jsonable(m)}) + "\n")
            if self.cache_path:
                try:  # never appended through a planted symlink
                    fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, file_mode())
                except OSError as exc:
                    raise FmtlabError(f"cannot append to {self.cache_path}: {exc.strerror}"
                                      + (" (a symbolic link)" if os.path.islink(self.cache_path) else "")) from None
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
                    fh.writelines(lines)
                    fh.flush()
                    os.fsync(fh.fileno())
        return {c.replay_key: self.cache[c.replay_key] for c in cands}


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else ("inf" if v == math.inf else v))
            for k, v in m.items()}


def _unjson(v: Any) -> Any:
    return math.nan if v is None else (math.inf if v == "inf" else v)


@dataclass
class SearchResult:
    """Measured points (one dict per trial: dimensions, accuracy, cost) and run facts."""

    rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def report_candidates(space: DesignSpace, feasible: dict[str, tuple[Candidate, dict]]) -> list[tuple[str, Candidate]]:
    """[(report config name, candidate)] of the report's priced configs that are points of ``space``
    (with the space's first accumulator that prices them)."""
    by_dims: dict[tuple, Candidate] = {}
    for c, _ in feasible.values():
        by_dims.setdefault((c.weight, c.act, c.transform, c.act_calib), c)
    out = []
    for name in DEFAULT_CONFIGS:
        p = PRESETS[name]
        c = by_dims.get((p.weight, p.act, p.transform, p.act_calib))
        if c is not None:
            out.append((name, c))
    return out


def _row(c: Candidate, cost: dict, acc: dict, trial: int | None, space: DesignSpace) -> dict[str, Any]:
    r: dict[str, Any] = {"trial": trial, "key": c.key, "config": c.config_string, "weight": c.weight,
                         "activation": c.act, "transform": c.transform or "", "act_calib": c.act_calib or "",
                         "accumulator": c.accumulator}
    r.update({k: _unjson(v) for k, v in acc.items()})
    r.update(cost)
    r["accuracy"] = r.get(space.objectives[0], math.nan)
    r["cost"] = r.get(space.objectives[1], math.nan)
    return r


def search(space: DesignSpace, evaluator: Evaluator, *, trials: int = 100, method: str = "auto",
           seed: int = 0, out: str | None = None, population: int = 16, report_first: bool = True,
           log: Callable[[str], None] = lambda s: None) -> SearchResult:
    """Search ``space`` (see the module doc); ``out`` holds study.journal (and the evaluator's cache).
    ``report_first``: enqueue the report's configs as the first trials (they count toward ``trials``)."""
    kept, dropped = space.candidates(evaluator.k_max, evaluator.k_all, getattr(evaluator, "model_shape", None))
    feasible = {c.key: (c, cost) for c, cost in kept}
    n_replay = len({c.replay_key for c, _ in kept})
    if method == "auto":
        method = "exhaustive" if n_replay <= trials else "nsga2"
    if method not in ("exhaustive", "nsga2", "tpe"):
        raise FmtlabError(f"unknown search method {method!r} (auto, exhaustive, nsga2, tpe)")
    info = {"method": method, "points": len(kept), "replay_configs": n_replay, "left_out": dropped,
            "seed": seed, "k_max": evaluator.k_max,
            "cost_model": (getattr(getattr(evaluator, "model_shape", None), "name", None) or "SmolLM2-135M")
            if space.objectives[1].startswith("energy_per_token") else "mac", "executor": getattr(evaluator.executor, "description", "")}
    log(f"space {space.name!r}: {len(kept)} points ({n_replay} distinct replay configs), "
        f"{sum(dropped.values())} combinations left out; search: {method}")
    refs = report_candidates(space, feasible)
    info["report_configs"] = {name: c.key for name, c in refs}
    if method == "exhaustive":
        cands = [c for c, _ in kept]
        rows = []
        for i, batch in enumerate(chunks(cands, max(population, 1) * 8)):
            acc = evaluator.evaluate(batch)
            rows += [_row(c, feasible[c.key][1], acc[c.replay_key], None, space) for c in batch]
        for i, r in enumerate(rows):
            r["trial"] = i
        return SearchResult(rows, info)
    return _optuna(space, evaluator, feasible, refs if report_first else [], trials, method, seed, out,
                   population, info, log)


def _optuna(space, evaluator, feasible, refs, trials, method, seed, out, population, info, log) -> SearchResult:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cands = [c for c, _ in feasible.values()]
    choices = {d: sorted({_dims(c)[d] for c in cands}) for d in DIMS}
    dists = {d: CategoricalDistribution(choices[d]) for d in DIMS}
    by_dims = {tuple(_dims(c)[d] for d in DIMS): c for c in cands}
    if method == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=population)
    storage = None
    if out:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(os.path.join(out, "study.journal")))
    name = f"fmtlab-explore-{space.name}-{method}-seed{seed}"
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=["maximize", "minimize"])
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    stale = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in stale:  # left running by an interrupt
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
    if done:
        log(f"resuming study {name}: {len(done)} trials done")
    elif not stale:
        for _, c in refs:  # measure the report's configs first
            study.enqueue_trial(_dims(c), skip_if_exists=True)
    done_keys = {t.user_attrs.get("key") for t in done}
    n_done, asks, max_asks = len(done_keys), 0, 200 * max(1, trials)
    while n_done < trials and asks < max_asks:
        batch: list[tuple[Any, Candidate]] = []
        while len(batch) < min(population, trials - n_done) and asks < max_asks:
            t = study.ask(dists)
            asks += 1
            c = by_dims.get(tuple(t.params[d] for d in DIMS))
            if c is None:
                study.tell(t, state=TrialState.FAIL)  # not a point of the space
                continue
            batch.append((t, c))
        if not batch:
            break
        acc = evaluator.evaluate([c for _, c in batch])
        for t, c in batch:
            m = acc[c.replay_key]
            v = m.get(space.objectives[0])
            cost = feasible[c.key][1][space.objectives[1]]
            t.set_user_attr("key", c.key)
            if "error" in m or v is None or (isinstance(v, float) and math.isnan(v)):
                t.set_user_attr("error", m.get("error", "no accuracy"))
                study.tell(t, state=TrialState.FAIL)
                continue
            study.tell(t, [min(float(_unjson(v)), 1e3), float(cost)])
            if c.key not in done_keys:  # a point sampled again is told (the sampler learns) but not counted
                done_keys.add(c.key)
                n_done += 1
        log(f"{n_done}/{trials} trials ({evaluator.evaluations} configs replayed)")
    rows, seen = [], set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        c = feasible.get(t.user_attrs.get("key", ""))
        if c is None or c[0].key in seen:
            continue
        seen.add(c[0].key)
        acc = evaluator.evaluate([c[0]])[c[0].replay_key]
        rows.append(_row(c[0], c[1], acc, t.number, space))
    info.update(study=name, asks=asks)
    return SearchResult(rows, info)
