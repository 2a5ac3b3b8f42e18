"""Massive activations as biases (Sun et al. 2024, "Massive Activations in Large Language Models"):
the paper's intervention on the residual stream.

:func:`find_massive` records the residual stream of calibration windows (``record(...,
residual=True)``) and lists the massive activations with :func:`fmtlab.sim.outliers.massive_activations`
(the paper's criterion by default: |x| >= 100 and >= 1000x the layer's median |x|). The *site* is
the first block whose output carries them, the channels those values sit in, and per channel the
mean of its massive values over the calibration sequences.

:func:`massive_intervention` then rewrites that block's output during evaluation: in each site
channel, every entry whose magnitude reaches half the smallest massive magnitude seen there in
calibration (our detection rule: it catches the sink token wherever it is, first token or a
delimiter, and nothing of ordinary size) is set to the calibration mean (``mode="mean"``) or to 0
(``"zero"``). The paper's claim: the mean keeps perplexity, zero destroys it (the massive
activations act as fixed biases).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.sim.outliers import massive_activations

__all__ = ["MassiveSites", "find_massive", "massive_intervention", "MODES"]

MODES = ("mean", "zero")


@dataclasses.dataclass(frozen=True)
class MassiveSites:
    """Where the massive activations first appear: ``block`` (index) / ``block_name`` (module),
    ``channels``, per channel ``means`` and detection ``thresholds`` (|x| at or above is
    massive), the token ``positions`` they had in calibration (position -> count), the largest
    ``ratio`` to the median, and the rows of ``massive_activations`` at that block."""

    block: int
    block_name: str
    channels: tuple[int, ...]
    means: tuple[float, ...]
    thresholds: tuple[float, ...]
    positions: dict[int, int]
    ratio: float
    rows: tuple[dict[str, Any], ...]


def find_massive(model, tokenizer, texts: Sequence[str], *, seq_len: int = 128, n_sequences: int = 4,
                 min_abs: float = 100.0, min_ratio: float = 1000.0, top_k: int = 64) -> MassiveSites | None:
    """The massive-activation site of ``model`` on calibration ``texts`` (None when no residual
    value meets the criterion). ``top_k``: values kept per block (enough for every sequence's
    sink tokens)."""
    from fmtlab.models.record import find_blocks, record  # lazy: imports torch

    with tempfile.TemporaryDirectory(prefix="fmtlab-massive-") as tmp:
        tr = record(model, tokenizer, list(texts), out=f"{tmp}/trace", seq_len=seq_len, n_sequences=n_sequences,
                    layers="(?!)", residual=True, weights=False, progress=False,
                    text_info={"source": "user texts", "purpose": "massive activations"})
        rows = massive_activations(tr, top_k=top_k, min_ratio=min_ratio, min_abs=min_abs)
    rows = [r for r in rows if r["layer"] is not None]
    if not rows:
        return None
    first = min(r["layer"] for r in rows)
    at = [r for r in rows if r["layer"] == first]
    chans = sorted({r["channel"] for r in at})
    means, thr = [], []
    for c in chans:
        vals = np.array([r["value"] for r in at if r["channel"] == c], dtype=np.float64)
        means.append(float(vals.mean()))
        thr.append(float(0.5 * np.abs(vals).min()))
    blocks = find_blocks(model)
    return MassiveSites(first, blocks[first][0], tuple(chans), tuple(means), tuple(thr),
                        dict(Counter(r["token"] for r in at)), float(max(r["ratio"] for r in at)), tuple(at))


@contextlib.contextmanager
def massive_intervention(model, sites: MassiveSites, mode: str = "mean") -> Iterator[dict[str, int]]:
    """Within the block, ``sites.block_name``'s output has its massive entries replaced (see the
    module doc). Yields a dict whose ``"replaced"`` counts the entries rewritten so far."""
    import torch  # lazy: torch is slow to import

    if mode not in MODES:
        raise FmtlabError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(sites, MassiveSites):
        raise FmtlabError(f"sites must be a MassiveSites (find_massive), got {type(sites).__name__}")
    try:
        block = model.get_submodule(sites.block_name)
    except AttributeError:
        raise FmtlabError(f"the model has no block {sites.block_name!r}") from None
    stats = {"replaced": 0}
    chans = torch.tensor(sites.channels, dtype=torch.long)
    thr = torch.tensor(sites.thresholds, dtype=torch.float32)
    new = torch.tensor(sites.means if mode == "mean" else [0.0] * len(sites.channels), dtype=torch.float32)

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        sub = h[..., chans.to(h.device)]
        mask = sub.abs() >= thr.to(h.device, h.dtype)
        stats["replaced"] += int(mask.sum())
        h = h.clone()
        h[..., chans.to(h.device)] = torch.where(mask, new.to(h.device, h.dtype).expand_as(sub), sub)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = block.register_forward_hook(hook)
    try:
        yield stats
    finally:
        handle.remove()
