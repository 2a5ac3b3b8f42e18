"""Claim ``massive``: massive activations act as biases (Sun et al. 2024).

Measured on the context's model: :func:`fmtlab.methods.massive.find_massive` on the calibration windows
(the paper's criterion |x| >= 100 and >= 1000x the median) gives the first block whose output
carries massive activations and their channels; on the evaluation windows, perplexity of the
float model, with those entries set to their calibration mean, and set to zero
(:func:`fmtlab.methods.massive.massive_intervention`), with paired bootstrap intervals.

Verdict (our thresholds): reproduced when the mean keeps perplexity within 5% of FP32 and zero
multiplies it at least 10x with a paired interval excluding zero; not applicable when the model
has no massive activation or the evaluation windows never hit the site.
"""

from __future__ import annotations

import time

import numpy as np

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.methods.massive import find_massive, massive_intervention
from fmtlab.sim import stats as S

PAPER = "Sun et al. 2024, \"Massive Activations in Large Language Models\""
STATEMENT = ("Massive activations act as fixed biases: setting them to their mean over many sequences keeps "
             "perplexity, setting them to zero destroys it.")


def _ppl(model, ids):
    from fmtlab.pytorch.perplexity import evaluate_perplexity  # lazy: imports torch

    r = evaluate_perplexity(model, ids, progress=False, batch_size=4)
    return np.asarray(r.seq_nll, dtype=np.float64), np.full(len(r.seq_nll), ids.shape[1] - 1, dtype=np.float64)


@register_claim("massive", "Massive activations as biases", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.pytorch.perplexity import token_windows_of  # lazy: imports torch

    t0 = time.perf_counter()
    model, tok = ctx.model, ctx.tokenizer
    sites = find_massive(model, tok, list(ctx.calib_texts), seq_len=ctx.seq_len, n_sequences=ctx.n_calib)
    if sites is None:
        return ClaimResult("massive", "no residual value >= 100 and >= 1000x its layer's median in calibration",
                           Verdict.NOT_APPLICABLE, "the model has no massive activations by the paper's criterion",
                           {}, time.perf_counter() - t0)
    ev = token_windows_of(list(ctx.eval_texts), tok, ctx.seq_len, ctx.n_eval)
    fp = _ppl(model, ev)
    arms = {}
    hits = {}
    for mode in ("mean", "zero"):
        with massive_intervention(model, sites, mode) as st:
            arms[mode] = _ppl(model, ev)
        hits[mode] = st["replaced"]
    site = (f"block {sites.block} ({sites.block_name}), channels {list(sites.channels)}, calibration positions "
            f"{sorted(sites.positions)}, mean {[round(m, 1) for m in sites.means]}, up to {sites.ratio:.0f}x the median")
    if hits["mean"] == 0:
        return ClaimResult("massive", f"site {site}; no evaluation entry reached the detection threshold",
                           Verdict.NOT_APPLICABLE, "the evaluation windows never carry the massive activations",
                           {"block": sites.block, "channels": list(sites.channels)}, time.perf_counter() - t0)
    iv = {"fp32": S.bootstrap(S.perplexity_of, *fp, seed=ctx.seed)}
    for mode, a in arms.items():
        iv[mode] = S.bootstrap(S.perplexity_of, *a, seed=ctx.seed)
    d_mean = S.paired_difference(S.perplexity_of, arms["mean"], fp, seed=ctx.seed)
    d_zero = S.paired_difference(S.perplexity_of, arms["zero"], fp, seed=ctx.seed)
    base = iv["fp32"].value
    keeps = abs(iv["mean"].value / base - 1.0) <= 0.05
    destroys = iv["zero"].value >= 10 * base and d_zero.excludes_zero
    verdict = Verdict.REPRODUCED if keeps and destroys else Verdict.NOT_REPRODUCED
    measured = (f"site {site}; {hits['mean']} eval entries replaced; perplexity FP32 {iv['fp32'].text()}, "
                f"mean {iv['mean'].text()} (diff {d_mean.value:+.3f} [{d_mean.lo:+.3f}, {d_mean.hi:+.3f}]), "
                f"zero {iv['zero'].text()} (diff {d_zero.value:+.1f} [{d_zero.lo:+.1f}, {d_zero.hi:+.1f}])")
    reason = (("mean keeps perplexity within 5%" if keeps else "mean moves perplexity by more than 5%")
              + "; " + ("zero multiplies it >= 10x (interval excludes zero)" if destroys else
                        f"zero multiplies it only {iv['zero'].value / base:.2f}x")
              + f". Sites from {ctx.n_calib} x {ctx.seq_len} calib tokens, scored on {ctx.n_eval} x {ctx.seq_len} "
              "eval tokens; an entry is massive when |x| >= half the smallest massive |x| of its channel in calibration.")
    numbers = {"block": sites.block, "channels": list(sites.channels), "means": list(sites.means),
               "thresholds": list(sites.thresholds), "positions": {str(k): v for k, v in sites.positions.items()},
               "replaced": hits, **{f"ppl_{k}": _iv(v) for k, v in iv.items()},
               "diff_mean": _iv(d_mean), "diff_zero": _iv(d_zero)}
    return ClaimResult("massive", measured, verdict, reason, numbers, time.perf_counter() - t0)


def _iv(iv: S.Interval) -> dict[str, float]:
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "n_sequences": iv.n_sequences}
