"""Layer Hessians for GPTQ: H = 2 X^T X / n over calibration rows, streamed and cached.

* :class:`HessianAccumulator` sums X^T X over row batches of one layer input; any source feeds it
  (trace pieces here, torch forward hooks in ``fmtlab.methods.gptq``). Each batch is one symmetric
  rank-k update (BLAS ``ssyrk`` for float32 / float16 / bfloat16 rows, ``dsyrk`` for float64: the
  upper triangle only), added to a float64 sum; the reference (IST-DASLab/gptq ``add_batch``)
  keeps the whole sum in float32.
* :func:`trace_hessians` streams the inputs of a recorded trace piece by piece; layers fed by one
  stored input (q/k/v, gate/up) share one Hessian. It refuses a trace recorded on the "eval" split:
  a Hessian is calibration, and scoring text must never calibrate.
* :class:`HessianCache` stores Hessians as safetensors (atomic writes, never pickle) under a key of
  (model, calibration data); one file per layer input, named from the layer, with the row count
  and key in its metadata, so a report with several configs computes them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Iterable, Mapping

import numpy as np

from scipy.linalg import blas

from fmtlab.errors import FmtlabError
from fmtlab.safe_io import dir_mode
from fmtlab.sim.safetensors_io import SafetensorsFile, write_safetensors
from fmtlab.sim.trace import open_trace

__all__ = ["HessianAccumulator", "trace_hessians", "HessianCache", "calibration_key", "check_calibration_trace",
           "transformed_hessian"]


class HessianAccumulator:
    """Streaming H = 2 X^T X / n of one layer input with ``features`` columns.

    ``add(X)`` takes rows [..., features] (NaN/Inf raise): one rank-k update per call, in float32
    for float32 (and narrower) rows, float64 for float64 rows, summed in float64 (upper triangle).
    ``hessian()`` is float64 [features, features], symmetric; raises if no row was added."""

    def __init__(self, features: int):
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 1:
            raise FmtlabError(f"HessianAccumulator needs a positive feature count, got {features!r}")
        self.features = int(features)
        self._upper = np.zeros((self.features, self.features), np.float64)  # X^T X, upper triangle
        self.n = 0

    def add(self, X) -> None:
        X = np.asarray(X)
        if X.shape[-1] != self.features:
            raise FmtlabError(f"Hessian rows have {X.shape[-1]} features, expected {self.features}")
        X = X.reshape(-1, self.features)
        if X.shape[0] == 0:
            return
        if not np.all(np.isfinite(X)):
            raise FmtlabError("Hessian input holds NaN or Inf")
        if X.dtype == np.float64:
            syrk, X = blas.dsyrk, np.ascontiguousarray(X)
        else:
            syrk, X = blas.ssyrk, np.ascontiguousarray(X, np.float32)
        # X is C-contiguous [n, f], i.e. X^T in Fortran order: syrk(A = X^T) = A A^T = X^T X (upper)
        self._upper += syrk(1.0, X.T, trans=0, lower=0)
        self.n += X.shape[0]

    def add_xtx(self, xtx: np.ndarray, n: int) -> None:
        """Add a precomputed (symmetric) X^T X of ``n`` rows."""
        xtx = np.asarray(xtx, np.float64)
        if xtx.shape != self._upper.shape:
            raise FmtlabError(f"X^T X has shape {xtx.shape}, expected {self._upper.shape}")
        self._upper += np.triu(xtx)
        self.n += int(n)

    @property
    def xtx(self) -> np.ndarray:
        """The symmetric float64 X^T X summed so far."""
        up = self._upper
        return np.triu(up) + np.triu(up, 1).T

    def hessian(self) -> np.ndarray:
        if self.n == 0:
            raise FmtlabError("no calibration rows were added to the Hessian")
        return self.xtx * (2.0 / self.n)


def transformed_hessian(H, A) -> np.ndarray:
    """The Hessian of the transformed input X' = X A: A^T H A (float64). A diagonal A = diag(1/s)
    (SmoothQuant, AQAS) is done elementwise, H_ij / (s_i s_j); otherwise two matmuls (a rotation
    R: R^T H R)."""
    H = np.asarray(H, np.float64)
    A = np.asarray(A, np.float64)
    if A.ndim != 2 or A.shape[0] != H.shape[0] or H.shape[0] != H.shape[1]:
        raise FmtlabError(f"transformed_hessian: H [K, K] and A [K, K'] needed, got {H.shape} and {A.shape}")
    if A.shape[0] == A.shape[1]:
        a = np.diagonal(A)
        if np.count_nonzero(A) == np.count_nonzero(a):
            return H * np.outer(a, a)
    return A.T @ H @ A


def check_calibration_trace(trace) -> None:
    """Raise if ``trace`` says it was recorded on the evaluation split."""
    text = trace.manifest.get("text") or {}
    if isinstance(text, dict) and str(text.get("split", "")).lower() == "eval":
        raise FmtlabError(f"trace {trace.path} was recorded on the 'eval' split: Hessians (calibration) "
                          "must come from calibration text; record a 'calib' trace")


def trace_hessians(trace, layers: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{layer name: H} for the Linear layers of a recorded trace (all, or ``layers``), streamed
    over each input's pieces; layers sharing a stored input share the array."""
    tr = open_trace(trace)
    check_calibration_trace(tr)
    meta = tr.layers
    names = list(meta) if layers is None else list(layers)
    unknown = [n for n in names if n not in meta]
    if unknown:
        raise FmtlabError(f"no layer(s) {unknown[:3]} in trace {tr.path}")
    by_input: dict[str, np.ndarray] = {}
    out = {}
    for name in names:
        inp = meta[name].get("input")
        if inp is None:
            raise FmtlabError(f"layer {name} has no recorded input in trace {tr.path}")
        if inp not in by_input:
            acc = HessianAccumulator(int(meta[name]["in_features"]))
            for piece in tr.pieces(inp):
                acc.add(piece)
            by_input[inp] = acc.hessian()
        out[name] = by_input[inp]
    return out


def calibration_key(model: str, calibration: Mapping[str, Any] | str) -> str:
    """A short stable key of (model identity, calibration data description): 16 hex digits of the
    SHA-256 of their canonical JSON."""
    blob = json.dumps({"model": model, "calibration": calibration}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class HessianCache:
    """Hessians on disk: ``<root>/<key>/<layer>.safetensors`` (one float64 tensor "hessian", metadata
    {"key", "layer", "rows"}). ``get`` returns (H, rows) or None; ``put`` writes atomically. A file
    whose metadata names another key or layer is treated as missing (and replaced on put)."""

    def __init__(self, root: str | os.PathLike, key: str):
        if not re.fullmatch(r"[0-9a-f]{16}", str(key)):
            raise FmtlabError(f"Hessian cache key must be 16 hex digits (calibration_key), got {key!r}")
        self.key = key
        self.dir = os.path.join(os.path.abspath(os.fspath(root)), key)

    def _path(self, layer: str) -> str:
        return os.path.join(self.dir, _SAFE.sub("_", layer) + ".safetensors")

    def get(self, layer: str) -> tuple[np.ndarray, int] | None:
        path = self._path(layer)
        if not os.path.exists(path):
            return None
        f = SafetensorsFile(path)
        try:
            md = f.metadata or {}
            if md.get("key") != self.key or md.get("layer") != layer or "hessian" not in f.entries:
                return None
            return np.array(f.get("hessian"), dtype=np.float64), int(md["rows"])
        finally:
            f.close()

    def put(self, layer: str, H: np.ndarray, rows: int) -> None:
        os.makedirs(self.dir, mode=dir_mode(), exist_ok=True)
        # atomic rename: concurrent writers of one key write the same numbers; the last one wins
        write_safetensors(self._path(layer), {"hessian": np.ascontiguousarray(H, np.float64)},
                          {"key": self.key, "layer": layer, "rows": str(int(rows))})
