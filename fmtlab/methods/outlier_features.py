"""LLM.int8()'s outlier features (Dettmers et al. 2022, sec. 4): which hidden dimensions carry
values of magnitude >= 6, in how many layers and at how many token positions.

The paper's criteria, applied to the hidden states that enter the attention projections and the
FFN expansion (the two inputs it analyses, one of each per block): a feature (hidden dimension)
is an *outlier feature* when some value in it has |x| >= ``alpha`` (6.0) in at least
``min_layer_share`` (25%) of those hidden states and at at least ``min_position_share`` (6%) of
all token positions of all of them. The statistics it plots against model size (its Fig. 3a):
the share of the hidden states where an outlier feature reaches ``alpha`` ("layers affected") and
the share of token positions, over all those hidden states, where one does ("sequence positions
affected"). The paper reports 65% / 35% at 6B parameters jumping to 100% / 75% at 6.7B.

The inputs are captured with forward pre-hooks on the first Linear layer that reads each: the
query projection (``q_proj``, ``query``, ``c_attn``, ``Wqkv``...) and the FFN's first projection
(``gate_proj``/``up_proj``, ``fc1``, ``intermediate.dense``, ``c_fc``, ``w1``...); only the
|x| >= alpha masks are kept (one boolean per token x feature), never the activations.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.models.record import find_blocks, find_linear_layers
from fmtlab.sim.data import token_windows

_ATTN_IN = re.compile(r"(^|\.)(q_proj|query|c_attn|Wqkv|qkv_proj|query_key_value|attn\.q)$")
_FFN_IN = re.compile(r"(^|\.)(gate_proj|up_proj|fc1|intermediate\.dense|c_fc|w1|gate_up_proj|dense_h_to_4h)$")


@dataclasses.dataclass(frozen=True)
class OutlierFeatureStats:
    """Result of :func:`outlier_feature_stats` (shares in [0, 1])."""

    n_params: int
    n_hidden_states: int  # analysed inputs: 2 per block
    n_positions: int  # token positions per hidden state
    features: tuple[int, ...]  # the outlier features (hidden dimensions)
    layer_share: float  # share of hidden states where an outlier feature reaches alpha
    position_share: float  # share of (hidden state, position) pairs where one does
    max_abs: float  # largest |x| seen in any analysed input
    alpha: float


def analysed_inputs(model) -> list[str]:
    """Names of the Linear layers whose inputs are analysed: per block, the first attention-input
    projection and the first FFN-expansion projection (in module order)."""
    blocks = find_blocks(model)
    if not blocks:
        raise FmtlabError("outlier features: the model has no repeated transformer blocks")
    names: list[str] = []
    for block_name, _ in blocks:
        lin = [n for n, _, _ in find_linear_layers(model) if n.startswith(block_name + ".")]
        for pattern in (_ATTN_IN, _FFN_IN):
            hit = next((n for n in lin if pattern.search(n[len(block_name) + 1:])), None)
            if hit is not None:
                names.append(hit)
    if not names:
        raise FmtlabError("outlier features: no attention or FFN input projection found in the blocks")
    return names


def outlier_feature_stats(model: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int = 128,
                          n_sequences: int = 4, alpha: float = 6.0, min_layer_share: float = 0.25,
                          min_position_share: float = 0.06) -> OutlierFeatureStats:
    """LLM.int8()'s outlier-feature statistics of ``model`` on windows of ``texts`` (see module doc)."""
    import torch  # lazy: the module's users import it before torch is needed

    if not alpha > 0:
        raise FmtlabError(f"alpha must be > 0, got {alpha=}")
    names = analysed_inputs(model)
    modules = dict(model.named_modules())
    wins, _ = token_windows(tokenizer, list(texts), seq_len, n_sequences)
    masks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    peak = [0.0]

    def hook_for(name):
        def hook(_module, args):
            x = args[0].detach()
            a = x.abs().reshape(-1, x.shape[-1])
            peak[0] = max(peak[0], float(a.max()))
            masks[name].append((a >= alpha).cpu().numpy())
        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            for w in wins:
                model(torch.tensor([w], dtype=torch.long, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    dims = {m[0].shape[1] for m in masks.values()}
    if len(dims) != 1:
        raise FmtlabError(f"the analysed inputs have different widths {sorted(dims)}: not one hidden size")
    hit = np.stack([np.concatenate(masks[n], axis=0) for n in names])  # [states, positions, features]
    n_states, n_pos, _ = hit.shape
    feat_layer_share = hit.any(axis=1).mean(axis=0)  # per feature: share of states where it reaches alpha
    feat_pos_share = hit.mean(axis=(0, 1))  # per feature: share of all (state, position) pairs
    features = np.flatnonzero((feat_layer_share >= min_layer_share) & (feat_pos_share >= min_position_share))
    if features.size:
        sub = hit[:, :, features]
        layer_share = float(sub.any(axis=(1, 2)).mean())
        position_share = float(sub.any(axis=2).mean())
    else:
        layer_share = position_share = 0.0
    return OutlierFeatureStats(
        n_params=int(sum(p.numel() for p in model.parameters())), n_hidden_states=int(n_states),
        n_positions=int(n_pos), features=tuple(int(f) for f in features), layer_share=layer_share,
        position_share=position_share, max_abs=peak[0], alpha=float(alpha))
