"""Claim "slac": sequence-length-aware calibration (Lee et al. 2023, the dINT / AQAS paper).

Static per-tensor INT8 activation scales are calibrated at the lengths :data:`LENGTHS` (those <=
2 x the target and within the model's context, plus the target) on a fixed calibration token
budget (``ctx.n_calib`` windows of the longest length), and every calibration is scored at the
target length ``ctx.seq_len`` on ``ctx.n_eval`` evaluation windows with the layer-wise variant
:func:`fmtlab.methods.slac.slac_sqnr_curve` (pooled layer-output SQNR of all Linear layers, weights in
float, intervals over evaluation windows, differences paired against calibration at the target
length). Two scale rules: the 99.99th percentile (:data:`PRIMARY`), whose per-sequence statistic
sees the first token's outliers in a share that depends on the length, and absmax as the control
(the max over the same calibration tokens hardly depends on how they are cut into windows).

Verdict (on the primary rule): reproduced when calibrating at the target length is best (no other
length has a higher SQNR with a paired interval above zero) and the shortest length is worse
(interval below zero); otherwise not reproduced.
"""

from __future__ import annotations

import time

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.methods.slac import slac_sqnr_curve

__all__ = ["run", "PAPER", "STATEMENT", "LENGTHS", "PRIMARY", "CONTROL"]

PAPER = ("Lee et al. 2023, \"Enhancing Computation Efficiency in Large Language Models through Weight and "
         "Activation Quantization\" (AQAS, SLAC, dINT)")
STATEMENT = ("Calibrating static quantization parameters at the target task's sequence length (SLAC) gives "
             "lower error than calibrating at a mismatched length.")
LENGTHS = (16, 32, 64, 128, 256)
PRIMARY = "int8_per_tensor_p99.99"
CONTROL = "int8_per_tensor"


def _outcome(rows, target):
    others = [r for r in rows if r["calib_len"] != target]
    better = [r["calib_len"] for r in others if r["d_lo"] > 0]
    shortest = rows[0]
    ok = not better and shortest["calib_len"] != target and shortest["d_hi"] < 0
    return ok, better, shortest


@register_claim("slac", "SLAC", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    t0 = time.perf_counter()
    target = int(ctx.seq_len)
    limit = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None) or 10 ** 9
    lens = sorted({L for L in LENGTHS if L <= 2 * target and L <= limit} | {target})
    if ctx.quick:
        lens = sorted({lens[0], target})
    rows = slac_sqnr_curve(ctx.model, ctx.tokenizer, list(ctx.calib_texts), list(ctx.eval_texts), lengths=lens,
                           target_len=target, calib_tokens=ctx.n_calib * lens[-1], n_eval=ctx.n_eval,
                           activations=(PRIMARY, CONTROL), seed=ctx.seed)
    by = {a: [r for r in rows if r["activations"] == a] for a in (PRIMARY, CONTROL)}
    parts = []
    for a, rs in by.items():
        parts.append(f"{a}: " + "; ".join(
            f"L={r['calib_len']} {r['sqnr_db']:.2f} [{r['sqnr_lo']:.2f}, {r['sqnr_hi']:.2f}] dB "
            f"(minus L={target}: {r['d_sqnr_db']:+.2f} [{r['d_lo']:+.2f}, {r['d_hi']:+.2f}])" for r in rs))
    measured = (f"pooled layer-output SQNR at target length {target} ({ctx.n_eval} windows), static per-tensor INT8 "
                f"activations, FP32 weights, {ctx.n_calib * lens[-1]} calibration tokens per length. "
                + " | ".join(parts))
    ok, better, shortest = _outcome(by[PRIMARY], target)
    c_ok, c_better, _ = _outcome(by[CONTROL], target)
    control = (f"control {CONTROL}: " + ("same pattern" if c_ok else
               f"L={c_better} better" if c_better else "flat or mixed within the intervals"))
    if ok:
        reason = (f"{PRIMARY}: calibrating at L={target} is best within the paired intervals and the shortest "
                  f"length L={shortest['calib_len']} is worse (interval below zero); {control}")
    elif better:
        reason = f"{PRIMARY}: calibration at L={better} beats the target length (paired interval above zero); {control}"
    else:
        reason = f"{PRIMARY}: the error does not depend on the calibration length beyond its intervals; {control}"
    return ClaimResult("slac", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason,
                       {"rows": rows, "target_len": target, "lengths": lens}, time.perf_counter() - t0)
