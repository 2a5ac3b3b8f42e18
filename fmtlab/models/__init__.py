"""fmtlab.models: the torch model side. Loading the embedded models offline, recording their
activations into traces, perplexity of a model under replay configs.

Sits above :mod:`fmtlab.sim` (traces, replay) and :mod:`fmtlab.pytorch` (the fake-quant plug-in,
the KV prefix); below the papers' methods, explore and analysis.

Public API (resolved on first use: every module here imports torch, and ``fmtlab --help`` imports
this package through :mod:`fmtlab.models.cli`)::

    from fmtlab.models import cache_dir, load_default_model, load_model, perplexity_table
    from fmtlab.models.record import record            # ``record`` and ``perplexity`` are also
    from fmtlab.models.perplexity import perplexity    # submodule names, so they are not package names
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cache_dir", "load_default_model", "load_model", "perplexity_table"]

_HOME = {"cache_dir": "loading", "load_default_model": "loading", "load_model": "loading",
         "perplexity_table": "perplexity"}


def __getattr__(name: str) -> Any:
    # lazy: every module here imports torch; `fmtlab --help` imports this package (fmtlab.models.cli)
    if name in _HOME:
        return getattr(importlib.import_module(f"fmtlab.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fmtlab.models' has no attribute {name!r}")
