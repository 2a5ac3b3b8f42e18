"""The grid a model's weights were stored on, read from its GGUF file.

A GGUF-shipped model is already quantized: SmolLM2-135M's Linear weights are Q4_1 (4-bit codes,
one fp16 scale and one fp16 minimum per block of 32), Gemma 3 270M mixes Q5_0, Q4_K, Q6_K and
Q8_0. Once de-quantized to fp32, every weight still lies on that grid, so a tested weight format
whose grid contains it (asymmetric INT4 with groups of 32 for Q4_1) reproduces the weights almost
exactly and looks better than it would on a full-precision checkpoint.

:func:`gguf_tensor_types` reads each tensor's stored type from the file (no tensor data is read)
and names it by the transformers module it becomes, so a trace manifest can state, per layer,
what grid its weights came from; :func:`grid_summary` groups them per tensor kind (q/k/v/o/gate/
up/down) for the report. :func:`self_reproducing_share` measures, for a weight quantizer, the
share of weights that re-quantize to themselves: the report flags a result as grid-reproducing
when that share is at least :data:`REPRODUCING_SHARE`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

import numpy as np

from fmtlab.errors import FmtlabError

#: A weight result is flagged when at least this share of the weights re-quantize to themselves.
REPRODUCING_SHARE = 0.99

# llama.cpp tensor names -> transformers module names (Llama, Qwen2, Gemma 3 share them)
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output": "lm_head"}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def gguf_tensor_types(path: str) -> dict[str, str]:
    """``{module name: GGML type name}`` for the weight matrices of a GGUF file (e.g.
    ``{"model.layers.0.self_attn.q_proj": "Q4_1", ...}``); norms and biases are left out.
    Raises FmtlabError when the file is not a readable GGUF."""
    try:
        from gguf import GGUFReader  # lazy: gguf parses with numpy memmaps; only GGUF models need it
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise FmtlabError(f"cannot read the GGUF file {path}: {exc}") from None
    out: dict[str, str] = {}
    for tensor in reader.tensors:
        name = str(tensor.name)
        match = _BLK.match(name)
        if match and match.group(2) in _BLOCK_TENSORS:
            out[f"model.layers.{match.group(1)}.{_BLOCK_TENSORS[match.group(2)]}"] = tensor.tensor_type.name
        elif name.endswith(".weight") and name[:-7] in _GLOBAL_TENSORS:
            out[_GLOBAL_TENSORS[name[:-7]]] = tensor.tensor_type.name
    return out


def tensor_group(module_name: str) -> str:
    """The kind of a module (``q_proj``, ``down_proj``, ``embed_tokens``, ...): its last name part."""
    return module_name.rsplit(".", 1)[-1]


def grid_summary(types: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{tensor group: {GGML type: count}}``, groups in first-seen order."""
    out: dict[str, Counter] = {}
    for name, kind in types.items():
        out.setdefault(tensor_group(name), Counter())[kind] += 1
    return {group: dict(counts.most_common()) for group, counts in out.items()}


def self_reproducing_share(weight: np.ndarray, fake_quantize: Callable[[np.ndarray], np.ndarray]) -> float:
    """Share of the entries of ``weight`` [out, in] that ``fake_quantize`` returns unchanged
    (compared bit for bit as float32; a NaN never counts as reproduced)."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.size == 0:
        raise FmtlabError("self_reproducing_share of an empty weight")
    q = np.asarray(fake_quantize(w), dtype=np.float32)
    if q.shape != w.shape:
        raise FmtlabError(f"fake_quantize changed the weight's shape {w.shape} -> {q.shape}")
    return float(np.count_nonzero(q.view(np.uint32) == w.view(np.uint32)) / w.size)


def manifest_entry(model: Any) -> dict[str, Any] | None:
    """What a trace manifest states about the source grid of ``model``'s weights: the GGUF file's
    name and each Linear module's stored type, or None when the model did not come from a GGUF."""
    path = getattr(getattr(model, "config", None), "_fmtlab_source_gguf", None)
    if not path:
        return None
    import os

    types = gguf_tensor_types(path)
    return {"file": os.path.basename(path), "types": types, "groups": grid_summary(types)}
