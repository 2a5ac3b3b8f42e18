"""Claim ``fptquant``: FPTQuant brings static INT4 W4A4 / W4A8 much closer to float (van Breugel et al. 2025).

Measured on the context's model (Llama architecture only; otherwise "not applicable"):

- quantizers: weights ``int4_per_channel`` (symmetric INT4, absmax per output channel); activations
  static per-tensor INT4 or INT8 (absmax over the calibration windows, :func:`fmtlab.pytorch.calibrate`),
  on every Linear input except the head (``quantize_model``'s default skip);
- arms (:func:`fmtlab.methods.fptquant_quant.prepare_static`): ``none`` (no transform),
  ``hadamard`` (the merged residual rotation alone, with the random-sign
  :func:`fmtlab.sim.transforms.hadamard_matrix` of the replay side's Hadamard; RMSNorm gains folded),
  ``fptquant`` (that rotation + the fitted pre-RoPE q/k, V/O and up/down transforms, merged, + the
  dynamic per-token scale on the o_proj / down_proj inputs); the local fit is the public
  implementation's (L_4 of merged weights, 200 AdamW steps, lr 1e-2; 3 steps when ``quick``), no
  end-to-end step (optional in the API, left out here for run time);
- metric: perplexity on the evaluation windows, 95% bootstrap intervals over sequences, paired
  differences fptquant - none and fptquant - hadamard (same resampled sequences).
- a check, reported in the numbers: the merged float FPTQuant model's max |logit| difference to the
  original on the first evaluation windows (function preservation before quantization).

Verdict (our thresholds for "much closer to float"): reproduced when, for both W4A4 and W4A8, both
paired intervals lie below zero, FPTQuant's excess perplexity over float is at most half of the
better baseline's, and FPTQuant's perplexity is at most :data:`USABLE_RATIO` (2x) float's (a
perplexity of 1e5 is not "close to float", however much lower than the baselines'). When ``quick`` is False diagnostics are measured too (no verdict, :data:`DIAGNOSTICS`):
each arm with INT4 weights only (W4A16: the weight error alone), each arm with W4A4 activations
clipped at the 99.9th percentile, and W4A8 FPTQuant without the per-token scale.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.errors import FmtlabError
from fmtlab.sim import stats as S

KEY = "fptquant"
PAPER = "van Breugel et al. 2025, \"FPTQuant: Function-Preserving Transforms for LLM Quantization\""
STATEMENT = ("Static INT4 W4A4 / W4A8 with FPTQuant's function-preserving transforms gets much closer to "
             "float than with no transform or with a Hadamard rotation alone.")
WEIGHTS = "int4_per_channel"
#: the verdict's rows: static per-tensor absmax activations (a bare format name in static mode)
ACTIVATIONS = {"W4A4": "int4", "W4A8": "int8"}
#: diagnostic rows (no verdict; not in quick mode): weights alone, and INT4 activations clipped at
#: the 99.9th percentile (per calibration sequence, averaged) instead of the absmax
DIAGNOSTICS = {"W4A16": None, "W4A4 p99.9": "int8_per_tensor(format=int4, scale_rule=percentile)"}
ARMS = ("none", "hadamard", "fptquant")
#: "close to float" needs FPTQuant's perplexity within this factor of float's
USABLE_RATIO = 2.0


def _iv(iv: S.Interval) -> dict[str, float]:
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "n_sequences": iv.n_sequences}


def _nll(model, ids) -> tuple[np.ndarray, np.ndarray]:
    from fmtlab.models.perplexity import sequence_nll  # lazy: imports torch

    nll, tok = sequence_nll(model, ids, batch_size=4)
    return nll, tok.astype(np.float64)


def row_verdict(label: str, ppl_fp: float, ppl: dict[str, float], d_none: S.Interval,
                d_had: S.Interval) -> tuple[bool, list[str]]:
    """Whether one row (W4A4 or W4A8) supports the claim (see the module docstring), and why not.
    ``ppl``: point perplexities of the arms; ``d_none`` / ``d_had``: paired intervals of
    fptquant - none and fptquant - hadamard."""
    excess = {arm: ppl[arm] - ppl_fp for arm in ARMS}
    best = min(excess["none"], excess["hadamard"])
    closer = d_none.hi < 0 and d_had.hi < 0
    much = excess["fptquant"] <= 0.5 * best
    usable = ppl["fptquant"] <= USABLE_RATIO * ppl_fp
    why = []
    if not closer:
        why.append(f"{label}: a paired interval does not lie below zero")
    elif not much:
        why.append(f"{label}: closer, but the excess over float is {excess['fptquant'] / best:.2f}x the "
                   "better baseline's (threshold 0.5)")
    if not usable:
        why.append(f"{label}: FPTQuant's perplexity is {ppl['fptquant'] / ppl_fp:.3g}x float's "
                   f"(usable: at most {USABLE_RATIO:g}x), nowhere near float")
    return closer and much and usable, why


@register_claim(KEY, "FPTQuant", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.methods.fptquant import fit_fptquant, function_preserving, llama_shape, merge_fptquant  # lazy: imports torch
    from fmtlab.methods.fptquant_quant import prepare_static  # lazy: imports torch
    from fmtlab.pytorch.perplexity import token_windows_of  # lazy: imports torch

    t0 = time.perf_counter()
    model, tok = ctx.model, ctx.tokenizer
    try:
        llama_shape(model)
    except FmtlabError as exc:
        return ClaimResult(KEY, "not run", Verdict.NOT_APPLICABLE,
                           f"FPTQuant's transforms are defined for Llama-architecture models here: {exc}", {},
                           time.perf_counter() - t0)
    steps = 3 if ctx.quick else 200
    cal = token_windows_of(list(ctx.calib_texts), tok, ctx.seq_len, ctx.n_calib)
    ev = token_windows_of(list(ctx.eval_texts), tok, ctx.seq_len, ctx.n_eval)
    t_fit = time.perf_counter()
    tr = fit_fptquant(model, steps=steps, seed=ctx.seed)
    t_fit = time.perf_counter() - t_fit
    merged = {"fptquant": merge_fptquant(model, tr),
              "hadamard": merge_fptquant(model, fit_fptquant(model, steps=0, qk=False, v=False, up=False,
                                                             seed=ctx.seed)),
              "none": None}
    preserve = function_preserving(model, merged["fptquant"], ev[:2])
    loss0 = float(sum(h[0] for h in tr.history))
    loss1 = float(sum(h[-1] for h in tr.history))
    fp = _nll(model, ev)
    times: dict[str, float] = {}

    def arm_nll(label: str, arm: str, act: Any, per_token: bool = True):
        t = time.perf_counter()
        q = prepare_static(model, arm, cal, weights=WEIGHTS, activations=act, merged=merged[arm],
                           **({} if per_token else {"per_token": ()}))
        out = _nll(q, ev)
        times[f"{label}/{arm}"] = time.perf_counter() - t
        return out

    runs = {label: {arm: arm_nll(label, arm, act) for arm in ARMS} for label, act in ACTIVATIONS.items()}
    diag: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    if not ctx.quick:
        for label, act in DIAGNOSTICS.items():
            diag[label] = {arm: arm_nll(label, arm, act) for arm in ARMS}
        diag["W4A8, fptquant without the per-token scale"] = {
            "fptquant": arm_nll("W4A8-no-per-token", "fptquant", ACTIVATIONS["W4A8"], per_token=False)}
    iv_fp = S.bootstrap(S.perplexity_of, *fp, seed=ctx.seed)
    numbers: dict[str, Any] = {"ppl_fp32": _iv(iv_fp), "max_abs_logit_diff_merged_float": preserve,
                               "local_loss_before": loss0, "local_loss_after": loss1, "fit_steps": steps,
                               "fit_seconds": t_fit, "weights": WEIGHTS, "activations": ACTIVATIONS,
                               "n_calib": int(cal.shape[0]), "n_eval": int(ev.shape[0]), "seq_len": int(ev.shape[1])}
    parts, ok, why = [f"FP32 {iv_fp.text()}"], True, []
    for label, arms in runs.items():
        ivs = {arm: S.bootstrap(S.perplexity_of, *a, seed=ctx.seed) for arm, a in arms.items()}
        d_none = S.paired_difference(S.perplexity_of, arms["fptquant"], arms["none"], seed=ctx.seed)
        d_had = S.paired_difference(S.perplexity_of, arms["fptquant"], arms["hadamard"], seed=ctx.seed)
        excess = {arm: ivs[arm].value - iv_fp.value for arm in ivs}
        row_ok, row_why = row_verdict(label, iv_fp.value, {a: ivs[a].value for a in ARMS}, d_none, d_had)
        ok = ok and row_ok
        why += row_why
        numbers[label] = {**{f"ppl_{arm}": _iv(v) for arm, v in ivs.items()},
                          "diff_fptquant_minus_none": _iv(d_none), "diff_fptquant_minus_hadamard": _iv(d_had),
                          "excess_over_fp32": excess}
        text = ", ".join(f"{arm} {ivs[arm].text()}" for arm in ivs)
        parts.append(f"{label}: {text}; fptquant - none {d_none.text()}, fptquant - hadamard {d_had.text()}")
    for label, arms in diag.items():
        ivs = {arm: S.bootstrap(S.perplexity_of, *a, seed=ctx.seed) for arm, a in arms.items()}
        numbers[label] = {f"ppl_{arm}": _iv(v) for arm, v in ivs.items()}
        parts.append(f"{label} (diagnostic): " + ", ".join(f"{arm} {v.text()}" for arm, v in ivs.items()))
    numbers["seconds_per_arm"] = times
    measured = "; ".join(parts) + f"; merged float max |dlogit| {preserve:.2e}"
    verdict = Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED
    reason = ("W4A4 and W4A8: both paired intervals below zero, the excess over float at most half the better "
              f"baseline's and perplexity within {USABLE_RATIO:g}x float" if ok else "; ".join(why))
    reason += (f". Perplexity in {ctx.n_eval} x {ctx.seq_len}-token eval windows, static scales from {ctx.n_calib} "
               f"calibration windows; weights {WEIGHTS}, activations static per-tensor absmax; local fit {steps} "
               f"steps (L_4 loss {loss0:.3f} -> {loss1:.3f}), no end-to-end step.")
    return ClaimResult(KEY, measured, verdict, reason, numbers, time.perf_counter() - t0)
