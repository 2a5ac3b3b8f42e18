"""``evaluate_perplexity``: next-token perplexity of a causal LM on texts or token windows.

Perplexity = exp(mean negative log-likelihood) over every predicted position: a window of T
tokens predicts tokens 2..T from their prefixes (T - 1 predictions per window, natural log,
log-softmax in float32, sums in float64). Windows are non-overlapping (no sliding context), as
``fmtlab.sim.data.token_windows`` cuts them, so quantized and float models see the same tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.devices import model_device
from fmtlab.pytorch.kv_prefix import kv_prefix_attached

__all__ = ["PerplexityResult", "evaluate_perplexity", "token_windows_of"]


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """ppl = exp(nll); nll is the mean NLL per predicted token (nats)."""

    ppl: float
    nll: float
    tokens: int
    sequences: int
    seq_len: int
    seq_nll: tuple[float, ...] = ()  # NLL sum of each window (nats), for bootstrap intervals

    def __float__(self) -> float:
        return self.ppl


def token_windows_of(data: Any, tokenizer, seq_len: int | None, n_sequences: int | None) -> torch.Tensor:
    """[sequences, tokens] int64 ids from texts (cut by ``fmtlab.sim.data.token_windows`` into
    ``seq_len``-token windows, default 128) or token ids (tensor / list of equal-length lists);
    the first ``n_sequences`` windows (all when None)."""
    if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2):
        raise FmtlabError(f"seq_len must be an integer >= 2 or None, got {seq_len!r}")
    if isinstance(data, str):
        data = [data]
    if isinstance(data, torch.Tensor):
        ids = data.to(torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2:
            raise FmtlabError(f"token ids must be [sequences, tokens], got shape {tuple(ids.shape)}")
    elif isinstance(data, Sequence) and data and all(isinstance(t, str) for t in data):
        if tokenizer is None:
            raise FmtlabError("evaluating texts needs a tokenizer (tokenizer=...)")
        from fmtlab.sim.data import token_windows  # lazy: fmtlab.sim loads numba and scipy; only texts need it

        wins, _ = token_windows(tokenizer, list(data), seq_len or 128, n_sequences)
        ids = torch.tensor(wins, dtype=torch.long)
    elif isinstance(data, Sequence) and data:
        rows = [list(r) for r in data]
        if len({len(r) for r in rows}) != 1:
            raise FmtlabError("token-id windows must all have the same length")
        ids = torch.tensor(rows, dtype=torch.long)
    else:
        raise FmtlabError("data must be texts (str or list of str), token ids (tensor or list of "
                          f"lists), got {type(data).__name__}")
    if n_sequences is not None:
        if not isinstance(n_sequences, int) or isinstance(n_sequences, bool) or n_sequences < 1:
            raise FmtlabError(f"n_sequences must be an integer >= 1 or None, got {n_sequences!r}")
        ids = ids[:n_sequences]
    if ids.shape[0] == 0:
        raise FmtlabError("no token windows to evaluate (empty data)")
    if ids.shape[1] < 2:
        raise FmtlabError(f"windows need at least 2 tokens to predict one, got {ids.shape[1]}")
    return ids


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, data: Any, tokenizer: Any = None, *,
                        seq_len: int | None = 128, n_sequences: int | None = None,
                        batch_size: int = 4, device: "torch.device | str | None" = None,
                        progress: bool = True, desc: str = "perplexity",
                        kv_prefix: Any = None) -> PerplexityResult:
    """Perplexity of ``model`` (a causal LM returning ``.logits`` or a logits tensor).

    data: texts (str or list of str; tokenized with ``tokenizer`` and cut into ``seq_len``-token
    windows, ``n_sequences`` of them or all) or token ids ([sequences, tokens] tensor or list).
    device: where to run (default: the model's parameters' device). A tqdm bar shows progress.
    The model is put in eval mode for the evaluation and restored afterwards.
    batch_size only groups sequences into forward passes: with per-sequence activation scales
    (``quantize_model``) the logits of a sequence do not depend on it, and the NLL is summed
    exactly (``math.fsum`` over every predicted token), so neither does the perplexity.
    kv_prefix: a :class:`fmtlab.pytorch.kv_prefix.KVPrefix` (e.g. ``search_prefix(...).kv_prefix``)
    every window runs behind; its tokens are not scored (each window still predicts its tokens
    2..T from its own tokens and the prefix). ``seq_nll`` holds each window's NLL sum.
    """
    if batch_size < 1:
        raise FmtlabError(f"batch_size must be >= 1, got {batch_size=}")
    ids = token_windows_of(data, tokenizer, seq_len, n_sequences)
    device = model_device(model) if device is None else device
    from tqdm.auto import tqdm  # lazy: tqdm only when evaluating

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    parts: list[torch.Tensor] = []
    bar = tqdm(total=ids.shape[0], desc=desc, unit="seq", disable=not progress, leave=False)
    attached = kv_prefix_attached(model, kv_prefix)
    attached.__enter__()
    try:
        for start in range(0, ids.shape[0], batch_size):
            batch = ids[start:start + batch_size].to(device)
            out = model(batch)  # token ids positionally (transformers: input_ids)
            logits = out.logits if hasattr(out, "logits") else out
            logp = torch.log_softmax(logits[:, :-1].to(torch.float32), dim=-1)
            nll = -logp.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)
            nll64 = nll.to(torch.float64).cpu()
            parts.append(nll64)
            total += float(nll64.sum())  # running value for the progress bar only
            count += nll.numel()
            bar.update(batch.shape[0])
            bar.set_postfix(ppl=f"{math.exp(total / count):.3f}")
    finally:
        attached.__exit__(None, None, None)
        bar.close()
        model.train(was_training)
    rows = torch.cat(parts).tolist()
    nll_mean = math.fsum(v for r in rows for v in r) / count  # exact sum: order-independent
    seq = tuple(math.fsum(r) for r in rows)
    return PerplexityResult(math.exp(nll_mean), nll_mean, count, int(ids.shape[0]), int(ids.shape[1]), seq)

