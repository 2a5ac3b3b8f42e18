"""Claim ``cushion``: CushionCache (Son et al. 2024) makes per-tensor *static* W8A8 work.

Measured on the context's model: a prefix searched with :func:`fmtlab.methods.cushion.search_prefix`
on calibration windows (paper threshold 0.5; candidates and search windows as its docstring
says), then on the evaluation windows

* the worst Linear layer's top-1 / median input magnitude, max over layers of
  (max over sequences of top-1 |x|) / (median over sequences of median |x|), without and with the
  prefix; the fall is given as log10 of the factor with a paired bootstrap interval;
* perplexity of FP32 and of per-tensor static W8A8 (``int8_per_tensor`` weights and activations,
  activation scales = absmax over the calibration windows, ``fmtlab.pytorch``), each without and
  with the prefix (static scales calibrated behind the prefix); paired interval of the difference.

Verdict (our reading of "strongly" and "orders of magnitude"): reproduced when the W8A8 static
perplexity falls with a paired interval excluding zero, the *quantization penalty* (W8A8 static
minus FP32, each side against the float model with the same prefix, so that what the prefix does
to the float model is not counted as a quantization gain) shrinks by at least half, and the
top-1/median ratio falls at least 100x with an interval excluding zero.
"""

from __future__ import annotations

import math
import time

import numpy as np

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.sim import stats as S

PAPER = ("Son et al. 2024, \"Prefixing Attention Sinks can Mitigate Activation Outliers for Large Language "
         "Model Quantization\" (CushionCache)")
STATEMENT = ("A greedily searched KV-cache prefix that takes the attention sink makes per-tensor static W8A8 "
             "perplexity improve strongly, and the top-1/median activation ratio fall by orders of magnitude.")
W8 = "int8_per_tensor"


def worst_ratio(top: np.ndarray, med: np.ndarray) -> float:
    """max over layers of (max over sequences of top-1) / (median over sequences of the median)."""
    m = np.median(med, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(m > 0, top.max(axis=0) / m, np.inf)
    return float(np.max(r))


def layer_ratios(top: np.ndarray, med: np.ndarray) -> np.ndarray:
    """Per layer: (max over sequences of top-1) / (median over sequences of the median)."""
    m = np.median(med, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, top.max(axis=0) / m, np.inf)


def median_layer_ratio(top: np.ndarray, med: np.ndarray) -> float:
    """The median over layers of the per-layer ratio of :func:`worst_ratio`."""
    m = np.median(med, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.median(np.where(m > 0, top.max(axis=0) / m, np.inf)))


def penalty(nll_q: np.ndarray, nll_f: np.ndarray, tokens: np.ndarray) -> float:
    """Perplexity of the quantized model minus that of the float model, same windows."""
    return S.perplexity_of(nll_q, tokens) - S.perplexity_of(nll_f, tokens)


def log10_ratio(top: np.ndarray, med: np.ndarray) -> float:
    r = worst_ratio(top, med)
    return math.log10(r) if r > 0 else -math.inf


def _ppl(model, ids, prefix=None):
    from fmtlab.pytorch.perplexity import evaluate_perplexity  # lazy: imports torch

    r = evaluate_perplexity(model, ids, kv_prefix=prefix, progress=False, batch_size=4)
    return np.asarray(r.seq_nll, dtype=np.float64), np.full(len(r.seq_nll), ids.shape[1] - 1, dtype=np.float64)


def _static_w8a8(model, calib_ids, prefix=None):
    from fmtlab.pytorch import calibrate, quantize_model  # lazy: imports torch

    q, _ = quantize_model(model, W8, W8, activation_scales="static", kv_prefix=prefix)
    calibrate(q, calib_ids, batch_size=4)
    return q


@register_claim("cushion", "CushionCache", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.pytorch.perplexity import token_windows_of  # lazy: imports torch
    from fmtlab.methods.cushion import linear_input_stats, search_prefix  # lazy: imports torch

    t0 = time.perf_counter()
    model, tok = ctx.model, ctx.tokenizer
    search_len, search_n, n_cand = (16, 2, 8) if ctx.quick else (32, 4, 64)
    found = search_prefix(model, tok, list(ctx.calib_texts), seq_len=search_len, n_sequences=search_n,
                          n_candidates=n_cand)
    prefix = found.kv_prefix
    calib = token_windows_of(list(ctx.calib_texts), tok, ctx.seq_len, ctx.n_calib)
    ev = token_windows_of(list(ctx.eval_texts), tok, ctx.seq_len, ctx.n_eval)
    t_no, m_no, names = linear_input_stats(model, ev)
    t_cu, m_cu, _ = linear_input_stats(model, ev, prefix)
    r_no = S.bootstrap(worst_ratio, t_no, m_no, seed=ctx.seed)
    r_cu = S.bootstrap(worst_ratio, t_cu, m_cu, seed=ctx.seed)
    fall = S.paired_difference(log10_ratio, (t_no, m_no), (t_cu, m_cu), seed=ctx.seed)

    fp = _ppl(model, ev)
    fp_cu = _ppl(model, ev, prefix)
    st = _ppl(_static_w8a8(model, calib), ev)
    st_cu = _ppl(_static_w8a8(model, calib, prefix), ev)
    ivs = {k: S.bootstrap(S.perplexity_of, *v, seed=ctx.seed)
           for k, v in (("fp32", fp), ("fp32_cushion", fp_cu), ("w8a8_static", st), ("w8a8_static_cushion", st_cu))}
    gain = S.paired_difference(S.perplexity_of, st, st_cu, seed=ctx.seed)
    pen_no = S.bootstrap(penalty, st[0], fp[0], fp[1], seed=ctx.seed)
    pen_cu = S.bootstrap(penalty, st_cu[0], fp_cu[0], fp[1], seed=ctx.seed)
    pen_fall = S.paired_difference(penalty, (st[0], fp[0], fp[1]), (st_cu[0], fp_cu[0], fp[1]), seed=ctx.seed)
    closed = (pen_fall.value / pen_no.value) if pen_no.value > 0 else math.nan
    med_no, med_cu = median_layer_ratio(t_no, m_no), median_layer_ratio(t_cu, m_cu)
    lr_no, lr_cu = layer_ratios(t_no, m_no), layer_ratios(t_cu, m_cu)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_layer_fall = lr_no / lr_cu
    j = int(np.nanargmax(per_layer_fall))
    worst = {"no_prefix": names[int(np.argmax(lr_no))], "cushion": names[int(np.argmax(lr_cu))],
             "largest_fall_layer": names[j], "largest_fall": float(per_layer_fall[j])}

    ppl_ok = gain.value > 0 and gain.excludes_zero and closed >= 0.5
    ratio_ok = fall.value >= 2.0 and fall.excludes_zero
    verdict = Verdict.REPRODUCED if ppl_ok and ratio_ok else Verdict.NOT_REPRODUCED
    tok_str = _token_strings(tok, found.tokens)
    measured = (f"prefix {tok_str} ({len(found.tokens)} tokens; search max |x| {found.baseline:.1f} -> "
                f"{found.curve[-1]:.1f}); W8A8 static perplexity {ivs['w8a8_static'].text()} -> "
                f"{ivs['w8a8_static_cushion'].text()} (FP32 {ivs['fp32'].text()}, FP32+prefix "
                f"{ivs['fp32_cushion'].text()}); gain {gain.value:+.2f} [{gain.lo:+.2f}, {gain.hi:+.2f}]; "
                f"quantization penalty vs FP32 with the same prefix {pen_no.text()} -> {pen_cu.text()} "
                f"({_pct(closed)} removed); worst-layer top-1/median {r_no.text(0)} -> "
                f"{r_cu.text(1)}, a fall of 10^{fall.value:.2f} [10^{fall.lo:.2f}, 10^{fall.hi:.2f}] "
                f"(median over layers {med_no:.0f} -> {med_cu:.0f}; worst layer {worst['no_prefix']} -> "
                f"{worst['cushion']}; largest per-layer fall {worst['largest_fall']:.0f}x at {names[j]})")
    reason = (("perplexity: " + ("strong gain (interval excludes zero, quantization penalty at least halved)"
                                 if ppl_ok else "the gain is not resolved or the quantization penalty shrinks < 50%"))
              + "; ratio: " + ("falls >= 100x (interval excludes zero)" if ratio_ok else
                               f"falls {10 ** fall.value:.1f}x, fewer than the 100x we read as 'orders of magnitude'"
                               if math.isfinite(fall.value) else "not measurable")
              + f". Search: {len(found.candidates)} candidates, {search_n} x {search_len} tokens, threshold 0.5; "
              f"scored on {ctx.n_eval} x {ctx.seq_len} eval tokens, static scales from {ctx.n_calib} x {ctx.seq_len} "
              "calib tokens.")
    numbers = {"prefix_tokens": list(found.tokens), "search_curve": list(found.curve), "search_baseline": found.baseline,
               "search_rejected": found.rejected, "search_seconds": found.seconds,
               "penalty_removed": closed, "penalty_no_prefix": _iv(pen_no), "penalty_cushion": _iv(pen_cu),
               "penalty_fall": _iv(pen_fall), "median_layer_ratio": [med_no, med_cu],
               "worst_layers": worst, "log10_ratio_fall": _iv(fall), "ratio_no_prefix": _iv(r_no),
               "ratio_cushion": _iv(r_cu), "ppl_gain": _iv(gain), **{f"ppl_{k}": _iv(v) for k, v in ivs.items()}}
    return ClaimResult("cushion", measured, verdict, reason, numbers, time.perf_counter() - t0)


def _iv(iv: S.Interval) -> dict[str, float]:
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "n_sequences": iv.n_sequences}


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _token_strings(tok, ids) -> str:
    try:
        return repr([tok.decode([t]) for t in ids])
    except Exception:  # noqa: BLE001 - a tokenizer without decode: show ids
        return repr(list(ids))
