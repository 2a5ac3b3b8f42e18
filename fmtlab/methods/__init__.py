"""fmtlab.methods: the papers' interventions, each a change made to a model before it is measured.

CushionCache's KV prefix (:mod:`~fmtlab.methods.cushion`), SLAC (:mod:`~fmtlab.methods.slac`),
massive activations as biases (:mod:`~fmtlab.methods.massive`), FPTQuant's function-preserving
transforms (:mod:`~fmtlab.methods.fptquant`, :mod:`~fmtlab.methods.fptquant_quant`).

Model variants (:mod:`~fmtlab.methods.variants`): the protocol (fit on calibration data, apply to a
copy, describe) and its registry keyed on config types; the built-in variants register on import of
this package: ``+cushion`` (:mod:`~fmtlab.methods.cushion_variant`) and ``+fptquant``
(:mod:`~fmtlab.methods.fptquant_variant`), ``+kv`` (:mod:`~fmtlab.methods.kv_cache_variant`) and
``+attn`` (:mod:`~fmtlab.methods.attention_variant`), ``+gptq`` / ``+awq``
(:mod:`~fmtlab.methods.weight_fit_variant`; GPTQ / AWQ weights, :mod:`~fmtlab.methods.gptq`).

Sits above :mod:`fmtlab.models` (loading, recording, perplexity) and :mod:`fmtlab.pytorch`;
below explore and analysis.
"""

from fmtlab.methods import cushion_variant, fptquant_variant  # noqa: F401 - registers the built-in variants
from fmtlab.methods import attention_variant, kv_cache_variant  # noqa: F401,E402 - +kv, +attn (issue 24)
from fmtlab.methods import weight_fit_variant  # noqa: F401,E402 - +gptq, +awq (issue 20)
