"""Shared helpers for the PyTorch plug-in and methods tests (imported as a plain module; the fixtures
at the end are imported by tests/pytorch/conftest.py and tests/methods/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmtlab.formats import get_format, list_formats

# every standard format plus family members that exercise unusual corners of each layout
EXTRA_FORMATS = (
    "uint16", "int16_sym", "uint2",
    "e5m0_ieee", "e2m0_fn", "e1m2_fin", "e3m4_fnuz_b-2", "e4m3_ieee_b20", "e4m3_fn_ftz", "e6m3_fn",
    "e8m2_fnuz", "dint4_nz", "dint8_d0.25_0.5", "dint5_d0.125_0.375_0.75",
    "log3_lin", "log5_b1.1892071150027210_u0.01", "log4_b3.0_nz", "log6_b1.0905077326652577",
)
ALL_FORMATS = tuple(list_formats()) + EXTRA_FORMATS

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine (CI is CPU-only)")


def bits_of(a) -> np.ndarray:
    """Integer bit patterns of a float array/tensor (float32 -> int32, float64 -> int64,
    float16/bfloat16 -> int16), so that NaN payloads, signs and -0 are compared too."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
        view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                torch.bfloat16: torch.int16}[t.dtype]
        return t.contiguous().view(view).numpy()
    a = np.ascontiguousarray(a)
    return a.view({4: np.int32, 8: np.int64, 2: np.int16}[a.dtype.itemsize])


def fmt_id(name: str) -> str:
    return str(get_format(name))

VOCAB = 97  #: vocabulary of the tiny test models


# ------------------------------------------------------------------ fixtures (see the conftests)
# The project's machines are small and shared (2 cores, several jobs): torch's OpenMP parallel
# regions then wait for descheduled threads and a gather over 8k elements can take 10 ms instead of
# 15 us. One intra-op thread keeps these tests fast and their timing stable; results do not depend
# on the thread count (every comparison is bit-exact either way). The numba kernels of the numpy
# reference path get the same treatment for the same reason.

@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import numba

        nb_before = numba.get_num_threads()
        numba.set_num_threads(1)
    except Exception:  # noqa: BLE001 - numba missing or threading layer unavailable
        numba, nb_before = None, None
    yield
    torch.set_num_threads(before)
    if numba is not None:
        numba.set_num_threads(nb_before)


@pytest.fixture(scope="module")
def llama():
    """A tiny random 2-layer Llama (seeded) for model-rewiring tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


#: the attention architectures the KV-cache and attention tests cover
ATTENTION_ARCHS = ("llama", "qwen2", "gemma3")


def tiny_causal_lm(arch: str, *, vocab: int = 97, head_dim: int | None = None, gemma_head_dim: int = 16):
    """A 2-layer random causal LM (hidden 64, 4 heads, 2 KV heads) of ``arch`` in ATTENTION_ARCHS,
    seeded; Gemma 3 with one sliding (window 4) and one full attention layer. ``head_dim``: set for
    every arch (default: the config's own, hidden / heads); ``gemma_head_dim``: Gemma 3's when
    ``head_dim`` is None."""
    import transformers as tf

    common = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
    if head_dim is not None:
        common["head_dim"] = head_dim
    torch.manual_seed(0)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common)).eval()
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common)).eval()
    if arch != "gemma3":
        raise ValueError(f"unknown arch {arch!r}; known: {ATTENTION_ARCHS}")
    cfg = tf.Gemma3TextConfig(**{"head_dim": gemma_head_dim, **common}, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"])
    return tf.Gemma3ForCausalLM(cfg).eval()
