"""tests/methods: the papers' methods on tiny seeded models, torch and numba single-threaded (the
fixtures are shared with tests/pytorch, see tests/torch_helpers.py)."""

from torch_helpers import _single_thread_torch, llama  # noqa: F401 - fixtures
