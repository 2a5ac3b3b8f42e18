"""The report's source-grid table: stored types per tensor group and grid-reproducing weight results."""

from __future__ import annotations

import numpy as np

from fmtlab.analysis.source_grid_section import _sampled_layers, source_grid_rows


class _Trace:
    def __init__(self, weights: dict[str, np.ndarray], types: dict[str, str]):
        self.layers = {n: {"weight": n + ":weight"} for n in weights}
        self._w = {n + ":weight": w for n, w in weights.items()}
        self.manifest = {"source_grid": {"file": "m.gguf", "types": types}}

    def tensor(self, name):
        return self._w[name]


def _on_int4_grid(rng, rows=16, cols=64):
    codes = rng.integers(-7, 8, size=(rows, cols)).astype(np.float32)
    codes[:, 0] = 7  # every row reaches the absmax code, so absmax/7 is the row's scale exactly
    return codes * np.float32(0.125)  # a power-of-two scale: exact in float32


def test_int4_grid_is_reproduced_by_int4_per_channel_only():
    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(5)]
    tr = _Trace({n: _on_int4_grid(rng) for n in names}, {n: "Q4_0" for n in names})
    rows = source_grid_rows(tr, {"w4": "int4_per_channel", "w8": "int8_per_channel", "fp32": None,
                                 "w4b": "int4_per_channel"})
    by = {r["weights"]: r for r in rows}
    assert set(by) == {"int4_per_channel", "int8_per_channel"}  # identity skipped, duplicates merged
    assert by["int4_per_channel"]["configs"] == "w4 w4b"
    assert by["int4_per_channel"]["reproduced_share"] == 1.0 and by["int4_per_channel"]["grid_reproducing"]
    assert by["int4_per_channel"]["stored_types"] == "Q4_0" and by["int4_per_channel"]["sampled_layers"] == 3
    # int8 per channel: step absmax/127 holds int4's k * absmax/7 only for k in {0, +-7}
    share = by["int8_per_channel"]["reproduced_share"]
    assert 0.15 < share < 0.35 and not by["int8_per_channel"]["grid_reproducing"]


def test_sampled_layers_are_first_middle_last_per_group():
    tr = _Trace({f"b.{i}.q_proj": np.zeros((2, 2), np.float32) for i in range(7)}, {})
    assert _sampled_layers(tr) == {"q_proj": ["b.0.q_proj", "b.3.q_proj", "b.6.q_proj"]}
