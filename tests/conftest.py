"""Project-wide test configuration: a deterministic hypothesis profile, and the fixtures several test
folders share (the embedded SmolLM2 model, small synthetic traces).

Profiles (select with FMTLAB_HYPOTHESIS_PROFILE=<name>):
- "fmtlab" (default): derandomize=True (the same examples on every run and machine, no example
  database), modest max_examples, no deadline (2 shared cores; numba compiles on first call);
- "thorough": 10x the examples, randomized, for an occasional deeper local run.
Tests that need a different number of examples say so with their own @settings.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fmtlab", derandomize=True, database=None, max_examples=100, **_COMMON)
settings.register_profile("thorough", derandomize=False, max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("FMTLAB_HYPOTHESIS_PROFILE", "fmtlab"))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2 model, loaded once per session. The first load on a machine converts the
    shipped GGUF (~25 s) and caches fp32 safetensors in ``$FMTLAB_CACHE`` (default ~/.cache/fmtlab);
    later sessions load the cache in a few seconds."""
    import torch  # lazy: only the tests that use the model pay for torch

    from fmtlab.models.loading import load_default_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_default_model("smollm2")


@pytest.fixture(scope="session")
def traces(tmp_path_factory):
    """(evaluation, calibration) paths of two small synthetic traces (trace_helpers.make_trace)."""
    from trace_helpers import make_trace

    d = tmp_path_factory.mktemp("traces")
    return make_trace(os.path.join(d, "eval"), 1), make_trace(os.path.join(d, "calib"), 2)
