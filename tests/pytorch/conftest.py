"""PyTorch plug-in tests: run torch (and the numba reference kernels) single-threaded.

The project's machines are small and shared (2 cores, several jobs): torch's OpenMP parallel
regions then wait for descheduled threads and a gather over 8k elements can take 10 ms instead of
15 us. One intra-op thread keeps these tests fast and their timing stable; results do not depend
on the thread count (every comparison is bit-exact either way). The numba kernels of the numpy
reference path get the same treatment for the same reason.
"""

from torch_helpers import _single_thread_torch, llama  # noqa: F401 - fixtures
