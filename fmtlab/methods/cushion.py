"""CushionCache (Son et al. 2024, "Prefixing Attention Sinks can Mitigate Activation Outliers for
Large Language Model Quantization"): a searched KV-cache prefix that takes the attention sink, so
the tokens that follow carry no massive activations and per-tensor static activation scales fit.

Two steps, the model frozen throughout:

1. :func:`search_prefix`, greedy search: the prefix starts as one start token (BOS, or a newline
   where the tokenizer has no BOS); each step appends the candidate token whose prefix gives the
   smallest *maximum activation* of the tokens that follow, and the search stops when the relative
   improvement ``(m_prev - m_best) / m_prev`` falls below ``threshold`` (the paper's 0.5) or the
   prefix reaches ``max_tokens``. A rejected step is not appended, so the curve never increases.
2. :func:`tune_prefix`, optional quantization-aware tuning of the prefix's keys/values: AdamW on
   ``CE(next token) + lam * mean over Linear layers of ||x - Q(x)||^2 / ||x||^2`` where Q is
   per-tensor INT8 (absmax) with the scale under stop-gradient (``detach``) and rounding without a
   gradient, on calibration windows behind the prefix.

Our readings (the paper's defaults where it gives them):

* "Maximum activation" = max |x| over the inputs of every Linear layer except the output head (the
  tensors per-tensor W8A8 quantizes), over the search windows, prefix tokens excluded (they run
  once, in float, and only their keys/values are kept).
* Candidate set: the paper scans the vocabulary; on 2 CPU cores one step over SmolLM2's 49k tokens
  would take hours, so the candidates are the ``n_candidates`` (default 64) most frequent tokens
  of the search texts (ties by token id) plus the BOS / EOS / newline tokens, or an explicit
  ``candidates`` list. One step costs ``len(candidates)`` forwards of the search windows (default
  4 x 32 tokens: about 40 s per step for SmolLM2-135M on one core).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from fmtlab.errors import FmtlabError
from fmtlab.models.record import find_linear_layers
from fmtlab.pytorch.kv_prefix import KVPrefix, cache_kwarg, kv_prefix_attached
from fmtlab.pytorch.perplexity import token_windows_of

__all__ = ["CushionResult", "search_prefix", "tune_prefix", "linear_input_stats", "max_activation",
           "start_token", "candidate_tokens"]


@dataclasses.dataclass(frozen=True)
class CushionResult:
    """What :func:`search_prefix` found.

    tokens: the prefix token ids; kv_prefix: their :class:`KVPrefix` (tuned when tune_steps > 0);
    curve: max activation after each accepted step (curve[0]: the start token alone), non-increasing;
    baseline: max activation without any prefix; rejected: the best value of the step that stopped
    the search (None when ``max_tokens`` stopped it); tune_losses: the tuning loss per step.
    """

    tokens: tuple[int, ...]
    kv_prefix: KVPrefix
    curve: tuple[float, ...]
    baseline: float
    rejected: float | None
    candidates: tuple[int, ...]
    seconds: float
    tune_losses: tuple[float, ...] = ()


def _linear_layers(model) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m, _ in find_linear_layers(model)]


@torch.no_grad()
def linear_input_stats(model, ids: torch.Tensor, kv_prefix: KVPrefix | None = None,
                       batch_size: int = 4, median: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per sequence and Linear layer (output head excluded): top-1 |x| and median |x| of the
    layer's input over that sequence's tokens (behind ``kv_prefix``). Returns
    (top1 [n_seq, n_layers], median [n_seq, n_layers] (zeros unless ``median``), layer names),
    float64."""
    layers = _linear_layers(model)
    if not layers:
        raise FmtlabError("the model has no Linear layers to measure")
    n = ids.shape[0]
    top = np.zeros((n, len(layers)))
    med = np.zeros((n, len(layers)))
    state = {"start": 0}

    def hook_for(j):
        def pre(module, args):
            x = args[0].detach().abs().to(torch.float32)
            x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, *x.shape[-2:])
            flat = x.reshape(x.shape[0], -1)
            s = state["start"]
            top[s:s + flat.shape[0], j] = flat.amax(dim=1).cpu().numpy()
            if median:
                med[s:s + flat.shape[0], j] = flat.median(dim=1).values.cpu().numpy()
        return pre

    handles = [m.register_forward_pre_hook(hook_for(j)) for j, (_, m) in enumerate(layers)]
    was = model.training
    model.eval()
    try:
        with kv_prefix_attached(model, kv_prefix):
            for s in range(0, n, batch_size):
                state["start"] = s
                model(ids[s:s + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return top, med, [name for name, _ in layers]


def max_activation(model, ids: torch.Tensor, kv_prefix: KVPrefix | None = None, batch_size: int = 4) -> float:
    """max |x| over every Linear input (head excluded) of the tokens ``ids`` behind ``kv_prefix``."""
    top, _, _ = linear_input_stats(model, ids, kv_prefix, batch_size, median=False)
    return float(top.max())


def start_token(tokenizer, start: "str | int" = "bos") -> int:
    """The search's first prefix token: ``"bos"`` (the tokenizer's BOS, else its newline token),
    ``"newline"`` (the id of "\\n") or an explicit token id."""
    if isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        return int(start)
    if start == "bos":
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None:
            return int(bos)
        start = "newline"
    if start == "newline":
        ids = tokenizer.encode("\n", add_special_tokens=False)
        if len(ids) != 1:
            raise FmtlabError(f"the tokenizer encodes a newline as {len(ids)} tokens; pass start=<token id>")
        return int(ids[0])
    raise FmtlabError(f"start must be 'bos', 'newline' or a token id, got {start!r}")


def candidate_tokens(tokenizer, ids: torch.Tensor, n_candidates: int = 64) -> list[int]:
    """The ``n_candidates`` most frequent token ids of ``ids`` (ties by id), then BOS / EOS / the
    newline token where the tokenizer has them (deduplicated, in that order)."""
    counts = Counter(ids.reshape(-1).tolist())
    out = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_candidates]]
    extra = [getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    try:
        nl = tokenizer.encode("\n", add_special_tokens=False)
        extra += nl[:1] if len(nl) == 1 else []
    except Exception:  # noqa: BLE001 - a tokenizer without encode: no newline candidate
        pass
    for t in extra:
        if t is not None and int(t) not in out:
            out.append(int(t))
    return out


def _windows(texts, tokenizer, seq_len: int, n_sequences: int) -> torch.Tensor:
    if isinstance(texts, torch.Tensor):
        return token_windows_of(texts, tokenizer, seq_len, n_sequences)
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise FmtlabError("search_prefix needs calibration texts (or token windows)")
    return token_windows_of(list(texts), tokenizer, seq_len, n_sequences)


def search_prefix(model: torch.nn.Module, tokenizer: Any, texts: "Sequence[str] | torch.Tensor", *,
                  threshold: float = 0.5, max_tokens: int = 8, start: "str | int" = "bos",
                  candidates: Sequence[int] | None = None, n_candidates: int = 64, seq_len: int = 32,
                  n_sequences: int = 4, batch_size: int = 4, tune_steps: int = 0, tune_lr: float = 1e-3,
                  tune_lambda: float = 1.0, tune_texts: "Sequence[str] | torch.Tensor | None" = None,
                  progress: bool = False) -> CushionResult:
    """Greedy CushionCache prefix search (see the module doc), then ``tune_steps`` of tuning.

    texts: calibration texts (cut into ``n_sequences`` windows of ``seq_len`` tokens) or token
    windows [sequences, tokens]. threshold in [0, 1): minimum relative improvement of a step;
    max_tokens >= 1: the prefix length cap (start token included). tune_texts: tuning windows
    (default: the search windows). Raises FmtlabError on bad arguments.
    """
    if not 0.0 <= threshold < 1.0:
        raise FmtlabError(f"threshold must lie in [0, 1), got {threshold=}")
    if max_tokens < 1:
        raise FmtlabError(f"max_tokens must be >= 1, got {max_tokens=}")
    if n_candidates < 1:
        raise FmtlabError(f"n_candidates must be >= 1, got {n_candidates=}")
    if tune_steps < 0:
        raise FmtlabError(f"tune_steps must be >= 0, got {tune_steps=}")
    t0 = time.perf_counter()
    ids = _windows(texts, tokenizer, seq_len, n_sequences)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    cands = [int(c) for c in candidates] if candidates is not None else candidate_tokens(tokenizer, ids, n_candidates)
    if not cands:
        raise FmtlabError("the candidate set is empty")
    first = start_token(tokenizer, start)
    for t in cands + [first]:
        if t < 0 or (isinstance(vocab, int) and t >= vocab):
            raise FmtlabError(f"token id {t} is outside the model's vocabulary (size {vocab})")
    baseline = max_activation(model, ids, None, batch_size)
    tokens = [first]
    prefix = KVPrefix.from_tokens(model, tokens)
    curve = [max_activation(model, ids, prefix, batch_size)]
    rejected = None
    while len(tokens) < max_tokens:
        best_t, best_m, best_p = None, math.inf, None
        for c in cands:
            p = KVPrefix.from_tokens(model, tokens + [c])
            m = max_activation(model, ids, p, batch_size)
            if m < best_m:
                best_t, best_m, best_p = c, m, p
        gain = (curve[-1] - best_m) / curve[-1] if curve[-1] > 0 else 0.0
        if progress:
            print(f"cushion step {len(tokens)}: token {best_t} -> max {best_m:.2f} (gain {gain:.3f})", flush=True)
        if gain <= 0 or gain < threshold:
            rejected = best_m
            break
        tokens.append(best_t)
        prefix, curve = best_p, curve + [best_m]
    losses: tuple[float, ...] = ()
    if tune_steps:
        tids = ids if tune_texts is None else _windows(tune_texts, tokenizer, seq_len, n_sequences)
        prefix, losses = tune_prefix(model, prefix, tids, steps=tune_steps, lr=tune_lr, lam=tune_lambda,
                                     batch_size=batch_size)
    return CushionResult(tuple(tokens), prefix, tuple(curve), baseline, rejected, tuple(cands),
                         time.perf_counter() - t0, losses)


def _int8_error(x: torch.Tensor) -> torch.Tensor:
    """||x - Q(x)||^2 / ||x||^2 for per-tensor INT8 absmax, scale detached, rounding gradient-free."""
    s = (x.detach().abs().amax() / 127.0).clamp_min(1e-12)
    q = torch.clamp(torch.round(x / s), -127, 127).detach() * s
    return ((x - q) ** 2).sum() / (x.detach() ** 2).sum().clamp_min(1e-30)


def tune_prefix(model: torch.nn.Module, prefix: KVPrefix, ids: torch.Tensor, *, steps: int = 20,
                lr: float = 1e-3, lam: float = 1.0, batch_size: int = 4) -> tuple[KVPrefix, tuple[float, ...]]:
    """Quantization-aware tuning of ``prefix``'s keys/values on token windows ``ids`` [n, T]: AdamW
    (``lr``) on CE + ``lam`` x mean INT8 error of the Linear inputs (see the module doc), one batch of
    ``batch_size`` windows per step in order. The model's parameters get no update (their
    ``requires_grad`` is restored). Returns (tuned prefix, loss per step)."""
    if steps < 1:
        raise FmtlabError(f"steps must be >= 1, got {steps=}")
    if lam < 0:
        raise FmtlabError(f"lam must be >= 0, got {lam=}")
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise FmtlabError(f"tuning windows must be [sequences, >= 2 tokens], got {tuple(ids.shape)}")
    keys = [torch.nn.Parameter(k.detach().clone().float()) for k in prefix.keys]
    values = [torch.nn.Parameter(v.detach().clone().float()) for v in prefix.values]
    opt = torch.optim.AdamW(keys + values, lr=lr, weight_decay=0.0)
    errs: list[torch.Tensor] = []
    layers = _linear_layers(model)
    handles = [m.register_forward_pre_hook(lambda mod, a: errs.append(_int8_error(a[0]))) for _, m in layers]
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    was = model.training
    model.eval()
    key = cache_kwarg(model)
    losses = []
    try:
        for step in range(steps):
            s = (step * batch_size) % ids.shape[0]
            batch = ids[s:s + batch_size]
            errs.clear()
            cache = prefix.cache(model, batch.shape[0], keys, values)
            out = model(input_ids=batch, use_cache=True, **{key: cache})
            logits = out.logits if hasattr(out, "logits") else out
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   batch[:, 1:].reshape(-1))
            qerr = torch.stack(errs).mean() if errs else torch.zeros(())
            loss = ce + lam * qerr
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
        for p, rg in frozen:
            p.requires_grad_(rg)
        model.train(was)
    return prefix.with_kv(keys, values), tuple(losses)
