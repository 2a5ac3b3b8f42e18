"""PyTorch plug-in tests: run torch (and the numba reference kernels) single-threaded.

The project's machines are small and shared (2 cores, several jobs): torch's OpenMP parallel
regions then wait for descheduled threads and a gather over 8k elements can take 10 ms instead of
15 us. One intra-op thread keeps these tests fast and their timing stable; results do not depend
on the thread count (every comparison is bit-exact either way). The numba kernels of the numpy
reference path get the same treatment for the same reason.
"""

import pytest
import torch


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
