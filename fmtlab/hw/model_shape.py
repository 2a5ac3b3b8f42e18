"""What the hardware sees of a transformer: the shapes of its matrix products and its KV cache.

A :class:`ModelShape` is a plain value (no torch): the Linear layers of one decoder block (in / out
features), the number of blocks, attention heads, KV heads, head dim, hidden size and vocabulary.
Build it from a transformers config dict (:meth:`ModelShape.from_config`), from an fmtlab trace
manifest (:meth:`ModelShape.from_manifest`: its recorded layers and the model config it stores), or
use :data:`SMOLLM2_135M`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from fmtlab.errors import FmtlabError

__all__ = ["LinearShape", "ModelShape", "SMOLLM2_135M"]


@dataclasses.dataclass(frozen=True)
class LinearShape:
    """One Linear layer type of a block: ``y = x W^T`` with W [out_features, in_features].

    shares_input: the layer reads the same input vector as an earlier layer of the block (k/v
    with q, up with gate): a dynamic activation quantizer runs once for them all."""

    name: str
    in_features: int
    out_features: int
    shares_input: bool = False

    def __post_init__(self) -> None:
        for k in ("in_features", "out_features"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FmtlabError(f"layer {self.name!r}: {k} must be a positive int, got {v!r}")

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


def _pos(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise FmtlabError(f"model shape: {what} must be a positive int, got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer as matrix shapes.

    linears: the Linear layers of ONE block (every block alike); n_layers blocks; attention with
    n_heads query heads and n_kv_heads key/value heads of head_dim; an LM head of vocab x hidden
    (``tied``: it shares the embedding matrix, stored once).
    """

    name: str
    linears: tuple[LinearShape, ...]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    tied: bool = True

    def __post_init__(self) -> None:
        if not self.linears:
            raise FmtlabError(f"model shape {self.name!r} has no Linear layers")
        object.__setattr__(self, "linears", tuple(self.linears))
        for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden", "vocab"):
            _pos(getattr(self, k), k)
        if self.n_heads % self.n_kv_heads:
            raise FmtlabError(f"model shape {self.name!r}: n_heads={self.n_heads} is not a multiple of "
                              f"n_kv_heads={self.n_kv_heads}")

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def block_params(self) -> int:
        """Weights of the Linear layers of one block."""
        return sum(lin.params for lin in self.linears)

    @property
    def linear_params(self) -> int:
        """Weights of every block's Linear layers (the quantized matrices)."""
        return self.n_layers * self.block_params

    @property
    def head_params(self) -> int:
        """Weights of the LM head (vocab x hidden)."""
        return self.vocab * self.hidden

    @property
    def kv_elements_per_token(self) -> int:
        """K and V elements one token adds to the cache: 2 x layers x KV heads x head dim."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    def attention_macs(self, context: int) -> int:
        """MACs of one token's attention over ``context`` cached tokens: Q K^T and P V, every head."""
        return 2 * self.n_layers * self.n_heads * self.head_dim * int(context)

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], name: str | None = None) -> "ModelShape":
        """From a transformers config dict of a Llama-like model (hidden_size, intermediate_size,
        num_hidden_layers, num_attention_heads, num_key_value_heads (default: heads), vocab_size,
        head_dim (default hidden / heads), tie_word_embeddings (default True)): q/k/v/o
        projections and a gated MLP (gate, up, down)."""
        try:
            h = _pos(cfg["hidden_size"], "hidden_size")
            ff = _pos(cfg["intermediate_size"], "intermediate_size")
            nl = _pos(cfg["num_hidden_layers"], "num_hidden_layers")
            nh = _pos(cfg["num_attention_heads"], "num_attention_heads")
            vocab = _pos(cfg["vocab_size"], "vocab_size")
        except KeyError as e:
            raise FmtlabError(f"model config lacks {e.args[0]!r} (need hidden_size, intermediate_size, "
                              "num_hidden_layers, num_attention_heads, vocab_size)") from None
        nkv = _pos(cfg.get("num_key_value_heads") or nh, "num_key_value_heads")
        hd = _pos(cfg.get("head_dim") or h // nh, "head_dim")
        lin = (LinearShape("self_attn.q_proj", h, nh * hd), LinearShape("self_attn.k_proj", h, nkv * hd, True),
               LinearShape("self_attn.v_proj", h, nkv * hd, True), LinearShape("self_attn.o_proj", nh * hd, h),
               LinearShape("mlp.gate_proj", h, ff), LinearShape("mlp.up_proj", h, ff, True),
               LinearShape("mlp.down_proj", ff, h))
        return cls(name or str(cfg.get("_name_or_path") or cfg.get("model_type") or "model"), lin, nl, nh,
                   nkv, hd, h, vocab, bool(cfg.get("tie_word_embeddings", True)))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "ModelShape":
        """From an fmtlab trace manifest: the Linear layer types it recorded (in / out features by
        ``type``) and the model config it stores (blocks, heads, KV heads, vocab). A trace of a few
        blocks still describes the whole model (its blocks are alike)."""
        model = manifest.get("model") or {}
        cfg = model.get("config") or {}
        layers = manifest.get("layers") or {}
        if not cfg or not layers:
            raise FmtlabError("trace manifest lacks model.config or layers (record it with fmtlab >= the "
                              "version that stores them)")
        seen: dict[str, LinearShape] = {}
        inputs: set = set()
        for key, info in layers.items():
            if info.get("op", "linear") != "linear":
                continue
            t = str(info.get("type") or key)
            src = info.get("input")
            shared = src is not None and src in inputs
            inputs.add(src)
            shp = LinearShape(t, int(info["in_features"]), int(info["out_features"]), shared)
            if t in seen and (seen[t].in_features, seen[t].out_features) != (shp.in_features, shp.out_features):
                raise FmtlabError(f"trace layers of type {t!r} differ in shape ({seen[t]} vs {shp})")
            seen.setdefault(t, shp)
        base = cls.from_config(dict(cfg, intermediate_size=cfg.get("intermediate_size") or 1), model.get("name"))
        return dataclasses.replace(base, linears=tuple(seen.values()))


#: SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json): hidden 576, MLP 1536, 30 blocks, 9 heads,
#: 3 KV heads of 64, vocabulary 49152, tied embeddings
SMOLLM2_135M = ModelShape.from_config(
    dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
         num_key_value_heads=3, vocab_size=49152, head_dim=64, tie_word_embeddings=True),
    name="SmolLM2-135M")
