"""Scoped thread count of the OpenBLAS libraries numpy and scipy loaded (no threadpoolctl).

numpy's OpenBLAS keeps its own worker threads. Where numpy GEMMs run inside a torch forward pass
(perplexity under replay configs), they and torch's OpenMP workers compete for the same cores:
on the 2-core machine, fp32 perplexity took 2.86x the plain forward passes with both at 2 threads
and 1.15x with OpenBLAS at 1 (issue 22). :func:`blas_threads` sets every loaded OpenBLAS to ``n``
threads for the duration of a block and restores the previous counts.

The libraries are found in ``/proc/self/maps`` (Linux); elsewhere, or for a BLAS without the
OpenBLAS thread API (MKL, Accelerate), the block runs unchanged. OpenBLAS's float32 GEMM can
round differently with another thread count for some shapes (measured: [300, 1000] @ [1000, 700]
differs in the last bits between 1 and 2 threads; the SmolLM2 layer shapes tried, [64-256, 576] @
[576, 576 or 1536] and [64, 1536] @ [1536, 576], did not), so a
block pinned to one thread also gives the same bits on machines with different core counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Iterator

#: (set, get) symbol names of the OpenBLAS builds numpy and scipy wheels ship, and the plain one
_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))
_LOCK = threading.Lock()


def _openblas_paths() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p)


def _controls() -> list[tuple]:
    """[(set function, get function)] of every loaded OpenBLAS."""
    out = []
    for p in _openblas_paths():
        try:
            lib = ctypes.CDLL(p, mode=ctypes.RTLD_LOCAL | getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                out.append((setter, getter))
                break
    return out


def openblas_threads() -> list[int]:
    """The thread counts of the loaded OpenBLAS libraries (empty when none is found)."""
    return [get() for _, get in _controls()]


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Within the block every loaded OpenBLAS uses ``n`` threads (process-wide; restored after)."""
    if n < 1:
        raise ValueError(f"blas_threads needs n >= 1, got {n}")
    with _LOCK:
        ctl = _controls()
        before = [get() for _, get in ctl]
        for set_, _ in ctl:
            set_(n)
    try:
        yield
    finally:
        with _LOCK:
            for (set_, _), k in zip(ctl, before):
                set_(k)
