"""The report's end-to-end section for a sentence encoder (MiniLM, MPNet): embedding agreement.

Perplexity needs an output head over the vocabulary; a bare encoder has none, and what its users
rely on is the sentence embedding. For an encoder, ``fmtlab report`` scores its perplexity configs
by :func:`fmtlab.models.embeddings.replay_config_agreement` instead: mean cosine of each held-out
sentence's embedding to the fp32 model's, and Spearman's rank correlation of the pairwise
similarities (what retrieval ranks by), each with a seeded bootstrap interval over sentences.
Sentences come from the evaluation half of the Lee corpus (disjoint from the calibration texts the
static scales are fitted on). Model variants (``+gptq``, ``+cushion`` ...) are fitted on causal LMs
only: such configs are listed as skipped, with the reason.
"""

from __future__ import annotations

from typing import Any

from fmtlab.analysis.protocol import with_ci
from fmtlab.analysis.tables import write_csv
from fmtlab.methods.variants import parse_variant_config

__all__ = ["encoder_rows", "add_encoder_section", "N_SENTENCES"]

#: held-out sentences scored per config
N_SENTENCES = 64
_COLUMNS = ["config", "cosine", "cosine_lo", "cosine_hi", "rank", "rank_lo", "rank_hi", "n_sentences", "seconds"]


def encoder_rows(model: Any, tokenizer: Any, specs: tuple[str, ...], calib: Any, out_tables, *,
                 n_sentences: int = N_SENTENCES, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Agreement rows of the configs in ``specs`` without a model variant, on ``n_sentences``
    held-out sentences (written to ``encoder_quality.csv`` under ``out_tables``), and the names of
    the skipped variant configs."""
    from fmtlab.models.embeddings import held_out_sentences, replay_config_agreement  # lazy: imports torch

    plain = [c for c in specs if parse_variant_config(c)[1] is None]
    skipped = [c for c in specs if parse_variant_config(c)[1] is not None]
    rows = replay_config_agreement(model, tokenizer, plain, calib=calib,
                                   sentences=held_out_sentences(n_sentences), seed=seed) if plain else []
    write_csv(rows, out_tables / "encoder_quality.csv", _COLUMNS)
    return rows, skipped


def add_encoder_section(doc, rows: list[dict[str, Any]], skipped: list[str]) -> None:
    """The section text and table (nothing when there are no rows and nothing was skipped)."""
    if not rows and not skipped:
        return
    doc.heading("End-to-end: sentence-embedding agreement (encoder)")
    n = rows[0]["n_sentences"] if rows else N_SENTENCES
    doc.paragraph(f"The model is an encoder: perplexity does not apply. Each config quantizes every Linear layer "
                  f"with the replay quantizers (static scales from the calibration trace) and embeds {n} held-out "
                  "sentences of the Lee corpus's evaluation half, one sentence per forward pass (masked mean of "
                  "the last hidden state, L2-normalised, as the sentence-transformers configs state). cosine: "
                  "mean cosine similarity to the fp32 embedding; rank: Spearman correlation of the pairwise "
                  "similarities with fp32's (1 = every retrieval ranking kept). 95% seeded bootstrap over sentences.")
    if rows:
        doc.table([dict(r, cos_ci=with_ci(r["cosine"], r["cosine_lo"], r["cosine_hi"], 4),
                        rank_ci=with_ci(r["rank"], r["rank_lo"], r["rank_hi"], 4)) for r in rows],
                  ["config", "cos_ci", "rank_ci", "n_sentences", "seconds"],
                  headers={"cos_ci": "cosine to fp32 (95% CI)", "rank_ci": "rank correlation (95% CI)"})
    if skipped:
        doc.paragraph(f"Skipped (model variants are fitted on causal language models only): {', '.join(skipped)}.")
