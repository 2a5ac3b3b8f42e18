"""End-to-end quality of a quantized sentence encoder (MiniLM, MPNet): agreement with fp32.

Perplexity does not apply to an encoder; what its users rely on is the sentence embedding and the
similarities between embeddings (retrieval ranks documents by them). Two metrics, each with a seeded
bootstrap interval over sentences (:mod:`fmtlab.sim.stats`):

* ``cosine``: the mean, over held-out sentences, of the cosine similarity between a sentence's
  embedding under the quantized model and under the fp32 model (1 = identical directions).
* ``rank``: Spearman's rank correlation between the pairwise cosine similarities of the sentences
  under the two models (upper triangle, i < j): 1 = every retrieval ranking is preserved. Resampled
  sentences that repeat never pair with themselves.

Embeddings are as the sentence-transformers configs of all-MiniLM-L6-v2 and all-mpnet-base-v2
state (their ``1_Pooling/config.json`` and ``modules.json``): mean of the last hidden state over
the attention mask, then L2 normalisation. Sentences are tokenized one by one as a request (with
the tokenizer's special tokens), truncated at ``max_length`` tokens, and run one at a time, so
dynamic activation scales are per sentence and no padding enters a scale.
"""

from __future__ import annotations

import re
import time
from typing import Any, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim import stats as S
from fmtlab.sim.data import default_texts

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences_from(texts: Sequence[str], n: int, *, min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """The first ``n`` sentences of ``texts`` (in order) that are ``min_chars``..``max_chars`` long."""
    if n < 2:
        raise FmtlabError(f"need at least 2 sentences for pairwise similarities, got {n=}")
    out: list[str] = []
    for doc in texts:
        for sent in _SENTENCE_END.split(doc.strip()):
            sent = " ".join(sent.split())
            if min_chars <= len(sent) <= max_chars:
                out.append(sent)
                if len(out) == n:
                    return out
    raise FmtlabError(f"the texts give only {len(out)} sentences of {min_chars}..{max_chars} characters, "
                      f"fewer than {n=}")


def held_out_sentences(n: int = 64, *, split: str = "eval", source: str = "lee", min_chars: int = 40,
                       max_chars: int = 300) -> list[str]:
    """``n`` sentences from the offline texts' ``split`` (default: the evaluation half of the Lee
    news corpus), in file order, each ``min_chars``..``max_chars`` characters long."""
    return sentences_from(default_texts(split, source), n, min_chars=min_chars, max_chars=max_chars)


def sentence_embeddings(model: Any, tokenizer: Any, sentences: Sequence[str], *, max_length: int = 128) -> np.ndarray:
    """[sentences, hidden] float64 embeddings: masked mean of the last hidden state, L2-normalised."""
    import torch  # lazy: this module is imported by the CLI, which must start without torch

    if not sentences:
        raise FmtlabError("sentence_embeddings needs at least one sentence")
    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for text in sentences:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out = model(**enc)
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is None:
                hidden = out[0]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            rows.append(pooled[0].double().cpu().numpy())
    emb = np.stack(rows)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if not np.all(np.isfinite(emb)) or np.any(norms == 0):
        raise FmtlabError("an embedding is not finite or is zero: the quantized model overflowed")
    return emb / norms


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    sx = x[order]
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or sx[i] != sx[start]:
            if i - start > 1:
                ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length vectors (NaN when either is constant)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray, *, n_boot: int = S.DEFAULT_N_BOOT,
                        seed: int = S.DEFAULT_SEED) -> dict[str, S.Interval]:
    """``{"cosine": Interval, "rank": Interval}`` of ``candidate`` embeddings against ``reference``
    (both [sentences, hidden], L2-normalised rows), bootstrap over sentences."""
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] < 3:
        raise FmtlabError(f"embeddings must be two [sentences >= 3, hidden] arrays of one shape, got "
                          f"{ref.shape} and {cand.shape}")
    cos = np.sum(ref * cand, axis=1)
    sim_ref, sim_cand = ref @ ref.T, cand @ cand.T

    def rank_stat(idx: np.ndarray) -> float:
        i, j = np.triu_indices(len(idx), k=1)
        keep = idx[i] != idx[j]  # a resampled sentence never pairs with itself
        a, b = idx[i[keep]], idx[j[keep]]
        return spearman(sim_ref[a, b], sim_cand[a, b])

    return {"cosine": S.bootstrap(np.mean, cos, n_boot=n_boot, seed=seed),
            "rank": S.bootstrap(rank_stat, np.arange(len(ref)), n_boot=n_boot, seed=seed)}


def _agreement_row(name: str, ref: np.ndarray, emb: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """config, n_sentences and each agreement metric with its ``_lo`` / ``_hi`` interval bounds."""
    agree = embedding_agreement(ref, emb, n_boot=n_boot, seed=seed)
    return {"config": name, "n_sentences": len(ref), **{k: v.value for k, v in agree.items()},
            **{f"{k}_lo": v.lo for k, v in agree.items()}, **{f"{k}_hi": v.hi for k, v in agree.items()}}


def is_language_model(model: Any) -> bool:
    """True when ``model`` has an output head over the vocabulary (perplexity applies); False for a
    bare encoder (BERT / MPNet ``AutoModel``), whose end-to-end metric is embedding agreement."""
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


def replay_config_agreement(model: Any, tokenizer: Any, configs: Sequence[Any], *, calib: Any = None,
                            sentences: Sequence[str] | None = None, n_boot: int = S.DEFAULT_N_BOOT,
                            seed: int = S.DEFAULT_SEED) -> list[dict[str, Any]]:
    """Embedding agreement with fp32 for replay configs (preset names or ReplayConfig), the
    encoder's counterpart of :func:`fmtlab.models.perplexity.perplexity_table`.

    Each config runs through :func:`fmtlab.models.perplexity.sim_quantized`, i.e. the same numpy
    quantizers and transforms as replay (static scales and fitted transforms from ``calib``, a
    calibration trace of this model); dynamic scales see one sentence at a time. One row per config:
    config, n_sentences, cosine / rank with ``_lo`` / ``_hi`` (95% bootstrap over sentences), seconds.
    """
    from fmtlab.models.perplexity import sim_quantized  # lazy: imports torch (this module must not)
    from fmtlab.sim.replay import make_config  # lazy: loads numba; the CLI imports this module

    sents = list(sentences) if sentences is not None else held_out_sentences()
    ref = sentence_embeddings(model, tokenizer, sents)
    rows = []
    for config in configs:
        cfg = make_config(config)
        t0 = time.perf_counter()
        with sim_quantized(model, cfg, calib, per_sequence_head=False) as qmodel:
            emb = sentence_embeddings(qmodel, tokenizer, sents)
        rows.append(dict(_agreement_row(cfg.name, ref, emb, n_boot, seed), seconds=time.perf_counter() - t0))
    return rows


def encoder_quality(model: Any, tokenizer: Any, configs: Sequence[tuple[str, Any, Any]], *,
                    sentences: Sequence[str] | None = None, n_boot: int = S.DEFAULT_N_BOOT,
                    seed: int = S.DEFAULT_SEED) -> list[dict[str, Any]]:
    """One row per ``(name, weights, activations)`` config: cosine and rank agreement with fp32.

    Each config is applied with :func:`fmtlab.pytorch.quantize_model` (dynamic scales: per
    sentence) to a copy of ``model``; ``sentences`` default to :func:`held_out_sentences`.
    """
    from fmtlab.pytorch import quantize_model  # lazy: torch

    sents = list(sentences) if sentences is not None else held_out_sentences()
    ref = sentence_embeddings(model, tokenizer, sents)
    rows = []
    for name, weights, activations in configs:
        qmodel, _ = quantize_model(model, weights, activations)
        rows.append(_agreement_row(name, ref, sentence_embeddings(qmodel, tokenizer, sents), n_boot, seed))
    return rows
