"""Claim "dint_optq": the dINT paper's W4A8 recipe, AQAS + dINT4 + OPTQ, stays close to float.

Lee et al. 2023 (the dINT / AQAS paper) report W4A8 results as "AQAS + dINT4 + OPTQ" within 1.0
WikiText perplexity of FP16 on OPT / LLaMA. Measured here on the context's model, perplexity of

* ``fp32``;
* ``w4a8_dint_aqas`` (AQAS scales, dINT4 per-channel weights rounded to nearest, INT8 per-token
  activations) and ``w4a8_dint_aqas+gptq`` (the same AQAS scales; the scaled weights W diag(s)
  GPTQ-fitted under dINT4 with the Hessian diag(1/s) H diag(1/s): the paper's combination);
* ``w4a8_dint_channel`` and ``w4a8_dint_channel+gptq`` (no AQAS: what AQAS adds under each weight
  method);

on ``ctx.n_eval`` evaluation windows, 95% bootstrap intervals over sequences, differences paired.
Calibration (disjoint "calib" texts only): AQAS scales on a trace of ``ctx.n_calib`` windows (as
the RTN config), GPTQ Hessians on :data:`N_HESSIAN` windows (``ctx.n_calib`` in quick mode) of
``ctx.seq_len`` tokens. Verdict: reproduced when the excess perplexity of AQAS + dINT4 + GPTQ over
fp32 is at most :data:`MAX_EXCESS` (1.0) with the whole paired interval.
"""

from __future__ import annotations

import hashlib
import tempfile
import time

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.methods import variants as V
from fmtlab.sim import stats as S

__all__ = ["run", "PAPER", "STATEMENT", "CONFIGS", "MAX_EXCESS", "N_HESSIAN"]

PAPER = ("Lee et al. 2023, \"Enhancing Computation Efficiency in Large Language Models through Weight and "
         "Activation Quantization\" (AQAS, SLAC, dINT)")
STATEMENT = "W4A8 with AQAS, dINT4 weights and OPTQ (GPTQ) stays within 1.0 perplexity of float."
CONFIGS = ("fp32", "w4a8_dint_aqas", "w4a8_dint_aqas+gptq", "w4a8_dint_channel", "w4a8_dint_channel+gptq")
MAX_EXCESS = 1.0
#: calibration windows of the GPTQ Hessians (the report's 32 x 256 = 8192 tokens at seq_len 256)
N_HESSIAN = 32
FULL = "w4a8_dint_aqas+gptq"


def _rows(ctx: MethodsContext, configs, n_hessian: int, workdir: str):
    from fmtlab.models.perplexity import eval_windows, perplexity  # lazy: imports torch
    from fmtlab.models.record import record

    ids = eval_windows(ctx.tokenizer, ctx.seq_len, ctx.n_eval, list(ctx.eval_texts))
    cal = record(ctx.model, ctx.tokenizer, list(ctx.calib_texts), workdir, seq_len=ctx.seq_len,
                 n_sequences=ctx.n_calib, progress=False, overwrite=True, text_info={"split": "calib"})
    digest = hashlib.sha256("\0".join(ctx.calib_texts).encode()).hexdigest()[:16]
    calib = V.CalibData(f"texts:{digest}", tuple(ctx.calib_texts))
    cache = V.FitCache()
    out = {}
    for spec in configs:
        if "+" in spec:
            spec = f"{spec}(seq_len={ctx.seq_len},n_sequences={n_hessian})"
        cfg, v = V.parse_variant_config(spec)
        model, kw = ctx.model, {}
        if v is not None:
            ap = V.handler_for(v).apply(v, cache.get(v, ctx.model, ctx.tokenizer, calib).state, ctx.model)
            model, kw = ap.model, ap.perplexity_kw
        r = perplexity(model, ctx.tokenizer, cfg, ids=ids, calib=cal, progress=False, **kw)
        out[spec.split("(")[0]] = (r["seq_nll"], r["seq_tokens"])
    return out


@register_claim("dint_optq", "AQAS + dINT4 + OPTQ (W4A8)", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    t0 = time.perf_counter()
    configs = CONFIGS if not ctx.quick else ("fp32", "w4a8_dint_aqas", FULL)
    n_h = ctx.n_calib if ctx.quick else max(N_HESSIAN, ctx.n_calib)
    with tempfile.TemporaryDirectory(prefix="dint-optq-") as d:
        arms = _rows(ctx, configs, n_h, d + "/calib-trace")
    ivs = {c: S.bootstrap(S.perplexity_of, *arms[c], seed=ctx.seed) for c in configs}
    excess = S.paired_difference(S.perplexity_of, arms[FULL], arms["fp32"], seed=ctx.seed)
    d_gptq = S.paired_difference(S.perplexity_of, arms[FULL], arms["w4a8_dint_aqas"], seed=ctx.seed)
    ok = excess.hi <= MAX_EXCESS
    measured = (f"perplexity on {ctx.n_eval} x {ctx.seq_len}-token eval windows: "
                + "; ".join(f"{c} {ivs[c].text(2)}" for c in configs)
                + f". AQAS + dINT4 + GPTQ minus fp32: {excess.text(2)}; GPTQ minus RTN weights (both behind "
                f"AQAS): {d_gptq.text(2)}")
    if "w4a8_dint_channel+gptq" in arms:
        d_aqas = S.paired_difference(S.perplexity_of, arms[FULL], arms["w4a8_dint_channel+gptq"], seed=ctx.seed)
        measured += f"; AQAS minus none (both GPTQ): {d_aqas.text(2)}"
    measured += (f". Calibration: AQAS on {ctx.n_calib} windows, GPTQ Hessians on {n_h} windows of the calib texts; "
                 f"{time.perf_counter() - t0:.0f} s")
    reason = (f"AQAS + dINT4 + GPTQ is within {MAX_EXCESS:g} perplexity of fp32 (whole paired interval)" if ok else
              f"AQAS + dINT4 + GPTQ's excess perplexity over fp32 is {excess.text(2)}: its interval reaches above "
              f"{MAX_EXCESS:g} on this model")
    numbers = {"ppl": {c: [ivs[c].value, ivs[c].lo, ivs[c].hi] for c in configs},
               "excess_over_fp32": [excess.value, excess.lo, excess.hi],
               "gptq_minus_rtn": [d_gptq.value, d_gptq.lo, d_gptq.hi], "hessian_windows": n_h}
    return ClaimResult("dint_optq", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason,
                       numbers, time.perf_counter() - t0)
