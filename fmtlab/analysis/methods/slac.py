"""Claim "slac": sequence-length-aware calibration (Lee et al. 2023, the dINT / AQAS paper).

Static W8A8-style activation scales (weights in float, to isolate the activation calibration;
INT8 per-tensor activations with the 99.99th-percentile rule, :data:`ACTIVATIONS`) are calibrated
at the lengths :data:`LENGTHS` (those <= 2 x the target and within the model's context) on a
fixed calibration token budget (``ctx.n_calib`` windows of the longest length), and each is scored
at the target length ``ctx.seq_len`` on ``ctx.n_eval`` evaluation windows
(:func:`fmtlab.sim.slac.slac_curve`). The percentile rule is the one whose per-sequence statistic
depends on the share of the first token's outliers, i.e. on the length; absmax would take the
same maximum at every length.

Verdict: reproduced when calibrating at the target length is best: no other length has a lower
perplexity with a paired interval (vs the target length) below zero, and the shortest length is
worse with an interval above zero. Otherwise not reproduced (the curve is flat within its
intervals, or another length wins).
"""

from __future__ import annotations

import time

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim

__all__ = ["run", "PAPER", "STATEMENT", "LENGTHS", "ACTIVATIONS"]

PAPER = ("Lee et al. 2023, \"Enhancing Computation Efficiency in Large Language Models through Weight and "
         "Activation Quantization\" (AQAS, SLAC, dINT)")
STATEMENT = ("Calibrating static quantization parameters at the target task's sequence length (SLAC) gives "
             "lower error than calibrating at a mismatched length.")
LENGTHS = (16, 32, 64, 128, 256)
ACTIVATIONS = "int8_per_tensor_p99.99"


@register_claim("slac", "SLAC", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.sim.slac import slac_curve

    t0 = time.perf_counter()
    target = int(ctx.seq_len)
    limit = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None) or 10 ** 9
    lens = sorted({L for L in LENGTHS if L <= 2 * target and L <= limit} | {target})
    if ctx.quick:
        lens = sorted({lens[0], target})
    rows = slac_curve(ctx.model, ctx.tokenizer, list(ctx.calib_texts), list(ctx.eval_texts), lengths=lens,
                      target_len=target, calib_tokens=ctx.n_calib * lens[-1], n_eval=ctx.n_eval,
                      activations=ACTIVATIONS, seed=ctx.seed)
    others = [r for r in rows if r["calib_len"] != target]
    better_elsewhere = [r["calib_len"] for r in others if r["d_hi"] < 0]
    shortest = rows[0]
    ok = not better_elsewhere and shortest["calib_len"] != target and shortest["d_lo"] > 0
    measured = (f"target length {target}, {ACTIVATIONS} static activations, weights FP32; perplexity by calibration "
                "length: " + "; ".join(
                    f"L={r['calib_len']} ({r['n_calib_sequences']} seq) {r['ppl']:.3f} [{r['ppl_lo']:.3f}, "
                    f"{r['ppl_hi']:.3f}], minus L={target}: {r['d_ppl']:+.3f} [{r['d_lo']:+.3f}, {r['d_hi']:+.3f}]"
                    for r in rows))
    if ok:
        reason = (f"calibrating at L={target} is best within the paired intervals and the shortest length "
                  f"L={shortest['calib_len']} is worse (interval above zero)")
    elif better_elsewhere:
        reason = f"calibration at L={better_elsewhere} beats the target length (paired interval below zero)"
    else:
        reason = "the perplexity does not depend on the calibration length beyond its intervals"
    return ClaimResult("slac", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason,
                       {"rows": rows, "activations": ACTIVATIONS, "target_len": target}, time.perf_counter() - t0)
