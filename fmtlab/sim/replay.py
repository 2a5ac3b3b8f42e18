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

Static transforms (SmoothQuant, AQAS) are fitted on the same tensor unless ``calib=`` names
another trace of the same model (then they are fitted on its activations: honest calibration,
and the way to compare calibration sequence lengths).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim import metrics as M
from fmtlab.sim.quant import QuantFn, resolve
from fmtlab.safe_io import atomic_write_text, dumps_json, staged_dir
from fmtlab.sim.trace import Trace, open_trace
from fmtlab.sim.transforms import Context, Decomposition, Transform, get_transform

_METRICS = ("underflow_rate", "underflow_energy_frac", "clip_rate", "clipped_energy_frac",
            "clip_error_share", "mse", "sqnr_db", "max_abs_err")
_OUT = ("mse", "sqnr_db", "tok_sqnr_db", "max_abs_err", "nsr")
_IN = ("absmax", "median_abs", "max_over_median", "kurtosis", "channels_ge6")
COLUMNS = (["trace", "seq_len", "config", "tensor", "kind", "layer_type", "block", "op", "rows", "cols", "note"]
           + [f"in_{k}" for k in _IN] + ["in_top_channels", "in_top_tokens"]
           + [f"a_{k}" for k in _METRICS] + [f"w_{k}" for k in _METRICS] + [f"out_{k}" for k in _OUT])


@dataclass(frozen=True)
class ReplayConfig:
    """One quantization setting: weight and activation quantizer specs and an optional transform.

    ``hp_dtype`` is the precision of a transform's high-precision terms ("float16" or "float32").
    """

    name: str
    weight: Any = None
    act: Any = None
    transform: Any = None
    hp_dtype: str = "float16"

    def describe(self) -> str:
        def nm(s):
            return "fp32" if s is None else (s if isinstance(s, str) else getattr(s, "name", None) or repr(s))
        t = self.transform
        tn = "" if t is None else f", t={t if isinstance(t, str) else getattr(t, 'name', repr(t))}"
        return f"w={nm(self.weight)}, a={nm(self.act)}{tn}"


# The end-to-end set of the issue plus outlier-fighting variants. Names of quantizer presets are
# those of fmtlab.formats.get_quantizer.
PRESETS: dict[str, ReplayConfig] = {c.name: c for c in [
    ReplayConfig("fp32"),
    ReplayConfig("w8a8_int_tensor", "int8_per_tensor", "int8_per_tensor"),
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
]}
#: the configs of the end-to-end perplexity check
E2E_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_llm_int8", "w4a8_int_channel", "w4a8_dint_channel",
               "fp8_e4m3", "mxfp4", "w4a8_log4")


def make_config(spec: Any) -> ReplayConfig:
    """A ReplayConfig from a ReplayConfig, a preset name, a dict, a (name, w, a[, t]) tuple, or a
    string ``"name:w=SPEC;a=SPEC;t=TRANSFORM"`` (fields separated by ';', each optional)."""
    if isinstance(spec, ReplayConfig):
        return spec
    if isinstance(spec, dict):
        return ReplayConfig(**spec)
    if isinstance(spec, tuple):
        return ReplayConfig(*spec)
    if isinstance(spec, str):
        s = spec.strip()
        if s in PRESETS:
            return PRESETS[s]
        if ":" not in s:
            raise FmtlabError(f"unknown config {s!r}: not a preset ({', '.join(PRESETS)}) and not "
                              "'name:w=...;a=...;t=...'")
        name, body = s.split(":", 1)
        fields: dict[str, Any] = {}
        for part in body.split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise FmtlabError(f"in config {s!r}: {part!r} is not key=value")
            k, v = part.split("=", 1)
            key = {"w": "weight", "weight": "weight", "a": "act", "act": "act", "t": "transform",
                   "transform": "transform", "hp": "hp_dtype"}.get(k.strip())
            if key is None:
                raise FmtlabError(f"in config {s!r}: unknown field {k.strip()!r} (use w, a, t, hp)")
            fields[key] = v.strip() or None
        return ReplayConfig(name.strip(), **fields)
    raise FmtlabError(f"cannot make a replay config from {spec!r}")


@dataclass
class _Resolved:
    cfg: ReplayConfig
    wq: QuantFn
    aq: QuantFn
    transform: Transform | None
    hp_dtype: Any


def _resolve_config(cfg: ReplayConfig) -> _Resolved:
    hp = {"float16": np.float16, "fp16": np.float16, "float32": None, "fp32": None, None: None}
    if cfg.hp_dtype not in hp:
        raise FmtlabError(f"config {cfg.name!r}: hp_dtype must be float16 or float32, got {cfg.hp_dtype!r}")
    return _Resolved(cfg, resolve(cfg.weight), resolve(cfg.act), get_transform(cfg.transform), hp[cfg.hp_dtype])


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

    @property
    def by_layer_type(self) -> list[dict[str, Any]]:
        return _agg_rows(self.rows, ("trace", "config", "kind", "layer_type"))

    @property
    def by_model(self) -> list[dict[str, Any]]:
        return _agg_rows(self.rows, ("trace", "config", "kind"))

    def select(self, **equals: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in equals.items())]

    def __add__(self, other: "ReplayResult") -> "ReplayResult":
        meta = {"runs": [self.meta.get("runs", [self.meta]), other.meta.get("runs", [other.meta])]}
        return ReplayResult(self.rows + other.rows, meta)

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


# ------------------------------------------------------------------------------------ engine

def _stats(prefix: str, x: np.ndarray, q: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    s = M.error_stats(x, q, mask)
    return {f"{prefix}{k}": s[k] for k in _METRICS}


def _nan_stats(prefix: str, keys: Iterable[str]) -> dict[str, float]:
    return {f"{prefix}{k}": math.nan for k in keys}


def _in_stats(x: np.ndarray, positions: np.ndarray | None, top_k: int) -> dict[str, Any]:
    o = M.outlier_stats(x, top_k=top_k, positions=positions)
    d = {f"in_{k}": o[k] for k in _IN}
    d["in_top_channels"] = o["top_channels"]
    d["in_top_tokens"] = o["top_tokens"]
    return d


@dataclass
class _Task:
    kind: str
    names: list[str]  # layer names (linear) or one activation name
    tensor: str  # the input / activation tensor name


class _Engine:
    def __init__(self, trace: Trace, configs: list[_Resolved], calib: Trace | None, max_tokens: int | None,
                 top_k: int, trace_label: str):
        self.trace = trace
        self.configs = configs
        self.calib = calib
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.label = trace_label
        m = trace.manifest
        self.seq_len = m.get("seq_len")
        self.prefix_len = int(m.get("prefix_len", 0) or 0)
        pos = trace.tensor("tokens:position") if "tokens:position" in m["tensors"] else None
        self.positions = None if pos is None else np.asarray(pos[: self._rows(len(pos))], dtype=np.int64)

    def _rows(self, n: int) -> int:
        return n if self.max_tokens is None else min(n, self.max_tokens)

    def _x(self, name: str, trace: Trace | None = None) -> np.ndarray:
        a = (trace or self.trace).tensor(name)
        a = a[: self._rows(a.shape[0])]
        return np.ascontiguousarray(a, dtype=np.float32)

    def _base(self, cfg: _Resolved, tensor: str, kind: str, ltype: str, block: Any, op: str,
              shape: tuple[int, int]) -> dict[str, Any]:
        return {"trace": self.label, "seq_len": self.seq_len, "config": cfg.cfg.name, "tensor": tensor,
                "kind": kind, "layer_type": ltype, "block": block, "op": op, "rows": shape[0], "cols": shape[1]}

    def run_linear(self, task: _Task) -> list[dict[str, Any]]:
        layers = self.trace.layers
        x = self._x(task.tensor)
        per_token = layers[task.names[0]].get("per_token", True)
        positions = self.positions if per_token and self.positions is not None \
            and len(self.positions) == x.shape[0] else None
        instats = _in_stats(x, positions, self.top_k)
        xcal = None
        if self.calib is not None:
            cal_name = layers[task.names[0]]["input"]
            try:
                xcal = self._x(cal_name, self.calib)
            except Exception as exc:  # noqa: BLE001
                raise FmtlabError(f"calibration trace lacks {cal_name!r}: record it with the same layers") from exc
        ctx_base = dict(positions=positions, prefix_len=self.prefix_len)
        rows: list[dict[str, Any]] = []
        weights = {n: np.ascontiguousarray(self.trace.tensor(layers[n]["weight"]), dtype=np.float32)
                   for n in task.names}
        refs = {n: x @ weights[n].T for n in task.names}
        for cfg in self.configs:
            shared_x: dict[str, Any] | None = None
            ctx = Context(act_q=None if cfg.aq.identity else cfg.aq, weight_q=None if cfg.wq.identity else cfg.wq,
                          **ctx_base)
            for n in task.names:
                meta = layers[n]
                w = weights[n]
                t = cfg.transform
                note = ""
                if t is not None and t.needs_positions and positions is None:
                    t, note = None, f"{cfg.transform.name} skipped: rows are not tokens"
                if t is not None:
                    ft = t.fit(xcal if xcal is not None else x, w, ctx)
                    d = ft.decompose(x, w, ctx)
                else:
                    d = Decomposition(x, w)
                if shared_x is not None and not (t is not None and t.x_depends_on_w):
                    xq, astats = shared_x["xq"], shared_x["stats"]
                else:
                    xq, amask = cfg.aq.with_mask(d.x)
                    astats = _stats("a_", d.x, xq, amask)
                    shared_x = {"xq": xq, "stats": astats}
                wq, wmask = cfg.wq.with_mask(d.w)
                y = d.output(xq=xq, wq=wq, hp_dtype=cfg.hp_dtype)
                o = M.output_error_stats(refs[n], y)
                row = self._base(cfg, n, "linear", meta["type"], meta["block"], meta["op"], x.shape)
                row["note"] = note
                row.update(instats)
                row.update(astats)
                row.update(_stats("w_", d.w, wq, wmask))
                row.update({f"out_{k}": o[k] for k in _OUT})
                rows.append(row)
        return rows

    def run_activation(self, task: _Task) -> list[dict[str, Any]]:
        info = self.trace.activations[task.names[0]]
        a = self.trace.tensor(task.tensor)
        kind = info["kind"]
        if kind == "attn_probs":
            n_seq, heads, s, _ = a.shape
            n_keep = n_seq if self.max_tokens is None else max(1, min(n_seq, self.max_tokens // s))
            x = np.ascontiguousarray(a[:n_keep].reshape(-1, s), dtype=np.float32)
            positions = np.tile(np.arange(s), n_keep * heads)
        else:
            x = np.ascontiguousarray(a[: self._rows(a.shape[0])], dtype=np.float32)
            x = x.reshape(-1, x.shape[-1])
            positions = self.positions
        instats = _in_stats(x, positions, self.top_k)
        rows = []
        for cfg in self.configs:
            row = self._base(cfg, task.names[0], kind, kind, info.get("block"), kind, x.shape)
            row["note"] = ""
            row.update(instats)
            t = cfg.transform
            xin = x
            if t is not None:
                xin = t.transform_activation(x, Context(positions=positions, prefix_len=self.prefix_len))
            xq, mask = cfg.aq.with_mask(xin)
            row.update(_stats("a_", xin, xq, mask))
            row.update(_nan_stats("w_", _METRICS))
            row.update(_nan_stats("out_", _OUT))
            rows.append(row)
        return rows


def replay(trace: Trace | str | os.PathLike, configs: Any, *, layers: str | None = None,
           kinds: Sequence[str] | None = None, calib: Trace | str | None = None,
           max_tokens: int | None = None, workers: int | None = None, progress: bool = True,
           top_k: int = 3, label: str | None = None) -> ReplayResult:
    """Replay ``trace`` through ``configs`` and measure every tensor (see module doc).

    ``configs``: one config or a sequence of configs (ReplayConfig, preset name, "name:w=..;a=..;t=..",
    dict or tuple). ``layers``: regular expression selecting tensors by name. ``kinds``: subset of
    ("linear", "residual", "attn_probs", "key", "value"); default all recorded. ``calib``: trace to
    fit static transforms on. ``max_tokens``: replay only the first rows. ``workers``: threads
    (default: CPU count, at most 4). Rows come back in trace order, config-major within a tensor.
    """
    from tqdm.auto import tqdm

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
    resolved = [_resolve_config(c) for c in cfgs]
    if max_tokens is not None and max_tokens < 1:
        raise FmtlabError(f"max_tokens must be >= 1, got {max_tokens=}")
    known = ("linear", "residual", "attn_probs", "key", "value")
    kinds = tuple(kinds) if kinds is not None else known
    bad = [k for k in kinds if k not in known]
    if bad:
        raise FmtlabError(f"unknown kinds {bad}; expected some of {known}")
    pat = re.compile(layers) if layers else None

    tasks: list[_Task] = []
    if "linear" in kinds:
        groups: dict[str, list[str]] = {}
        for n, meta in tr.layers.items():
            if pat and not pat.search(n):
                continue
            if not meta.get("input") or not meta.get("weight"):
                continue
            groups.setdefault(meta["input"], []).append(n)
        tasks += [_Task("linear", ns, inp) for inp, ns in groups.items()]
    for n, info in tr.activations.items():
        if info["kind"] in kinds and info["kind"] != "linear" and (not pat or pat.search(n)):
            tasks.append(_Task("activation", [n], info["tensor"]))
    if not tasks:
        raise FmtlabError(f"nothing to replay in {tr.path} (layers={layers!r}, kinds={list(kinds)}); "
                          "was the trace recorded with inputs and weights?")

    label = label or os.path.basename(tr.path.rstrip(os.sep))
    eng = _Engine(tr, resolved, cal, max_tokens, top_k, label)
    workers = workers or min(4, os.cpu_count() or 1)
    results: dict[int, list[dict[str, Any]]] = {}
    run = lambda t: eng.run_linear(t) if t.kind == "linear" else eng.run_activation(t)  # noqa: E731
    bar = tqdm(total=len(tasks), unit="tensor", desc="replay", disable=not progress)
    try:
        if workers == 1:
            for i, t in enumerate(tasks):
                results[i] = run(t)
                bar.update(1)
        else:
            with cf.ThreadPoolExecutor(max_workers=workers) as ex:
                futs = {ex.submit(run, t): i for i, t in enumerate(tasks)}
                for f in cf.as_completed(futs):
                    results[futs[f]] = f.result()
                    bar.update(1)
    finally:
        bar.close()
    order = {n: i for i, n in enumerate(names)}
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(tasks):
        pos = {n: j for j, n in enumerate(t.names)}
        rows.extend(sorted(results[i], key=lambda r: (pos[r["tensor"]], order[r["config"]])))
    meta = {"trace": tr.path, "trace_id": tr.trace_id, "model": tr.manifest.get("model", {}).get("name"),
            "seq_len": tr.manifest.get("seq_len"), "n_tokens": tr.manifest.get("n_tokens"),
            "max_tokens": max_tokens, "calib": cal.path if cal is not None else None,
            "configs": {c.name: c.describe() for c in cfgs}}
    return ReplayResult(rows, meta)
