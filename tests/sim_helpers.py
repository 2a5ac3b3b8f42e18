"""Test helpers for the numpy-replay and model-side tests (tests/sim, tests/models, tests/methods): a stand-in quantizer, a character tokenizer, tiny random models."""

from __future__ import annotations

import numpy as np


class IntQ:
    """Symmetric absmax INT stand-in: scale = max|x| / (2^(b-1) - 1) per tensor or per row,
    round half to even, saturate. ``clip_ratio`` < 1 shrinks the range (so values clip)."""

    def __init__(self, bits: int = 8, per_row: bool = False, clip_ratio: float = 1.0):
        self.qmax = 2 ** (bits - 1) - 1
        self.per_row = per_row
        self.clip_ratio = clip_ratio
        self.name = f"int{bits}_{'row' if per_row else 'tensor'}"

    def scale(self, x):
        a = np.abs(x).max(axis=-1, keepdims=True) if self.per_row else np.abs(x).max(keepdims=True)
        a = a.astype(np.float64) * self.clip_ratio
        return np.where(a > 0, a / self.qmax, 1.0)

    def fake_quantize(self, x):
        s = self.scale(x)
        return (np.clip(np.rint(x / s), -self.qmax, self.qmax) * s).astype(np.float32)

    def clip_mask(self, x):
        return np.abs(x / self.scale(x)) > self.qmax * (1 + 1e-9)


class CharTokenizer:
    """A byte-level tokenizer with the two methods record() uses."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % 250 for b in text.encode("utf-8")]}

    def convert_ids_to_tokens(self, ids):
        return [chr(i) if 32 <= i < 127 else f"<{i}>" for i in ids]


TEXTS = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with five dozen liquor jugs! " * 20]


def tiny_llama(seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0, layers: int = 2):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=256, n_embd=32, n_layer=layers, n_head=4, n_positions=128,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()
