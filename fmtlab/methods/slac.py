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

:func:`slac_sqnr_curve` is the layer-wise (replay-style) variant, far cheaper on a CPU: the float
model runs once over each length's calibration windows and once over the evaluation windows;
forward hooks quantize every Linear input with the static per-tensor scale calibrated at each
length (numpy fmtlab quantizers; per calibration sequence the quantizer's own scale, folded by
max for absmax and by the float64 mean otherwise) and measure the layer-output error
(Q(X) - X) W^T against X W^T (no propagation between layers). Its error is the pooled
layer-output SQNR (:func:`fmtlab.sim.stats.pooled_sqnr_db`) with intervals over evaluation windows.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import Quantizer
from fmtlab.formats.scaling import PerTensor, Static
from fmtlab.sim import stats as S
from fmtlab.sim.data import token_windows
from fmtlab.sim.quant import resolve

__all__ = ["slac_curve", "slac_sqnr_curve", "format_rows", "DEFAULT_LENGTHS"]

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
    from fmtlab.pytorch import calibrate, quantize_model  # lazy: imports torch
    from fmtlab.pytorch.calibrate import static_activations  # lazy: imports torch
    from fmtlab.models.perplexity import eval_windows, sequence_nll  # lazy: imports torch

    lens = _check_lengths(model, lengths, target_len, n_eval, calib_tokens)
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


def _linears(model) -> list[tuple[str, Any]]:
    import torch  # lazy: torch is slow to import

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def _check_lengths(model, lengths, target_len, n_eval, calib_tokens) -> list[int]:
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
    return lens


def slac_sqnr_curve(model, tokenizer, calib_texts: Sequence[str], eval_texts: Sequence[str], *,
                    lengths: Sequence[int] = DEFAULT_LENGTHS, target_len: int = 256, calib_tokens: int = 2048,
                    n_eval: int = 8, activations: Sequence[str] = ("int8_per_tensor",),
                    seed: int = S.DEFAULT_SEED, n_boot: int = S.DEFAULT_N_BOOT) -> list[dict[str, Any]]:
    """Layer-wise SLAC (see the module docstring): one row per (activation spec, calibration length).

    activations: fmtlab per-tensor quantizer presets (e.g. "int8_per_tensor", "int8_per_tensor_p99.99").
    Row keys: activations, calib_len, n_calib_sequences, calib_tokens, target_len, sqnr_db,
    sqnr_lo, sqnr_hi, d_sqnr_db (minus calibration at the reference length), d_lo, d_hi,
    d_excludes_zero, ref_len, scale_gmean. FmtlabError as :func:`slac_curve`, and for a spec
    that is not a per-tensor fmtlab quantizer.
    """
    import torch  # lazy: torch is slow to import

    from fmtlab.models.perplexity import eval_windows  # lazy: imports torch

    lens = _check_lengths(model, lengths, target_len, n_eval, calib_tokens)
    specs = [activations] if isinstance(activations, str) else list(activations)
    qs = {}
    for a in specs:
        q = resolve(a).obj
        if not isinstance(q, Quantizer) or q.is_block or not isinstance(q.granularity, PerTensor):
            raise FmtlabError(f"slac_sqnr_curve takes per-tensor fmtlab quantizers, got {a!r}")
        qs[a] = q
    layers = _linears(model)
    names = [n for n, _ in layers]
    mods = dict(layers)

    def run(ids, fn) -> None:
        state = {"seq": 0}
        hooks = [mods[n].register_forward_hook(
            lambda mod, inp, out, j=j: fn(state["seq"], j, inp[0].detach().float().reshape(-1, inp[0].shape[-1])))
            for j, n in enumerate(names)]
        try:
            with torch.no_grad():
                for i in range(ids.shape[0]):
                    state["seq"] = i
                    model(ids[i:i + 1])
        finally:
            for h in hooks:
                h.remove()

    # ---- calibration: per length, per layer, per spec: the frozen scale
    frozen: dict[tuple[str, int], np.ndarray] = {}
    n_seqs: dict[int, int] = {}
    for L in lens:
        n_seq = max(1, calib_tokens // L)
        n_seqs[L] = n_seq
        wins, _ = token_windows(tokenizer, list(calib_texts), L, n_seq)
        per_seq = {a: np.zeros((n_seq, len(names))) for a in specs}

        def observe(i, j, x, per_seq=per_seq):
            xa = np.ascontiguousarray(x.cpu().numpy())
            for a, q in qs.items():
                per_seq[a][i, j] = float(np.asarray(q.compute_scales(xa)[0]).reshape(-1)[0])

        run(torch.tensor(wins, dtype=torch.long), observe)
        for a, q in qs.items():
            v = per_seq[a].max(axis=0) if type(q.scale_rule).__name__ == "AbsMax" else per_seq[a].mean(axis=0)
            frozen[(a, L)] = v.astype(np.float32)
    # ---- evaluation at the target length: every (spec, length) on the same float inputs
    ids = eval_windows(tokenizer, target_len, n_eval, texts=list(eval_texts))
    keys = list(frozen)
    noise = {k: np.zeros((n_eval, len(names))) for k in keys}
    signal = np.zeros((n_eval, len(names)))
    statics = {k: [Quantizer(qs[k[0]].format, PerTensor(), Static(float(s))) for s in frozen[k]] for k in keys}

    def score(i, j, x):
        w = mods[names[j]].weight.detach().float()
        signal[i, j] = float(((x @ w.t()).double() ** 2).sum())
        xa = np.ascontiguousarray(x.cpu().numpy())
        for k in keys:
            d = torch.from_numpy(statics[k][j].fake_quantize(xa) - xa)
            noise[k][i, j] = float(((d @ w.t()).double() ** 2).sum())

    run(ids, score)
    ref = target_len if target_len in lens else lens[-1]
    rows = []
    for a in specs:
        for L in lens:
            k = (a, L)
            iv = S.bootstrap(S.pooled_sqnr_db, noise[k], signal, n_boot=n_boot, seed=seed)
            d = S.paired_difference(S.pooled_sqnr_db, (noise[k], signal), (noise[(a, ref)], signal),
                                    n_boot=n_boot, seed=seed)
            rows.append({"activations": a, "calib_len": L, "n_calib_sequences": n_seqs[L],
                         "calib_tokens": n_seqs[L] * L, "target_len": int(target_len), "sqnr_db": iv.value,
                         "sqnr_lo": iv.lo, "sqnr_hi": iv.hi, "d_sqnr_db": d.value, "d_lo": d.lo, "d_hi": d.hi,
                         "d_excludes_zero": d.excludes_zero, "ref_len": ref,
                         "scale_gmean": float(np.exp(np.mean(np.log(frozen[k].astype(np.float64)))))})
    return rows
