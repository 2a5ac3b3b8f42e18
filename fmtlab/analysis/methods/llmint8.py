"""Claim ``llmint8``: outlier features emerge with scale (Dettmers et al. 2022, LLM.int8(), sec. 4).

Measured on the context's model with :func:`fmtlab.methods.outlier_features.outlier_feature_stats`
on the calibration windows: the outlier features by the paper's criteria (|x| >= 6 in >= 25% of
the analysed hidden states and >= 6% of positions), the share of hidden states and of token
positions they affect, and the largest magnitude seen.

Verdict (our reading of the emergence claim for one model): the paper places the jump between
6B (65% of layers, 35% of positions affected) and 6.7B (100% / 75%). Below 6B parameters the
claim is reproduced when the model stays at or below the 6B figures; at or above 6.7B, when it
reaches 100% / 75%; in between, either side is consistent. A model that exceeds the 6B figures
while much smaller has its outliers earlier than the paper's OPT-family models: not reproduced,
and the reason says so. Run it on several models (``--model``) to see the trend.
"""

from __future__ import annotations

import time

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.methods.outlier_features import outlier_feature_stats

PAPER = ("Dettmers, Lewis, Belkada, Zettlemoyer 2022, \"LLM.int8(): 8-bit Matrix Multiplication for "
         "Transformers at Scale\"")
STATEMENT = ("Outlier features (|x| >= 6 in >= 25% of layers and >= 6% of positions) emerge with scale: "
             "65% of layers and 35% of positions affected at 6B parameters, 100% and 75% at 6.7B.")

_BELOW = (0.65, 0.35)  # layers, positions affected at 6B [paper, Fig. 3a / sec. 4.1]
_ABOVE = (1.00, 0.75)  # at 6.7B


@register_claim("llmint8", "LLM.int8() outlier features", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    t0 = time.perf_counter()
    st = outlier_feature_stats(ctx.model, ctx.tokenizer, list(ctx.calib_texts), seq_len=ctx.seq_len,
                               n_sequences=ctx.n_calib)
    size = st.n_params / 1e9
    measured = (f"{size:.2f}B parameters: {len(st.features)} outlier feature(s) {list(st.features)[:8]}; "
                f"{100 * st.layer_share:.0f}% of {st.n_hidden_states} analysed hidden states and "
                f"{100 * st.position_share:.1f}% of token positions affected; max |x| {st.max_abs:.1f}")
    if size < 6.0:
        ok = st.layer_share <= _BELOW[0] and st.position_share <= _BELOW[1]
        reason = ("below 6B the paper expects at most 65% of layers / 35% of positions: "
                  + ("the model stays below" if ok else "the model exceeds them: its outliers emerge earlier than in "
                     "the paper's OPT-family models"))
    elif size >= 6.7:
        ok = st.layer_share >= _ABOVE[0] and st.position_share >= _ABOVE[1]
        reason = "at 6.7B and above the paper expects 100% of layers / 75% of positions"
    else:
        ok, reason = True, "between 6B and 6.7B the paper's jump happens; either side is consistent"
    reason += (f". {ctx.n_calib} x {ctx.seq_len} calibration tokens; inputs of the attention and FFN-expansion "
               "projections (the paper's analysis).")
    numbers = {"n_params": st.n_params, "features": list(st.features), "layer_share": st.layer_share,
               "position_share": st.position_share, "max_abs": st.max_abs, "n_hidden_states": st.n_hidden_states,
               "n_positions": st.n_positions}
    return ClaimResult("llmint8", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason, numbers,
                       time.perf_counter() - t0)
