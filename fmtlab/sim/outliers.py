"""Massive activations: the few huge values of the residual stream.

"Massive Activations in Large Language Models" (Sun et al., 2024) finds a handful of residual-stream
values about 10^3-10^4 times the median magnitude, at fixed feature channels and at the first token
or delimiter tokens, acting like biases (attention sinks). :func:`massive_activations` lists them
from a trace recorded with ``residual=True``; each row has ``layer`` (block index), ``tensor``,
``token`` (position in its sequence), ``sequence``, ``token_str``, ``channel``, ``value`` (signed),
``abs`` and ``ratio`` (|value| / median |x| of that layer's residual tensor).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from fmtlab.errors import TraceError
from fmtlab.sim.trace import Trace, open_trace


def massive_activations(trace: Trace | str, *, top_k: int = 4, min_ratio: float = 100.0,
                        min_abs: float = 0.0, kind: str = "residual") -> list[dict[str, Any]]:
    """Largest |x| of each recorded ``kind`` tensor with ratio >= ``min_ratio`` and |x| >= ``min_abs``.

    Up to ``top_k`` values per layer, largest first within a layer; layers in block order. The
    paper's criterion is |x| > 100 and about 1000x the median: pass ``min_abs=100, min_ratio=1000``.
    Raises TraceError when the trace holds no tensor of ``kind``.
    """
    tr = open_trace(trace)
    acts = [(n, i) for n, i in tr.activations.items() if i["kind"] == kind]
    if not acts:
        raise TraceError(f"trace {tr.path} has no {kind!r} tensors; record with residual=True (--residual)")
    seq_len = int(tr.manifest.get("seq_len") or 0)
    vocab = tr.manifest.get("vocab", {})
    ids = tr.tensor("tokens:input_ids").reshape(-1) if "tokens:input_ids" in tr.manifest["tensors"] else None
    rows: list[dict[str, Any]] = []
    for name, info in acts:
        x = tr.tensor(info["tensor"])
        x = x.reshape(-1, x.shape[-1])
        a = np.abs(x)
        med = float(np.median(a))
        k = min(top_k, a.size)
        flat = np.argpartition(a.reshape(-1), a.size - k)[a.size - k:]
        flat = flat[np.argsort(-a.reshape(-1)[flat], kind="stable")]
        for f in flat:
            r, c = divmod(int(f), x.shape[1])
            v = float(x[r, c])
            ratio = abs(v) / med if med > 0 else float("inf")
            if ratio < min_ratio or abs(v) < min_abs:
                continue
            tok_id = int(ids[r]) if ids is not None and r < ids.size else None
            rows.append({
                "layer": info.get("block"), "tensor": name,
                "token": r % seq_len if seq_len else r, "sequence": r // seq_len if seq_len else 0,
                "token_id": tok_id, "token_str": vocab.get(str(tok_id)) if tok_id is not None else None,
                "channel": c, "value": v, "abs": abs(v), "median_abs": med, "ratio": ratio,
            })
    return rows


def summarize_massive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which channels and token positions carry the massive activations, and the largest one."""
    if not rows:
        return {"count": 0}
    top = max(rows, key=lambda r: r["ratio"])
    return {
        "count": len(rows),
        "layers": sorted({r["layer"] for r in rows if r["layer"] is not None}),
        "channels": Counter(r["channel"] for r in rows).most_common(),
        "positions": Counter(r["token"] for r in rows).most_common(),
        "tokens": Counter(r["token_str"] for r in rows).most_common(5),
        "max": {k: top[k] for k in ("layer", "token", "token_str", "channel", "value", "ratio")},
    }
