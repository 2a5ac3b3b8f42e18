"""What `fmtlab report` records of a model too large to record whole on a 2-core, 24 GiB machine.

A trace stores every recorded Linear layer's input, output and weight in float32: SmolLM2-135M at
4 x 128 tokens is a 935 MB trace; Qwen2.5-Coder-1.5B (28 blocks, hidden 1536, FFN 8960, 196
Linear layers) would be about 11 GB, and its fp32 weights alone are 6 GiB in RAM. Above
:data:`LARGE_PARAMS` parameters, unless the user names ``--layers``, the report records and replays
a representative subset: every Linear layer of the first, middle and last block (the first block
carries the attention sink's massive activations, the last the largest activations of most
decoders), which keeps replay, pricing and the per-layer-type tables meaningful at about 3/28 of
the trace. Perplexity is always computed on the whole model (every Linear layer quantized): it
needs no trace. The plan is stated in the report's protocol.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: models with more parameters than this get the block subset by default
LARGE_PARAMS = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class RecordPlan:
    """The layers a report records (``layers``: a regular expression, or None for all) and why."""

    layers: str | None
    note: str


def block_subset(n_blocks: int) -> list[int]:
    """First, middle and last block indices (distinct, sorted) of ``n_blocks`` blocks."""
    if n_blocks < 1:
        return []
    return sorted({0, n_blocks // 2, n_blocks - 1})


def record_plan(n_params: int, block_names: list[str], layers: str | None) -> RecordPlan:
    """The report's recording plan for a model of ``n_params`` parameters whose transformer blocks
    are named ``block_names`` (e.g. ``model.layers.0`` ...), given the user's ``--layers``."""
    if layers is not None:
        return RecordPlan(layers, "the layers named by --layers")
    if n_params <= LARGE_PARAMS or len(block_names) < 4:
        return RecordPlan(None, "every Linear layer")
    picked = [block_names[i] for i in block_subset(len(block_names))]
    regex = "^(" + "|".join(name.replace(".", r"\.") for name in picked) + r")\."
    return RecordPlan(regex, f"{n_params / 1e9:.2f}B parameters: every Linear layer of blocks "
                             f"{', '.join(picked)} (first, middle, last of {len(block_names)}); "
                             "perplexity quantizes the whole model")


def model_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
