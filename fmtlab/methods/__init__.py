"""fmtlab.methods: the papers' interventions, each a change made to a model before it is measured.

CushionCache's KV prefix (:mod:`~fmtlab.methods.cushion`), SLAC (:mod:`~fmtlab.methods.slac`),
massive activations as biases (:mod:`~fmtlab.methods.massive`), FPTQuant's function-preserving
transforms (:mod:`~fmtlab.methods.fptquant`, :mod:`~fmtlab.methods.fptquant_quant`).

Sits above :mod:`fmtlab.models` (loading, recording, perplexity) and :mod:`fmtlab.pytorch`;
below explore and analysis.
"""
