"""SLAC: sequence-length-aware calibration (Lee et al. 2023, the dINT / AQAS paper: "Enhancing
Computation Efficiency in Large Language Models through Weight and Activation Quantization").

The paper's point, as our sources state it: calibration sequence lengths should be aligned to the
target task, because the statistics that static quantization parameters are fitted on depend on
the sequence length. :func:`slac_curve` measures that dependence: static activation scales are
calibrated at several calibration lengths L (same calibration text, a fixed token budget, so
``calib_tokens // L`` sequences at each L) and every calibrated model is scored at one target
length on the held-out evaluation split.

The model is rewired once with :func:`fmtlab.pytorch.quantize_model` (static activation scales,
weights as given) and recalibrated per L with :func:`fmtlab.pytorch.calibrate` (each call
discards the previous calibration). The statistic of each layer is that of the torch path: per
calibration sequence, the scale rule's clip value (absmax, percentile, MSE), folded by max for
absmax and by the mean over sequences otherwise, so a rule that sees the per-sequence outliers
(the first token's massive activations) in a different share at each L gives a different scale.

Error at the target length: perplexity over the evaluation windows, with a seeded bootstrap
interval over windows, and the paired-bootstrap difference to calibration at the target length
itself (the SLAC choice). Each row also carries the geometric-mean frozen scale over layers.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim import stats as S

__all__ = ["slac_curve", "format_rows", "DEFAULT_LENGTHS"]

DEFAULT_LENGTHS = (16, 32, 64, 128, 256)


def slac_curve(model, tokenizer, calib_texts: Sequence[str], eval_texts: Sequence[str], *,
               lengths: Sequence[int] = DEFAULT_LENGTHS, target_len: int = 256, calib_tokens: int = 2048,
               n_eval: int = 8, weights: Any = None, activations: Any = "int8_per_tensor",
               batch_size: int = 4, seed: int = S.DEFAULT_SEED, n_boot: int = S.DEFAULT_N_BOOT,
               progress: bool = False) -> list[dict[str, Any]]:
    """One row per calibration length in ``lengths`` (ascending), scored at ``target_len``.

    calib_texts / eval_texts: disjoint splits. calib_tokens: tokens per calibration (each length
    gets ``calib_tokens // L`` sequences, at least 1). weights / activations: quantize_model specs
    (activations with a per-tensor or per-feature static rule, e.g. "int8_per_tensor",
    "int8_per_tensor_p99.9", "int8_per_tensor_mse"). Row keys: calib_len, n_calib_sequences,
    calib_tokens, target_len, ppl, ppl_lo, ppl_hi, d_ppl (minus calibration at the reference
    length), d_lo, d_hi, d_excludes_zero, ref_len, scale_gmean, seconds. The reference length is
    ``target_len`` when it is in ``lengths``, else the longest length. Raises FmtlabError for
    empty/invalid lengths, fewer than 2 eval windows, or a length beyond the model's context.
    """
    from fmtlab.pytorch import calibrate, quantize_model
    from fmtlab.pytorch.calibrate import static_activations
    from fmtlab.sim.perplexity import eval_windows, sequence_nll

    lens = sorted({int(v) for v in lengths})
    if not lens or lens[0] < 2 or any(isinstance(v, bool) for v in lengths):
        raise FmtlabError(f"lengths must be integers >= 2, got {list(lengths)!r}")
    if target_len < 2:
        raise FmtlabError(f"target_len must be >= 2, got {target_len=}")
    if n_eval < 2:
        raise FmtlabError(f"an interval needs n_eval >= 2 evaluation windows, got {n_eval=}")
    if calib_tokens < lens[-1]:
        raise FmtlabError(f"calib_tokens={calib_tokens} cannot hold one sequence of the longest length {lens[-1]}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max(lens[-1], target_len) > limit:
        raise FmtlabError(f"length {max(lens[-1], target_len)} exceeds the model's context of {limit} tokens")
    qmodel, _ = quantize_model(model, weights, activations, activation_scales="static")
    ids = eval_windows(tokenizer, target_len, n_eval, texts=list(eval_texts))
    runs: dict[int, dict[str, Any]] = {}
    for L in lens:
        t0 = time.perf_counter()
        n_seq = max(1, calib_tokens // L)
        calibrate(qmodel, list(calib_texts), tokenizer, seq_len=L, n_sequences=n_seq, batch_size=batch_size)
        scales = [float(v) for a in static_activations(qmodel).values() for v in a.scale.reshape(-1).tolist()]
        nll, tok = sequence_nll(qmodel, ids, batch_size=batch_size, progress=progress, desc=f"slac L={L}")
        runs[L] = {"nll": nll, "tok": tok, "n_seq": n_seq, "seconds": time.perf_counter() - t0,
                   "scale_gmean": float(np.exp(np.mean(np.log(np.asarray(scales, dtype=np.float64)))))}
    ref = target_len if target_len in runs else lens[-1]
    rows = []
    for L in lens:
        r = runs[L]
        iv = S.bootstrap(S.perplexity_of, r["nll"], r["tok"], n_boot=n_boot, seed=seed)
        d = S.paired_difference(S.perplexity_of, (r["nll"], r["tok"]), (runs[ref]["nll"], runs[ref]["tok"]),
                                n_boot=n_boot, seed=seed)
        rows.append({"calib_len": L, "n_calib_sequences": r["n_seq"], "calib_tokens": r["n_seq"] * L,
                     "target_len": int(target_len), "ppl": iv.value, "ppl_lo": iv.lo, "ppl_hi": iv.hi,
                     "d_ppl": d.value, "d_lo": d.lo, "d_hi": d.hi, "d_excludes_zero": d.excludes_zero,
                     "ref_len": ref, "scale_gmean": r["scale_gmean"], "seconds": r["seconds"]})
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A small text table of :func:`slac_curve` rows."""
    out = [f"{'calib L':>8} {'seqs':>5} {'ppl [95% CI]':>26} {'d ppl vs L=ref [95% CI]':>30} {'scale gm':>10}"]
    for r in rows:
        ci = f"{r['ppl']:.3f} [{r['ppl_lo']:.3f}, {r['ppl_hi']:.3f}]"
        d = f"{r['d_ppl']:+.3f} [{r['d_lo']:+.3f}, {r['d_hi']:+.3f}]"
        out.append(f"{r['calib_len']:>8} {r['n_calib_sequences']:>5} {ci:>26} {d:>30} {r['scale_gmean']:>10.4g}")
    return "\n".join(out)
