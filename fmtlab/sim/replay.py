"""Replay a trace through quantizer configs and measure the error of every tensor.

A :class:`ReplayConfig` is (weight quantizer, activation quantizer, optional transform); quantizer
specs are described in :mod:`fmtlab.sim.quant`, transforms in :mod:`fmtlab.sim.transforms`.
:func:`replay` returns a :class:`ReplayResult` with one row per (tensor, config):

* Linear-like layers (kind ``"linear"``): activation metrics ``a_*`` of the quantized input part
  X' (after the transform), weight metrics ``w_*`` of W', the layer output error ``out_*`` (``out_sqnr_db``
  energy-weighted, ``out_tok_sqnr_db`` the median per-token SQNR) of
  r * Q_a(X') Q_w(W')^T + hp terms against X W^T (no bias; float32 GEMMs), and outlier statistics
  ``in_*`` of the recorded input X;
* other recorded activations (``"residual"``, ``"attn_probs"``, ``"key"``, ``"value"``): ``a_*`` of
  the activation quantizer applied to the tensor as [rows, last dim] and ``in_*``.

Metric definitions are in :mod:`fmtlab.sim.metrics`. Aggregates per layer type and per model
(:attr:`ReplayResult.by_layer_type`, :attr:`ReplayResult.by_model`) average each metric over
tensors and add the pooled output SQNR, -10 log10(mean over layers of noise/signal).

Protocol (see :mod:`fmtlab.sim.replay_engine`): dynamic scales and transforms see one recorded
sequence at a time; static activation scales (``act_calib``) and fitted transforms (SmoothQuant,
AQAS) are fitted on ``calib=``, another trace of the same model (never on the scored trace; without
it they raise FmtlabError). :attr:`ReplayResult.per_sequence` holds per-sequence sums for
bootstrap intervals (:mod:`fmtlab.sim.stats`).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numba
import numpy as np
from tqdm.auto import tqdm

from fmtlab.errors import FmtlabError
from fmtlab.formats.names import Grammar
from fmtlab.sim import metrics as M
from fmtlab.safe_io import atomic_write_text, check_file_stem, dumps_json, staged_dir
from fmtlab.sim.accumulate import parse as parse_accumulator
from fmtlab.sim.quant import STATIC_RULES
from fmtlab.sim.replay_engine import IN as _IN, METRICS as _METRICS, OUT as _OUT
from fmtlab.sim.executor import Unit, replay_tasks, run_units
from fmtlab.sim.replay_engine import Engine, Task, resolve_config
from fmtlab.sim.trace import Trace, open_trace
COLUMNS = (["trace", "seq_len", "config", "tensor", "kind", "layer_type", "block", "op", "rows", "cols", "note"]
           + [f"in_{k}" for k in _IN] + ["in_top_channels", "in_top_tokens"]
           + [f"a_{k}" for k in _METRICS] + [f"w_{k}" for k in _METRICS] + [f"out_{k}" for k in _OUT])


@dataclass(frozen=True)
class ReplayConfig:
    """One quantization setting: weight and activation quantizer specs and an optional transform.

    ``hp_dtype`` is the precision of a transform's high-precision terms ("float16" or "float32").
    ``act_calib``: None for dynamic activation scales (computed per sequence), or the rule of a
    *static* per-tensor activation scale ("absmax", "percentile(P)", "mse") calibrated on the
    calibration data and frozen.
    """

    name: str
    weight: Any = None
    act: Any = None
    transform: Any = None
    hp_dtype: str = "float16"
    act_calib: str | None = None
    accumulator: str | None = None

    def __post_init__(self) -> None:
        if self.accumulator is not None:
            try:
                parse_accumulator(self.accumulator)
            except (FmtlabError, TypeError) as exc:
                raise FmtlabError(f"config {self.name!r}: {exc}") from None
            if self.transform is not None:
                raise FmtlabError(f"config {self.name!r}: an accumulator does not combine with a transform")
        if self.act_calib is not None and str(self.act_calib).split("(")[0].strip().lower() not in STATIC_RULES:
            raise FmtlabError(f"config {self.name!r}: act_calib must be one of {STATIC_RULES} "
                              f"(percentile(P) allowed) or None, got {self.act_calib!r}")

    def describe(self) -> str:
        def nm(s):
            return "fp32" if s is None else (s if isinstance(s, str) else getattr(s, "name", None) or repr(s))
        t = self.transform
        tn = "" if t is None else f", t={t if isinstance(t, str) else getattr(t, 'name', repr(t))}"
        st = "" if self.act_calib is None else f" (static {self.act_calib})"
        acc = "" if self.accumulator is None else f", acc={self.accumulator}"
        return f"w={nm(self.weight)}, a={nm(self.act)}{st}{tn}{acc}"


# The end-to-end set of the issue plus outlier-fighting variants. Names of quantizer presets are
# those of fmtlab.formats.get_quantizer.
PRESETS: dict[str, ReplayConfig] = {c.name: c for c in [
    ReplayConfig("fp32"),
    ReplayConfig("w8a8_int_tensor", "int8_per_tensor", "int8_per_tensor"),
    # per-tensor static W8A8: the attention-sink (CushionCache) setting; scales from calibration data
    ReplayConfig("w8a8_int_tensor_static", "int8_per_tensor", "int8_per_tensor", act_calib="absmax"),
    ReplayConfig("w8a8_int_token", "int8_per_channel", "int8_per_token"),
    ReplayConfig("w8a8_llm_int8", "int8_per_channel", "int8_per_token", "llm_int8(threshold=6.0)"),
    ReplayConfig("w8a8_muxq", "int8_per_tensor", "int8_per_tensor", "muxq(threshold=6.0)"),
    ReplayConfig("w8a8_smoothquant", "int8_per_channel", "int8_per_tensor", "smoothquant(alpha=0.5)"),
    ReplayConfig("w8a8_hadamard", "int8_per_channel", "int8_per_tensor", "hadamard"),
    ReplayConfig("w8a8_int_tensor_nosink", "int8_per_tensor", "int8_per_tensor", "exclude_sink"),
    ReplayConfig("w4a8_int_channel", "int4_per_channel", "int8_per_token"),
    ReplayConfig("w4a8_dint_channel", "dint4_per_channel", "int8_per_token"),
    ReplayConfig("w4a8_dint_aqas", "dint4_per_channel", "int8_per_token", "aqas"),
    ReplayConfig("fp8_e4m3", "fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor"),
    ReplayConfig("mxfp8", "mxfp8_e4m3", "mxfp8_e4m3"),
    ReplayConfig("mxfp4", "mxfp4", "mxfp4"),
    ReplayConfig("nvfp4", "nvfp4", "nvfp4"),
    ReplayConfig("w4a8_log4", "log4_per_channel", "int8_per_token"),
    # issue 12 (fmtlab.formats.peg / logfit): PEG static activation groups, fitted-base log weights
    ReplayConfig("w8a8_peg6_static", "int8_per_tensor", "int8_peg6", act_calib="absmax"),
    ReplayConfig("w4a8_log4_fitb", "log4_fitb_per_channel", "int8_per_token"),
]}
#: the configs of the end-to-end perplexity check
E2E_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_llm_int8", "w4a8_int_channel", "w4a8_dint_channel",
               "fp8_e4m3", "mxfp4", "w4a8_log4")


_FIELD_KEYS = {"w": "weight", "weight": "weight", "a": "act", "act": "act", "t": "transform",
               "transform": "transform", "hp": "hp_dtype", "c": "act_calib", "act_calib": "act_calib",
               "acc": "accumulator", "accumulator": "accumulator"}


def _inline_config(s: str) -> ReplayConfig | None:
    """``"name:w=SPEC;a=SPEC;t=TRANSFORM;hp=DTYPE;c=RULE"`` (None without a ':')."""
    if ":" not in s:
        return None
    name, body = s.split(":", 1)
    fields: dict[str, Any] = {}
    for part in body.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise FmtlabError(f"in config {s!r}: {part!r} is not key=value")
        k, v = part.split("=", 1)
        key = _FIELD_KEYS.get(k.strip())
        if key is None:
            raise FmtlabError(f"in config {s!r}: unknown field {k.strip()!r} (use w, a, t, hp, c, acc)")
        fields[key] = v.strip() or None
    return ReplayConfig(name.strip(), **fields)


#: replay config names: the presets (exact, case-sensitive) and inline ``name:w=...;a=...`` configs
GRAMMAR: Grammar[ReplayConfig] = Grammar("config", FmtlabError, fold_case=False)
for _name, _cfg in PRESETS.items():
    GRAMMAR.exact(_name, lambda _c=_cfg: _c)
GRAMMAR.kind("inline", _inline_config, "'name:w=SPEC;a=SPEC;t=TRANSFORM;hp=DTYPE;c=RULE;acc=ACCUMULATOR'")


#: the kinds of recorded tensors replay measures
KINDS = ("linear", "residual", "attn_probs", "key", "value")


def make_config(spec: Any) -> ReplayConfig:
    """A ReplayConfig from a ReplayConfig, a preset name, a dict, a (name, w, a[, t]) tuple, or a
    string ``"name:w=SPEC;a=SPEC;t=TRANSFORM;c=RULE"`` (fields separated by ';', each optional;
    ``c`` is the static activation calibration rule, ``act_calib``)."""
    if isinstance(spec, ReplayConfig):
        return spec
    if isinstance(spec, dict):
        return ReplayConfig(**spec)
    if isinstance(spec, tuple):
        return ReplayConfig(*spec)
    if isinstance(spec, str):
        return GRAMMAR.resolve(spec)
    raise FmtlabError(f"cannot make a replay config from {spec!r}")


# ------------------------------------------------------------------------------------ results

def _agg_rows(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    numeric = [c for c in COLUMNS if c.startswith(("a_", "w_", "out_")) or c in ("in_max_over_median", "in_kurtosis", "in_absmax")]
    out = []
    for key, grp in groups.items():
        row: dict[str, Any] = dict(zip(keys, key))
        row["n_tensors"] = len(grp)
        for c in numeric:
            vals = np.array([g.get(c, math.nan) for g in grp], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            if c.startswith("in_") and c != "in_kurtosis":
                row[f"max_{c}"] = float(vals.max()) if vals.size and not np.all(np.isnan(vals)) else math.nan
            elif c.endswith("sqnr_db"):
                row[f"mean_{c}"] = float(finite.mean()) if finite.size else (math.inf if np.any(vals == math.inf) else math.nan)
                row[f"min_{c}"] = float(vals[~np.isnan(vals)].min()) if np.any(~np.isnan(vals)) else math.nan
            else:
                nn = vals[~np.isnan(vals)]
                row[f"mean_{c}"] = float(nn.mean()) if nn.size else math.nan
        nsr = np.array([g.get("out_nsr", math.nan) for g in grp], dtype=np.float64)
        nsr = nsr[~np.isnan(nsr)]
        row["pooled_out_sqnr_db"] = (M.sqnr_db(1.0, float(nsr.mean())) if nsr.size else math.nan)
        out.append(row)
    return out


def _fmt_cell(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ";".join(":".join(_num(x) for x in item) if isinstance(item, (list, tuple)) else _num(item) for item in v)
    if isinstance(v, float):
        return _num(v)
    return "" if v is None else v


def _num(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.6g}"
    return str(x)


def rows_to_csv(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (lists as 'idx:value;...', NaN as 'nan', infinities as 'inf')."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt_cell(r.get(c)) for c in columns])
    return buf.getvalue()


@dataclass
class ReplayResult:
    """Rows (one per tensor x config), aggregates, and the run's metadata."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    #: one entry per (tensor, config): per-sequence lists a_nonzero, a_under, a_signal, a_noise and,
    #: for Linear layers, out_signal, out_noise (see fmtlab.sim.replay_engine)
    per_sequence: list[dict[str, Any]] = field(default_factory=list)

    def sequence_arrays(self, config: str, kind: str = "linear") -> dict[str, np.ndarray]:
        """Per-sequence sums of ``config`` as [sequences, tensors] arrays (keys as in per_sequence)."""
        ent = [e for e in self.per_sequence if e["config"] == config and e["kind"] == kind]
        if not ent:
            raise FmtlabError(f"no per-sequence data for config {config!r}, kind {kind!r}")
        keys = [k for k in ent[0] if k not in ("config", "tensor", "kind")]
        return {k: np.asarray([e[k] for e in ent], dtype=np.float64).T for k in keys}

    @property
    def by_layer_type(self) -> list[dict[str, Any]]:
        return _agg_rows(self.rows, ("trace", "config", "kind", "layer_type"))

    @property
    def by_model(self) -> list[dict[str, Any]]:
        return _agg_rows(self.rows, ("trace", "config", "kind"))

    def select(self, **equals: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in equals.items())]

    def __add__(self, other: "ReplayResult") -> "ReplayResult":
        both = {(r["trace"], r["config"]) for r in self.rows} & {(r["trace"], r["config"]) for r in other.rows}
        if both:  # their rows would be merged into one model row: refuse, never average two traces
            trace, config = sorted(both, key=str)[0]
            raise FmtlabError(f"both results hold trace label {trace!r} with config {config!r}; replay "
                              "distinct traces under distinct labels (replay(..., label=...))")
        meta = {"runs": [self.meta.get("runs", [self.meta]), other.meta.get("runs", [other.meta])]}
        return ReplayResult(self.rows + other.rows, meta, self.per_sequence + other.per_sequence)

    def to_csv(self, path: str, which: str = "rows") -> str:
        rows = {"rows": self.rows, "by_layer_type": self.by_layer_type, "by_model": self.by_model}[which]
        atomic_write_text(path, rows_to_csv(rows, COLUMNS if which == "rows" else None))
        return path

    def to_json(self, path: str) -> str:
        doc = {"meta": self.meta, "columns": list(COLUMNS), "rows": self.rows,
               "by_layer_type": self.by_layer_type, "by_model": self.by_model,
               "notes": "null = NaN or not applicable; 'inf' = infinite (e.g. SQNR of an exact result)"}
        atomic_write_text(path, dumps_json(doc))
        return path

    def write(self, out_dir: str, stem: str = "replay") -> list[str]:
        """Write ``<stem>.csv``, ``<stem>_by_layer_type.csv``, ``<stem>_by_model.csv`` and ``<stem>.json``.

        All four appear together or not at all: they are built in a staging folder inside the
        locked ``out_dir`` (see :func:`fmtlab.safe_io.staged_dir`) and moved into place at the end.
        """
        check_file_stem(stem)
        names = [f"{stem}.csv", f"{stem}_by_layer_type.csv", f"{stem}_by_model.csv", f"{stem}.json"]
        with staged_dir(out_dir) as stage:
            self.to_csv(os.path.join(stage, names[0]))
            self.to_csv(os.path.join(stage, names[1]), "by_layer_type")
            self.to_csv(os.path.join(stage, names[2]), "by_model")
            self.to_json(os.path.join(stage, names[3]))
        return [os.path.join(out_dir, n) for n in names]

    def summary(self, kind: str = "linear") -> str:
        """A small text table per config: for Linear layers the pooled/mean/min output SQNR and the
        mean activation/weight rates; for other kinds the activation SQNR and rates."""
        rows = [r for r in self.by_model if r["kind"] == kind]
        if kind == "linear":
            cols = [("pooled out SQNR", "pooled_out_sqnr_db"), ("mean out SQNR", "mean_out_sqnr_db"),
                    ("min out SQNR", "min_out_sqnr_db"), ("a underflow", "mean_a_underflow_rate"),
                    ("a clip", "mean_a_clip_rate"), ("w underflow", "mean_w_underflow_rate")]
        else:
            cols = [("mean a SQNR", "mean_a_sqnr_db"), ("min a SQNR", "min_a_sqnr_db"),
                    ("a underflow", "mean_a_underflow_rate"), ("a clip", "mean_a_clip_rate"),
                    ("a clip energy", "mean_a_clipped_energy_frac")]
        head = f"{'config':<26}{'trace':<14}" + "".join(f"{c:>16}" for c, _ in cols)
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r['config']:<26}{str(r['trace'])[:13]:<14}"
                         + "".join(f"{_num(r.get(k, math.nan)):>16}" for _, k in cols))
        return "\n".join(lines)


def _one_numba_thread(fn, *args):
    """``fn(*args)`` with numba's parallel kernels on one thread in this (pool) thread: the pool
    already runs one task per core, and nested numba threads on busy cores wait at barriers
    (measured 100x slower per kernel at load ~15 on 2 cores). numba's thread count is per calling
    thread; results do not depend on it."""
    numba.set_num_threads(1)
    return fn(*args)


def replay(trace: Trace | str | os.PathLike, configs: Any, *, layers: str | None = None,
           kinds: Sequence[str] | None = None, calib: Trace | str | None = None,
           max_tokens: int | None = None, workers: int | None = None, progress: bool = True,
           top_k: int = 3, label: str | None = None, executor: Any = None) -> ReplayResult:
    """Replay ``trace`` through ``configs`` and measure every tensor (see module doc).

    ``configs``: one config or a sequence of configs (ReplayConfig, preset name, "name:w=..;a=..;t=..",
    dict or tuple). ``layers``: regular expression selecting tensors by name. ``kinds``: subset of
    ("linear", "residual", "attn_probs", "key", "value"); default all recorded. ``calib``: trace to
    fit static scales and fitted transforms on (required by such configs). ``max_tokens``: replay only the first rows. ``workers``: threads
    (default: CPU count, at most 4). Rows come back in trace order, config-major within a tensor.
    ``executor``: run the tasks on a :mod:`fmtlab.sim.executor` executor (e.g. a Dask cluster;
    ``workers`` is then ignored); the rows are the same.
    """
    tr = open_trace(trace)
    cal = open_trace(calib) if calib is not None else None
    if isinstance(configs, (str, ReplayConfig, dict, tuple)):
        configs = [configs]
    cfgs = [make_config(c) for c in configs]
    if not cfgs:
        raise FmtlabError("replay needs at least one config")
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise FmtlabError(f"config names must be unique: {names}")
    resolved = [resolve_config(c) for c in cfgs]
    if max_tokens is not None and max_tokens < 1:
        raise FmtlabError(f"max_tokens must be >= 1, got {max_tokens=}")
    known = KINDS
    kinds = tuple(kinds) if kinds is not None else known
    bad = [k for k in kinds if k not in known]
    if bad:
        raise FmtlabError(f"unknown kinds {bad}; expected some of {known}")
    tasks = [Task(kind, list(names), tensor) for kind, names, tensor in replay_tasks(tr, layers, kinds)]
    if not tasks:
        raise FmtlabError(f"nothing to replay in {tr.path} (layers={layers!r}, kinds={list(kinds)}); "
                          "was the trace recorded with inputs and weights?")

    label = label or os.path.basename(tr.path.rstrip(os.sep))
    eng = Engine(tr, resolved, cal, max_tokens, top_k, label)
    workers = workers or min(4, os.cpu_count() or 1)
    results: dict[int, list[dict[str, Any]]] = {}
    run = eng.run
    if executor is not None:
        units = [Unit(tr.path, cal.path if cal is not None else None, t.kind, tuple(t.names), t.tensor,
                      tuple(cfgs), max_tokens, top_k, label,
                      digests=(tr.digest, cal.digest if cal is not None else None)) for t in tasks]
        got = run_units(executor, units, progress=progress)
        results = {i: got[u.key] for i, u in enumerate(units)}
    bar = tqdm(total=len(tasks), unit="tensor", desc="replay", disable=not progress or executor is not None)
    try:
        if executor is not None:
            pass
        elif workers == 1:
            for i, t in enumerate(tasks):
                results[i] = run(t)
                bar.update(1)
        else:
            with cf.ThreadPoolExecutor(max_workers=workers) as ex:
                futs = {ex.submit(_one_numba_thread, run, t): i for i, t in enumerate(tasks)}
                for f in cf.as_completed(futs):
                    results[futs[f]] = f.result()
                    bar.update(1)
    finally:
        bar.close()
    order = {n: i for i, n in enumerate(names)}
    rows: list[dict[str, Any]] = []
    seqs: list[dict[str, Any]] = []
    for i, t in enumerate(tasks):
        pos = {n: j for j, n in enumerate(t.names)}
        key = lambda r: (pos[r["tensor"]], order[r["config"]])  # noqa: E731
        rows.extend(sorted(results[i][0], key=key))
        seqs.extend(sorted(results[i][1], key=key))
    meta = {"trace": tr.path, "trace_id": tr.trace_id, "model": tr.manifest.get("model", {}).get("name"),
            "seq_len": tr.manifest.get("seq_len"), "n_tokens": tr.manifest.get("n_tokens"),
            "max_tokens": max_tokens, "calib": cal.path if cal is not None else None,
            "configs": {c.name: c.describe() for c in cfgs},
            "protocol": "dynamic scales per sequence; static scales and fitted transforms from calib"}
    return ReplayResult(rows, meta, seqs)
