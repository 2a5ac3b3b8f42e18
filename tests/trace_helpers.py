"""Small synthetic traces for the replay-side tests (no model run)."""

from __future__ import annotations

import numpy as np

from fmtlab.sim.trace import TraceWriter


def make_trace(path: str, seed: int, seq_len: int = 32, n_seq: int = 2, k: int = 64, n: int = 48,
               blocks: int = 2) -> str:
    """A trace of ``blocks`` x (q, k sharing one input; down with its own input), Gaussian inputs with
    two outlier channels; rows are tokens of ``n_seq`` sequences."""
    rng = np.random.default_rng(seed)
    t = seq_len * n_seq
    wr = TraceWriter(path)
    layers = {}
    for b in range(blocks):
        x = rng.standard_normal((t, k)).astype(np.float32)
        x[:, :2] *= 30
        wr.add(f"b{b}.attn:input", x)
        x2 = rng.standard_normal((t, k)).astype(np.float32)
        wr.add(f"b{b}.down:input", x2)
        for nm, inp in (("q", "attn"), ("k", "attn"), ("down", "down")):
            name = f"b{b}.{nm}"
            wr.add(f"{name}:weight", (rng.standard_normal((n, k)) * 0.05).astype(np.float32))
            layers[name] = {"op": "linear", "type": nm, "block": b, "in_features": k, "out_features": n,
                            "input": f"b{b}.{inp}:input", "weight": f"{name}:weight"}
    wr.close({"seq_len": seq_len, "n_tokens": t, "n_sequences": n_seq, "layers": layers})
    return path
