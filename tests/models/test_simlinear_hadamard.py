"""SimLinear's Hadamard shortcut (W R and its quantization once per layer, X R per sequence) gives
the same layer output, bit for bit, as the transform's full decomposition per sequence."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.models.perplexity import SimLinear
from fmtlab.sim.quant import resolve
from fmtlab.sim.transform_base import Context
from fmtlab.sim.transforms import get_transform


@pytest.mark.parametrize("wq,aq", [("int8_per_channel", "int8_per_tensor"), ("mxfp4", "mxfp4")])
def test_hadamard_shortcut_equals_decomposition(wq, aq):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 64)) * 0.05).astype(np.float32)
    ft = get_transform("hadamard")
    lin = SimLinear(w, None, ft, resolve(aq), resolve(wq), np.float16, "l")
    for seed in (1, 2):  # the second sequence reuses the cached W' codes
        xs = np.random.default_rng(seed).standard_normal((16, 64)).astype(np.float32)
        xs[:, 3] *= 30
        got = lin._seq(xs)
        d = ft.decompose(xs, w, Context(positions=np.arange(16), act_q=resolve(aq), weight_q=resolve(wq)))
        want = d.output(xq=resolve(aq)(d.x), wq=resolve(wq)(d.w), hp_dtype=np.float16)
        np.testing.assert_array_equal(np.asarray(got), want)
