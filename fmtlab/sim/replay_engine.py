"""The computation behind :func:`fmtlab.sim.replay.replay`, one sequence at a time.

Measurement protocol (what the numbers mean):

* dynamic scales (per-tensor, per-token, per-group, MX, NVFP4) and dynamic transforms (LLM.int8()
  outlier columns, sink exclusion, ...) see one recorded sequence at a time, as an inference engine
  sees one request: a sequence's result does not depend on which other sequences share the trace;
* static activation scales (``ReplayConfig.act_calib``) and transforms that fit statistics
  (``Transform.fits_data``: SmoothQuant, AQAS) are fitted on a calibration trace, frozen, and then
  applied to the scored trace; without calibration data they raise FmtlabError.

Besides the per-tensor rows, every (tensor, config) gets per-sequence sums (signal and noise
energy of the layer output, nonzero and underflowed activation counts) so that the report can
bootstrap over sequences (:mod:`fmtlab.sim.stats`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim import metrics as M
from fmtlab.sim.accumulate import accumulated_matmul, operand
from fmtlab.sim.quant import QuantFn, calibrate_static, resolve
from fmtlab.sim.trace import Trace
from fmtlab.sim.transform_base import Context, Decomposition, Transform
from fmtlab.sim.transforms import get_transform

METRICS = ("underflow_rate", "underflow_energy_frac", "clip_rate", "clipped_energy_frac",
           "clip_error_share", "mse", "sqnr_db", "max_abs_err")
OUT = ("mse", "sqnr_db", "tok_sqnr_db", "max_abs_err", "nsr")
IN = ("absmax", "median_abs", "max_over_median", "kurtosis", "channels_ge6")
_HP = {"float16": np.float16, "fp16": np.float16, "float32": None, "fp32": None, None: None}


@dataclass
class Resolved:
    """A config with its quantizers and transform resolved."""

    cfg: Any  # ReplayConfig
    wq: QuantFn
    aq: QuantFn
    transform: Transform | None
    hp_dtype: Any

    @property
    def static(self) -> str | None:
        return getattr(self.cfg, "act_calib", None)


def resolve_config(cfg: Any) -> Resolved:
    """Resolve a ReplayConfig's specs (FmtlabError for a bad hp_dtype or calibration rule)."""
    if cfg.hp_dtype not in _HP:
        raise FmtlabError(f"config {cfg.name!r}: hp_dtype must be float16 or float32, got {cfg.hp_dtype!r}")
    r = Resolved(cfg, resolve(cfg.weight), resolve(cfg.act), get_transform(cfg.transform), _HP[cfg.hp_dtype])
    if r.static and r.aq.identity:
        raise FmtlabError(f"config {cfg.name!r}: act_calib={r.static!r} needs an activation quantizer")
    return r


def needs_calibration(r: Resolved) -> str | None:
    """Why ``r`` needs calibration data (static scales, a fitted transform), or None."""
    why = []
    if r.static:
        why.append(f"static activation scales ({r.static})")
    if r.transform is not None and r.transform.fits_data:
        why.append(f"the fitted transform {r.transform.name}")
    return " and ".join(why) or None


def fit_layer(r: Resolved, w: np.ndarray, x_calib: np.ndarray | None, ctx_calib: Context | None,
              what: str = "") -> tuple[Transform | None, QuantFn]:
    """(fitted transform, activation quantizer) of one layer, fitted on calibration inputs only.

    Static activation scales are calibrated on the transform's quantized part of ``x_calib``.
    Raises FmtlabError when the config needs calibration data and ``x_calib`` is None.
    """
    why = needs_calibration(r)
    if why and x_calib is None:
        raise FmtlabError(f"config {r.cfg.name!r}{what} uses {why}: it needs calibration data (calib=...); "
                          "static scales and fitted transforms are never fitted on the data they are scored on")
    t = r.transform
    ft = t.fit(x_calib, w, ctx_calib) if t is not None and t.fits_data else t
    aq = r.aq
    if r.static:
        xc = ft.decompose(x_calib, w, ctx_calib).x if ft is not None else x_calib
        aq = calibrate_static(r.aq, xc, r.static)
    return ft, aq


def sequence_bounds(n_rows: int, rows_per_sequence: int | None) -> list[tuple[int, int]]:
    """[(start, stop)] row ranges of consecutive sequences (one range when rows are not tokens)."""
    if not rows_per_sequence or rows_per_sequence >= n_rows:
        return [(0, n_rows)]
    return [(a, min(a + rows_per_sequence, n_rows)) for a in range(0, n_rows, rows_per_sequence)]


def quantize_rows(q: QuantFn, x: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, list[dict]]:
    """``q`` applied to each sequence's rows separately; returns (x_q, per-sequence error sums)."""
    parts, sums = [], []
    for a, b in bounds:
        xs = np.ascontiguousarray(x[a:b])
        qs, mask = q.with_clip(xs)
        parts.append(qs)
        sums.append(M.error_sums(xs, qs, mask))
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)), sums


def _prefixed(prefix: str, s: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {f"{prefix}{k}": s[k] for k in keys}


def nan_stats(prefix: str, keys: Iterable[str]) -> dict[str, float]:
    return {f"{prefix}{k}": math.nan for k in keys}


def in_stats(x: np.ndarray, positions: np.ndarray | None, top_k: int) -> dict[str, Any]:
    o = M.outlier_stats(x, top_k=top_k, positions=positions)
    d = {f"in_{k}": o[k] for k in IN}
    d["in_top_channels"] = o["top_channels"]
    d["in_top_tokens"] = o["top_tokens"]
    return d


def _seq_entry(cfg: str, tensor: str, kind: str, a_sums: list[dict],
               out: tuple[list[float], list[float]] | None = None) -> dict:
    """Per-sequence sums of one (tensor, config); ``out``: the output's per-sequence (signal, noise)."""
    e = {"config": cfg, "tensor": tensor, "kind": kind,
         "a_nonzero": [s["n_nonzero"] for s in a_sums], "a_under": [s["n_under"] for s in a_sums],
         "a_signal": [s["signal"] for s in a_sums], "a_noise": [s["noise"] for s in a_sums]}
    if out is not None:
        e["out_signal"], e["out_noise"] = list(out[0]), list(out[1])
    return e


class LayerCache:
    """The inputs one replay task reads and derives before any config runs: the recorded input,
    its outlier statistics, the weights and the float32 reference outputs X W^T (and the
    calibration input). An executor that runs a layer's configs as separate units (the explore
    search: one config per unit) computes them once per layer instead of once per unit.

    Holds the most recent task only (dropped before the next one is read, so peak memory does not
    grow); thread-safe. Entries are keyed by trace path and manifest digest, task and row limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Any = None
        self._val: dict[str, Any] | None = None

    def get(self, key: Any, make) -> dict[str, Any]:
        with self._lock:
            if self._key == key and self._val is not None:
                return self._val
            self._key, self._val = None, None
        val = make()
        with self._lock:
            self._key, self._val = key, val
        return val


def _writable(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 array that numba sees as writable. Trace tensors are read-only
    memory maps, and numba compiles a second specialization of every kernel for read-only
    arrays: copying (one layer at a time) halves what a cold run compiles (issue 22)."""
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, dtype=np.float32, order="C", copy=True)


@dataclass
class Task:
    kind: str
    names: list[str]  # layer names (linear) or one activation name
    tensor: str  # the input / activation tensor name


class Engine:
    """Runs replay tasks; ``run`` returns (rows, per-sequence entries) of one task."""

    def __init__(self, trace: Trace, configs: list[Resolved], calib: Trace | None, max_tokens: int | None,
                 top_k: int, trace_label: str, cache: LayerCache | None = None):
        self.cache = cache
        self.trace = trace
        self.configs = configs
        self.calib = calib
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.label = trace_label
        m = trace.manifest
        self.seq_len = m.get("seq_len")
        self.prefix_len = int(m.get("prefix_len", 0) or 0)
        self.positions = self._positions(trace)
        self.cal_positions = self._positions(calib) if calib is not None else None

    def _positions(self, tr: Trace) -> np.ndarray | None:
        if "tokens:position" not in tr.manifest["tensors"]:
            return None
        pos = tr.tensor("tokens:position")
        return np.asarray(pos[: self._rows(len(pos))], dtype=np.int64)

    def _rows(self, n: int) -> int:
        return n if self.max_tokens is None else min(n, self.max_tokens)

    def _x(self, name: str, trace: Trace | None = None) -> np.ndarray:
        a = (trace or self.trace).tensor(name, writable=True)
        n = self._rows(a.shape[0])
        return _writable(a if n == a.shape[0] else a[:n].copy())

    def _calib_x(self, name: str) -> np.ndarray | None:
        if self.calib is None:
            return None
        try:
            return self._x(name, self.calib)
        except Exception as exc:  # noqa: BLE001
            raise FmtlabError(f"calibration trace lacks {name!r}: record it with the same layers") from exc

    def _base(self, cfg: Resolved, tensor: str, kind: str, ltype: str, block: Any, op: str,
              shape: tuple[int, int]) -> dict[str, Any]:
        return {"trace": self.label, "seq_len": self.seq_len, "config": cfg.cfg.name, "tensor": tensor,
                "kind": kind, "layer_type": ltype, "block": block, "op": op, "rows": shape[0], "cols": shape[1]}

    def run(self, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.run_linear(task) if task.kind == "linear" else self.run_activation(task)

    def _task_inputs(self, task: Task, make) -> dict[str, Any]:
        if self.cache is None:
            return make()
        key = (self.trace.path, self.trace.digest, task.kind, tuple(task.names), task.tensor, self.max_tokens,
               self.top_k)
        return self.cache.get(key, make)

    def _linear_inputs(self, task: Task) -> dict[str, Any]:
        layers = self.trace.layers
        x = self._x(task.tensor)
        per_token = layers[task.names[0]].get("per_token", True)
        positions = self.positions if per_token and self.positions is not None \
            and len(self.positions) == x.shape[0] else None
        weights = {n: _writable(self.trace.tensor(layers[n]["weight"], writable=True)) for n in task.names}
        return {"x": x, "positions": positions,
                "bounds": sequence_bounds(x.shape[0], self.seq_len if per_token else None),
                "instats": in_stats(x, positions, self.top_k), "weights": weights,
                "refs": {n: x @ weights[n].T for n in task.names}}

    def run_linear(self, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        layers = self.trace.layers
        inp = self._task_inputs(task, lambda: self._linear_inputs(task))
        x, positions, bounds, instats = inp["x"], inp["positions"], inp["bounds"], inp["instats"]
        weights, refs = inp["weights"], inp["refs"]
        if any(needs_calibration(c) for c in self.configs):
            if "xcal" not in inp:
                inp["xcal"] = self._calib_x(layers[task.names[0]]["input"])
            xcal = inp["xcal"]
        else:
            xcal = None
        cpos = self.cal_positions if xcal is not None and self.cal_positions is not None \
            and len(self.cal_positions) == xcal.shape[0] else None
        rows: list[dict[str, Any]] = []
        seqs: list[dict[str, Any]] = []
        for cfg in self.configs:
            shared_x: dict[str, Any] | None = None
            wqf = None if cfg.wq.identity else cfg.wq
            for n in task.names:
                meta, w, note = layers[n], weights[n], ""
                t = cfg.transform
                if t is not None and t.needs_positions and positions is None:
                    t, note = None, f"{cfg.transform.name} skipped: rows are not tokens"
                r = cfg if t is cfg.transform else Resolved(cfg.cfg, cfg.wq, cfg.aq, None, cfg.hp_dtype)
                ctx_cal = Context(positions=cpos, prefix_len=self.prefix_len, act_q=None if cfg.aq.identity
                                  else cfg.aq, weight_q=wqf)
                ft, aq = fit_layer(r, w, xcal, ctx_cal, f" (layer {n})")
                ctx = Context(positions=positions, prefix_len=self.prefix_len, act_q=None if aq.identity else aq,
                              weight_q=wqf)
                if ft is not None and ft.weight_depends_on_x:
                    y, a_sums, w_sums = self._per_sequence(ft, aq, cfg, x, w, positions, bounds)
                else:  # row-wise decomposition: decompose once, quantize activations per sequence
                    d = ft.decompose(x, w, ctx) if ft is not None else Decomposition(x, w)
                    if shared_x is not None and not (ft is not None and ft.x_depends_on_w):
                        xq, a_sums = shared_x["xq"], shared_x["sums"]
                    else:
                        xq, a_sums = quantize_rows(aq, d.x, bounds)
                        shared_x = {"xq": xq, "sums": a_sums}
                    wq, wmask = cfg.wq.with_clip(d.w)
                    w_sums = [M.error_sums(d.w, wq, wmask)]
                    y = d.output(xq=xq, wq=wq, hp_dtype=cfg.hp_dtype)
                    if getattr(cfg.cfg, "accumulator", None) is not None:
                        y, note = self._accumulated(cfg, aq, x, w, bounds)
                o, out_signal, out_noise = M.output_error_stats_by_rows(refs[n], y, bounds)
                row = self._base(cfg, n, "linear", meta["type"], meta["block"], meta["op"], x.shape)
                row["note"] = note
                row.update(instats)
                row.update(_prefixed("a_", M.stats_from_sums(M.merge_sums(a_sums)), METRICS))
                row.update(_prefixed("w_", M.stats_from_sums(M.merge_sums(w_sums)), METRICS))
                row.update({f"out_{k}": o[k] for k in OUT})
                rows.append(row)
                seqs.append(_seq_entry(cfg.cfg.name, n, "linear", a_sums, (out_signal, out_noise)))
        return rows, seqs

    def _accumulated(self, cfg: Resolved, aq: QuantFn, x: np.ndarray, w: np.ndarray, bounds) -> tuple[np.ndarray, str]:
        """The layer output with every dot product accumulated as ``cfg.cfg.accumulator`` does
        (:mod:`fmtlab.sim.accumulate`; dynamic scales per sequence), and a note with the share of
        overflowing dot products."""
        wop = operand(cfg.wq.obj if not cfg.wq.identity else None, w)
        ys, n_ovf = [], 0
        for a, b in bounds:
            y, ovf = accumulated_matmul(x[a:b], w, aq.obj if not aq.identity else None, None,
                                        cfg.cfg.accumulator, w_operand=wop)
            ys.append(y)
            n_ovf += int(ovf.sum())
        total = x.shape[0] * w.shape[0]
        return np.concatenate(ys, axis=0), f"accumulator {cfg.cfg.accumulator}: {n_ovf}/{total} dot products overflow"

    def _per_sequence(self, ft: Transform, aq: QuantFn, cfg: Resolved, x, w, positions, bounds):
        """A transform whose W' depends on X (LLM.int8(), MUXQ): decompose each sequence on its own."""
        ys, a_sums, w_sums = [], [], []
        wqf = None if cfg.wq.identity else cfg.wq
        for a, b in bounds:
            ctx = Context(positions=None if positions is None else positions[a:b], prefix_len=self.prefix_len,
                          act_q=None if aq.identity else aq, weight_q=wqf)
            d = ft.decompose(np.ascontiguousarray(x[a:b]), w, ctx)
            xq, amask = aq.with_clip(d.x)
            wq, wmask = cfg.wq.with_clip(d.w)
            a_sums.append(M.error_sums(d.x, xq, amask))
            w_sums.append(M.error_sums(d.w, wq, wmask))
            ys.append(d.output(xq=xq, wq=wq, hp_dtype=cfg.hp_dtype))
        return np.concatenate(ys, axis=0), a_sums, w_sums

    def _activation_rows(self, name: str, tr: Trace) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """(rows [n, last dim], positions, rows per sequence) of a stand-alone activation."""
        info = tr.activations[name]
        a = tr.tensor(info["tensor"], writable=True)
        if info["kind"] == "attn_probs":
            n_seq, heads, s, _ = a.shape
            n_keep = n_seq if self.max_tokens is None else max(1, min(n_seq, self.max_tokens // s))
            x = _writable(a[:n_keep].reshape(-1, s))
            return x, np.tile(np.arange(s), n_keep * heads), heads * s
        x = _writable(a[: self._rows(a.shape[0])])
        pos = self.positions if tr is self.trace else self.cal_positions
        return x.reshape(-1, x.shape[-1]), pos, tr.manifest.get("seq_len")

    def _activation_inputs(self, name: str) -> dict[str, Any]:
        x, positions, per_seq = self._activation_rows(name, self.trace)
        return {"x": x, "positions": positions, "bounds": sequence_bounds(x.shape[0], per_seq),
                "instats": in_stats(x, positions, self.top_k)}

    def run_activation(self, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        name = task.names[0]
        info = self.trace.activations[name]
        kind = info["kind"]
        inp = self._task_inputs(task, lambda: self._activation_inputs(name))
        x, positions, bounds, instats = inp["x"], inp["positions"], inp["bounds"], inp["instats"]
        rows, seqs = [], []
        for cfg in self.configs:
            row = self._base(cfg, name, kind, kind, info.get("block"), kind, x.shape)
            row["note"] = ""
            row.update(instats)
            t = cfg.transform
            ctx = Context(positions=positions, prefix_len=self.prefix_len)
            xin = t.transform_activation(x, ctx) if t is not None else x
            aq = cfg.aq
            if cfg.static:
                if self.calib is None or name not in self.calib.activations:
                    raise FmtlabError(f"config {cfg.cfg.name!r} uses static activation scales ({cfg.static}): "
                                      f"it needs a calibration trace holding {name!r} (calib=...)")
                xc, cpos, _ = self._activation_rows(name, self.calib)
                xc = t.transform_activation(xc, Context(positions=cpos, prefix_len=self.prefix_len)) \
                    if t is not None else xc
                aq = calibrate_static(cfg.aq, xc, cfg.static)
            _, a_sums = quantize_rows(aq, xin, bounds)
            row.update(_prefixed("a_", M.stats_from_sums(M.merge_sums(a_sums)), METRICS))
            row.update(nan_stats("w_", METRICS))
            row.update(nan_stats("out_", OUT))
            rows.append(row)
            seqs.append(_seq_entry(cfg.cfg.name, name, kind, a_sums))
        return rows, seqs
