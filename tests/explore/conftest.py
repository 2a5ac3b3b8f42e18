"""Fixtures for tests/explore: small design spaces (the synthetic traces are tests/conftest.py's `traces`)."""

from __future__ import annotations

import pytest

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
