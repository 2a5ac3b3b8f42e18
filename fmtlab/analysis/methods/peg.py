"""Claim "peg": per-embedding-group activation quantization (Bondarenko et al. 2021).

Measured on the context's model with static W8A8 (INT8 per-tensor weights, static activation
scales calibrated on ``ctx.n_calib`` calibration windows, scored on ``ctx.n_eval`` evaluation
windows of ``ctx.seq_len`` tokens): perplexity of FP32, per-tensor static activations, PEG with
K = 6 groups with the range-based permutation, PEG K = 6 without it, and PEG K = 6 plus the
mixed-precision option (down_proj inputs in 16 bit; :mod:`fmtlab.pytorch.peg` gives our reading).
Each perplexity carries a seeded bootstrap interval over evaluation windows; the PEG-minus-per-tensor
difference a paired one. The hardware price of K = 6 scales per row (:mod:`fmtlab.hw.peg_cost`,
row length = the model's hidden size) is reported beside it.

Verdict: reproduced when PEG (K = 6, permuted) lowers the per-tensor static perplexity with a
paired interval excluding zero *and* recovers at least half of the per-tensor-to-FP32 gap (the
paper: PEG brings static W8A8 close to FP32 on BERT/GLUE).
"""

from __future__ import annotations

import time

import numpy as np

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.hw.peg_cost import peg_row_cost
from fmtlab.sim import stats as S

__all__ = ["run", "PAPER", "STATEMENT", "GROUPS"]

PAPER = ("Bondarenko et al. 2021, \"Understanding and Overcoming the Challenges of Efficient Transformer "
         "Quantization\"")
STATEMENT = ("Per-embedding-group activation quantization (K = 6 groups along the hidden dimension, outlier "
             "channels grouped together by a range-based permutation) brings static W8A8 close to FP32 where "
             "per-tensor static activation scales fail; 16-bit residual sum / FFN output helps further.")
GROUPS = 6


def _nll(model, ids):
    from fmtlab.models.perplexity import sequence_nll  # lazy: imports torch

    nll, tok = sequence_nll(model, ids, batch_size=4)
    return nll, tok.astype(np.float64)


def _arms(ctx: MethodsContext, quick: bool):
    """(name, builder) of the quantized arms; each builder returns an uncalibrated model."""
    from fmtlab.pytorch import quantize_model  # lazy: imports torch
    from fmtlab.pytorch.peg import quantize_model_peg  # lazy: imports torch

    k = 2 if quick else GROUPS
    m = ctx.model
    arms = [
        ("per-tensor static", lambda: quantize_model(m, "int8_per_tensor", "int8_per_tensor",
                                                     activation_scales="static")[0]),
        (f"PEG K={k} permuted", lambda: quantize_model_peg(m, "int8_per_tensor", f"int8_peg{k}")[0]),
        (f"PEG K={k} no permutation", lambda: quantize_model_peg(m, "int8_per_tensor", f"int8_peg{k}_noperm")[0]),
        (f"PEG K={k} + 16-bit down_proj inputs", lambda: quantize_model_peg(m, "int8_per_tensor", f"int8_peg{k}",
                                                                            mixed_precision=True)[0]),
    ]
    return arms[:3] if quick else arms  # quick (tests): the mixed-precision arm is tested elsewhere


@register_claim("peg", "PEG", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.pytorch import calibrate  # lazy: imports torch
    from fmtlab.models.perplexity import eval_windows  # lazy: imports torch

    t0 = time.perf_counter()
    ids = eval_windows(ctx.tokenizer, ctx.seq_len, ctx.n_eval, list(ctx.eval_texts))
    res = {"FP32": _nll(ctx.model, ids)}
    for name, build in _arms(ctx, ctx.quick):
        qm = build()
        calibrate(qm, list(ctx.calib_texts), ctx.tokenizer, seq_len=ctx.seq_len, n_sequences=ctx.n_calib)
        res[name] = _nll(qm, ids)
        del qm
    iv = {k: S.bootstrap(S.perplexity_of, *v, seed=ctx.seed) for k, v in res.items()}
    names = list(res)
    pt, peg = names[1], names[2]
    d = S.paired_difference(S.perplexity_of, res[peg], res[pt], seed=ctx.seed)
    d_perm = S.paired_difference(S.perplexity_of, res[peg], res[names[3]], seed=ctx.seed)
    gap = iv[pt].value - iv["FP32"].value
    recovered = (iv[pt].value - iv[peg].value) / gap if gap > 0 else float("nan")
    hidden = int(getattr(getattr(ctx.model, "config", None), "hidden_size", 0) or 576)
    k = 2 if ctx.quick else GROUPS
    hw = peg_row_cost("int8", "int8", groups=k, row_length=max(hidden, k))
    ok = d.hi < 0 and recovered >= 0.5
    measured = ("perplexity " + "; ".join(f"{n} {iv[n].text(2)}" for n in names)
                + f". PEG minus per-tensor {d.value:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]"
                + f" ({recovered:.0%} of the gap to FP32 recovered); permuted minus unpermuted "
                + f"{d_perm.value:+.2f} [{d_perm.lo:+.2f}, {d_perm.hi:+.2f}]. HW: K={k} scales per row of {hidden} "
                + f"MACs cost +{hw.energy_overhead:.1%} energy per MAC, +{hw.area_overhead:.1%} row area "
                + "(fmtlab.hw.peg_cost)")
    if ok:
        reason = ("PEG lowers static per-tensor W8A8 perplexity (paired interval below zero) and recovers >= 50% "
                  "of the gap")
    elif d.hi < 0:
        reason = f"PEG helps (interval below zero) but recovers only {recovered:.0%} of the gap to FP32"
    else:
        reason = "the paired interval of PEG minus per-tensor does not lie below zero"
    extra = []
    for n in names[3:]:
        rec = (iv[pt].value - iv[n].value) / gap if gap > 0 else float("nan")
        extra.append(f"{n}: {rec:.0%} of the gap recovered")
    if extra:
        reason += "; " + "; ".join(extra)
    numbers = {n: {"ppl": iv[n].value, "lo": iv[n].lo, "hi": iv[n].hi} for n in names}
    numbers.update({"peg_minus_per_tensor": [d.value, d.lo, d.hi],
                    "perm_minus_noperm": [d_perm.value, d_perm.lo, d_perm.hi],
                    "gap_recovered": recovered, "groups": k, "hw_energy_overhead": hw.energy_overhead,
                    "hw_area_overhead": hw.area_overhead, "seq_len": ctx.seq_len, "n_calib": ctx.n_calib,
                    "n_eval": ctx.n_eval})
    return ClaimResult("peg", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason, numbers,
                       time.perf_counter() - t0)
