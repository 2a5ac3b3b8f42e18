"""Fixtures for tests/sim: the embedded SmolLM2 model, loaded once per session.

The first load on a machine converts the shipped GGUF (~25 s) and caches fp32 safetensors in
``$FMTLAB_CACHE`` (default ~/.cache/fmtlab); later sessions load the cache in a few seconds.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    import torch

    from fmtlab.models.loading import load_default_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_default_model("smollm2")
