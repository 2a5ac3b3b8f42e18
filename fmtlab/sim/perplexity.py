"""End-to-end check: perplexity of a causal LM under W/A fake quantization, per replay config.

The model is rewired with :func:`fmtlab.pytorch.quantize_model` (every Linear-like layer except
the output head; embeddings and norms stay fp32) using the *same* numpy quantizers and transforms
as :func:`fmtlab.sim.replay.replay`, wrapped as torch callables, so replay and perplexity measure the
same arithmetic. Perplexity comes from :func:`fmtlab.pytorch.evaluate_perplexity` on fixed windows
of the held-out ``"eval"`` texts (disjoint from the ``"calib"`` texts that traces record).

:func:`rank_agreement` compares the configs' perplexity order with the order of a replay metric
(by default the pooled layer-output SQNR over all Linear layers) and lists the disagreeing pairs.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim.quant import QuantFn
from fmtlab.sim.replay import ReplayConfig, _resolve_config, make_config


class _TorchQ:
    """A numpy quantizer as a torch callable ``q(x, grad=...)`` (straight-through, no autograd use)."""

    def __init__(self, q: QuantFn):
        self.q = q
        self.name = q.name

    def __call__(self, x, grad: str = "ste"):
        import torch

        a = x.detach().to(torch.float32).cpu().numpy()
        y = torch.from_numpy(np.ascontiguousarray(self.q(a), dtype=np.float32)).to(x.device, x.dtype)
        return y

    def __repr__(self) -> str:
        return self.name


def eval_windows(tokenizer, seq_len: int = 256, n_sequences: int = 16, texts: Sequence[str] | None = None):
    """[n_sequences, seq_len] token ids from ``texts`` (default: the held-out "eval" split)."""
    import torch

    from fmtlab.sim.data import default_texts, token_windows

    wins, _ = token_windows(tokenizer, list(texts) if texts is not None else default_texts("eval"),
                            seq_len, n_sequences)
    return torch.tensor(wins, dtype=torch.long)


def perplexity(model, tokenizer, config: Any = "fp32", *, texts: Sequence[str] | None = None,
               seq_len: int = 256, n_sequences: int = 16, batch_size: int = 4, progress: bool = True,
               ids=None) -> dict[str, Any]:
    """Perplexity of ``model`` with ``config`` (a replay config / preset name) on held-out text.

    Returns a dict: config, description, ppl, nll, tokens, seconds.
    """
    try:
        from fmtlab.pytorch import evaluate_perplexity, quantize_model
    except ImportError as exc:  # pragma: no cover - the plug-in ships with fmtlab
        raise FmtlabError("the perplexity check needs fmtlab.pytorch (quantize_model, evaluate_perplexity)") from exc
    cfg = make_config(config)
    r = _resolve_config(cfg)
    if ids is None:
        ids = eval_windows(tokenizer, seq_len, n_sequences, texts)
    t0 = time.perf_counter()
    if r.wq.identity and r.aq.identity and r.transform is None:
        qmodel = model
    else:
        qmodel, _summary = quantize_model(model, weights=None if r.wq.identity else _TorchQ(r.wq),
                                          activations=None if r.aq.identity else _TorchQ(r.aq),
                                          transform=r.transform)
    res = evaluate_perplexity(qmodel, ids, batch_size=batch_size, progress=progress, desc=cfg.name)
    return {"config": cfg.name, "description": cfg.describe(), "ppl": float(res.ppl), "nll": float(res.nll),
            "tokens": int(res.tokens), "seconds": time.perf_counter() - t0}


def perplexity_table(model, tokenizer, configs: Sequence[Any], **kw: Any) -> list[dict[str, Any]]:
    """:func:`perplexity` for each config on the same token windows."""
    ids = kw.pop("ids", None)
    if ids is None:
        ids = eval_windows(tokenizer, kw.pop("seq_len", 256), kw.pop("n_sequences", 16), kw.pop("texts", None))
    else:
        for k in ("seq_len", "n_sequences", "texts"):
            kw.pop(k, None)
    return [perplexity(model, tokenizer, c, ids=ids, **kw) for c in configs]


def _ranks(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):  # average ranks over ties
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def rank_agreement(ppl: dict[str, float], metric: dict[str, float], higher_is_better: bool = True) -> dict[str, Any]:
    """Spearman correlation between perplexity (lower better) and a replay metric, and the
    config pairs whose order the two disagree on. Configs missing from either side are skipped."""
    names = [n for n in ppl if n in metric and math.isfinite(ppl[n])]
    m = [metric[n] for n in names]
    m = [(1e9 if x == math.inf else x) for x in m]
    bad = -np.asarray(m, dtype=np.float64) if higher_is_better else np.asarray(m, dtype=np.float64)
    if len(names) < 2:
        return {"configs": names, "spearman": math.nan, "disagreements": []}
    rp, rm = _ranks([ppl[n] for n in names]), _ranks(bad)
    rho = float(np.corrcoef(rp, rm)[0, 1]) if np.std(rp) > 0 and np.std(rm) > 0 else math.nan
    dis = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            dp = np.sign(ppl[a] - ppl[b])
            dm = np.sign(bad[i] - bad[j])
            if dp != 0 and dm != 0 and dp != dm:
                dis.append((a, b))
    return {"configs": names, "spearman": rho, "disagreements": dis}
