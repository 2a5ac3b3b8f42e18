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
import sys
import types
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
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``replay`` is also a submodule name: importing the submodule makes Python set the package
    attribute to the module, which would shadow the function export. The package keeps
    ``fmtlab.sim.replay`` the function in every import order (the submodule stays in sys.modules),
    without importing replay (and numba) when the package loads: ``fmtlab --help`` stays light."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "replay" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
