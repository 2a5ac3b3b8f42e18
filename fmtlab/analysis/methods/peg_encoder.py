"""Claim "peg_encoder": PEG on the model class the paper is about, a BERT-style encoder.

Bondarenko et al. 2021 study BERT on GLUE; fmtlab's embedded encoders are all-MiniLM-L6-v2
(``--model minilm``) and all-mpnet-base-v2 (``--model mpnet``), sentence encoders, so the
end-to-end metric is the one their users rely on (:mod:`fmtlab.models.embeddings`): agreement of
sentence embeddings with the fp32 model (mean cosine) and the rank correlation of pairwise
similarities, each with a seeded bootstrap interval over held-out sentences.

Arms, all static W8A8 with INT8 per-tensor weights, activation scales calibrated on the
calibration windows (framed as requests: [CLS] ... [SEP]) and scored on sentences of the
evaluation texts: per-tensor static activations; PEG K = 6 with the range-based permutation; PEG
K = 6 without it; PEG K = 6 with the FFN output projection's inputs in 16 bit (the paper's
mixed-precision recipe, our reading in :mod:`fmtlab.pytorch.peg`).

Verdict: reproduced when PEG (permuted) raises the mean cosine over per-tensor with a paired
interval excluding zero and recovers at least half of per-tensor's gap to fp32 (1 - cosine).
"""

from __future__ import annotations

import time

import numpy as np

from fmtlab.analysis.methods import ClaimResult, MethodsContext, Verdict, register_claim
from fmtlab.analysis.methods.peg import GROUPS, PAPER
from fmtlab.models.embeddings import embedding_agreement, sentence_embeddings, sentences_from
from fmtlab.sim import stats as S

STATEMENT = ("On a BERT-style encoder, per-embedding-group activation quantization (K = 6, range-permuted) "
             "brings static W8A8 close to FP32 where per-tensor static activation scales fail.")

#: the FFN output projection of BERT / MPNet blocks (not the attention output's ``attention.output.dense``)
FFN_OUT = ("re:(^|\\.)layer\\.\\d+\\.output\\.dense$",)


def _arms(model, k: int, quick: bool):
    from fmtlab.pytorch import quantize_model  # lazy: imports torch
    from fmtlab.pytorch.peg import quantize_model_peg  # lazy: imports torch

    arms = [
        ("per-tensor static", lambda: quantize_model(model, "int8_per_tensor", "int8_per_tensor",
                                                     activation_scales="static")[0]),
        (f"PEG K={k} permuted", lambda: quantize_model_peg(model, "int8_per_tensor", f"int8_peg{k}")[0]),
        (f"PEG K={k} no permutation", lambda: quantize_model_peg(model, "int8_per_tensor", f"int8_peg{k}_noperm")[0]),
        (f"PEG K={k} + 16-bit FFN output inputs",
         lambda: quantize_model_peg(model, "int8_per_tensor", f"int8_peg{k}", mixed_precision=True, mp_layers=FFN_OUT)[0]),
    ]
    return arms[:3] if quick else arms


@register_claim("peg_encoder", "PEG (encoder)", PAPER, STATEMENT)
def run(ctx: MethodsContext) -> ClaimResult:
    from fmtlab.pytorch import calibrate  # lazy: imports torch

    t0 = time.perf_counter()
    k = 2 if ctx.quick else GROUPS
    sents = sentences_from(ctx.eval_texts, 16 if ctx.quick else 64)
    ref = sentence_embeddings(ctx.model, ctx.tokenizer, sents)
    cos: dict[str, np.ndarray] = {}
    agree = {}
    for name, build in _arms(ctx.model, k, ctx.quick):
        qm = build()
        calibrate(qm, list(ctx.calib_texts), ctx.tokenizer, seq_len=ctx.seq_len, n_sequences=ctx.n_calib)
        emb = sentence_embeddings(qm, ctx.tokenizer, sents)
        cos[name] = np.sum(ref * emb, axis=1)
        agree[name] = embedding_agreement(ref, emb, seed=ctx.seed)
        del qm
    names = list(cos)
    pt, peg = names[0], names[1]
    d = S.paired_difference(np.mean, (cos[peg],), (cos[pt],), seed=ctx.seed)
    gap = 1.0 - agree[pt]["cosine"].value
    recovered = (agree[peg]["cosine"].value - agree[pt]["cosine"].value) / gap if gap > 0 else float("nan")
    ok = d.lo > 0 and recovered >= 0.5
    measured = ("cosine to fp32 / rank correlation of similarities: "
                + "; ".join(f"{n} {agree[n]['cosine'].text(4)} / {agree[n]['rank'].text(3)}" for n in names)
                + f". PEG minus per-tensor cosine {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
                + f" ({recovered:.0%} of the gap to fp32 recovered); {len(sents)} held-out sentences")
    if ok:
        reason = "PEG raises the cosine to fp32 (paired interval above zero) and recovers >= 50% of the gap"
    elif d.lo > 0:
        reason = f"PEG helps (interval above zero) but recovers only {recovered:.0%} of the gap"
    else:
        reason = "the paired interval of PEG minus per-tensor does not lie above zero"
    numbers = {n: {"cosine": [agree[n]["cosine"].value, agree[n]["cosine"].lo, agree[n]["cosine"].hi],
                   "rank": [agree[n]["rank"].value, agree[n]["rank"].lo, agree[n]["rank"].hi]} for n in names}
    numbers.update({"peg_minus_per_tensor": [d.value, d.lo, d.hi], "gap_recovered": recovered, "groups": k,
                    "n_sentences": len(sents), "seq_len": ctx.seq_len, "n_calib": ctx.n_calib})
    return ClaimResult("peg_encoder", measured, Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED, reason,
                       numbers, time.perf_counter() - t0)
