"""fmtlab.sim: record real model activations, replay them through number formats, measure errors.

Public API (imported lazily so that ``import fmtlab.sim`` stays light)::

    from fmtlab.sim import (load_default_model, load_model, default_texts, record, Trace,
                            replay, ReplayConfig, PRESETS, massive_activations, perplexity)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_default_model": "fmtlab.sim.models", "load_model": "fmtlab.sim.models",
    "cache_dir": "fmtlab.sim.models",
    "default_texts": "fmtlab.sim.data", "token_windows": "fmtlab.sim.data",
    "record": "fmtlab.sim.record",
    "Trace": "fmtlab.sim.trace", "TraceWriter": "fmtlab.sim.trace", "open_trace": "fmtlab.sim.trace",
    "replay": "fmtlab.sim.replay", "ReplayConfig": "fmtlab.sim.replay", "ReplayResult": "fmtlab.sim.replay",
    "PRESETS": "fmtlab.sim.replay", "E2E_CONFIGS": "fmtlab.sim.replay", "make_config": "fmtlab.sim.replay",
    "massive_activations": "fmtlab.sim.outliers", "summarize_massive": "fmtlab.sim.outliers",
    "perplexity": "fmtlab.sim.perplexity", "perplexity_table": "fmtlab.sim.perplexity",
    "get_transform": "fmtlab.sim.transforms",
    "error_stats": "fmtlab.sim.metrics", "outlier_stats": "fmtlab.sim.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fmtlab.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


# ``record``, ``replay`` and ``perplexity`` are also submodule names: once a submodule is imported, Python sets
# the package attribute to the module, which would shadow the lazy function export above. Binding
# the functions eagerly (their modules import only numpy and fmtlab) keeps
# ``from fmtlab.sim import record`` the function in every import order.
from fmtlab.sim.perplexity import perplexity, perplexity_table  # noqa: E402
from fmtlab.sim.record import record  # noqa: E402
from fmtlab.sim.replay import replay  # noqa: E402
