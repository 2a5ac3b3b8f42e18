"""fmtlab.sim: the numpy replay core. Traces on disk, replay of recorded activations through
number formats, error metrics, bootstrap statistics, outlier transforms, the Dask executor.

This layer imports numpy, ``fmtlab.formats`` and the shared helpers only: no torch, no model.
Recording a model and perplexity live one floor up, in :mod:`fmtlab.models`.

Public API (imported lazily so that ``import fmtlab.sim`` stays light)::

    from fmtlab.sim import (default_texts, Trace, open_trace, replay, ReplayConfig, PRESETS,
                            massive_activations, get_transform, error_stats)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "default_texts": "fmtlab.sim.data", "token_windows": "fmtlab.sim.data",
    "Trace": "fmtlab.sim.trace", "TraceWriter": "fmtlab.sim.trace", "open_trace": "fmtlab.sim.trace",
    "replay": "fmtlab.sim.replay", "ReplayConfig": "fmtlab.sim.replay", "ReplayResult": "fmtlab.sim.replay",
    "PRESETS": "fmtlab.sim.replay", "E2E_CONFIGS": "fmtlab.sim.replay", "make_config": "fmtlab.sim.replay",
    "massive_activations": "fmtlab.sim.outliers", "summarize_massive": "fmtlab.sim.outliers",
    "get_transform": "fmtlab.sim.transforms",
    "error_stats": "fmtlab.sim.metrics", "outlier_stats": "fmtlab.sim.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fmtlab.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


# ``replay`` is also a submodule name: once the submodule is imported, Python sets the package
# attribute to the module, which would shadow the lazy function export above. Binding the function
# eagerly (its module imports only numpy and fmtlab) keeps ``from fmtlab.sim import replay`` the
# function in every import order.
from fmtlab.sim.replay import replay  # noqa: E402
