"""fmtlab.models: the torch model side. Loading the embedded models offline, recording their
activations into traces, perplexity of a model under replay configs.

Sits above :mod:`fmtlab.sim` (traces, replay) and :mod:`fmtlab.pytorch` (the fake-quant plug-in,
the KV prefix); below the papers' methods, explore and analysis.

Public API::

    from fmtlab.models import load_default_model, load_model, record, perplexity, perplexity_table
"""

from __future__ import annotations

from fmtlab.models.loading import cache_dir, load_default_model, load_model
from fmtlab.models.perplexity import perplexity, perplexity_table
from fmtlab.models.record import record

__all__ = ["cache_dir", "load_default_model", "load_model", "perplexity", "perplexity_table", "record"]
