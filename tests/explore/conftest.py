"""Fixtures for tests/explore: small synthetic traces (no model run) and small design spaces."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fmtlab.sim.trace import TraceWriter

SMALL_SPACE = """
name = "small"
objectives = ["pooled_out_sqnr_db", "area_um2"]
accumulators = ["auto"]
transforms = ["none"]
[weights]
granularity = ["channel", "group:32"]
[[weights.family]]
kind = "int"
bits = [4, 8]
[[weights.family]]
kind = "dint"
bits = [4]
[activations]
granularity = ["token", "tensor"]
[[activations.family]]
kind = "int"
bits = [8]
"""


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


@pytest.fixture(scope="session")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("explore_traces")
    return make_trace(os.path.join(d, "eval"), 1), make_trace(os.path.join(d, "calib"), 2)


@pytest.fixture
def small_space(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(SMALL_SPACE)
    return str(p)

MEDIUM_SPACE = """
name = "medium"
transforms = ["none", "hadamard"]
act_calib = ["dynamic", "absmax"]
[weights]
granularity = ["tensor", "channel", "group:32", "block:32"]
scale = ["fp32", "e8m0"]
[[weights.family]]
kind = "int"
bits = [3, 4, 8]
[[weights.family]]
kind = "dint"
bits = [4]
[[weights.family]]
kind = "minifloat"
exp = {min = 2, max = 3}
man = {min = 1, max = 2}
special = ["fin"]
[activations]
granularity = ["tensor", "token", "block:32"]
scale = ["fp32", "e8m0"]
[[activations.family]]
kind = "int"
bits = [8]
[[activations.family]]
kind = "table"
names = ["fp8_e4m3", "fp4_e2m1"]
"""


@pytest.fixture
def medium_space(tmp_path):
    p = tmp_path / "medium.toml"
    p.write_text(MEDIUM_SPACE)
    return str(p)
