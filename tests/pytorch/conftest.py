"""PyTorch plug-in tests: run torch (and the numba reference kernels) single-threaded.

The project's machines are small and shared (2 cores, several jobs): torch's OpenMP parallel
regions then wait for descheduled threads and a gather over 8k elements can take 10 ms instead of
15 us. One intra-op thread keeps these tests fast and their timing stable; results do not depend
on the thread count (every comparison is bit-exact either way). The numba kernels of the numpy
reference path get the same treatment for the same reason.
"""

import pytest
import torch

from torch_helpers import VOCAB


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
