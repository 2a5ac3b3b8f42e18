"""Fast numba kernels for element formats: bit-trick rounding cores and the layouts that use them.

Numeric convention (every kernel here; the table kernel ``_table_kernel`` is the reference and
tests hold each path here to it bit for bit):
- An element input is taken at its exact value. float32 is widened to float64 where a core works
  in float64 (exact); float64 input is rounded once, from float64.
- Rounding: NEAREST_EVEN / NEAREST_AWAY / TOWARD_ZERO by integer arithmetic on the input's bits
  (minifloats), ``rint``/``trunc`` (INT), or exact comparisons with the format's float64 rounding
  boundaries (dINT, log). STOCHASTIC goes up iff ``r < (x - L) / (U - L)`` evaluated in float64
  exactly as the table kernel does (same draws give the same codes).
- Scaled layouts compute ``y = x / s`` in the input's precision (IEEE division, correctly
  rounded; for power-of-two scales ``x * (1/s)``, which is the same number) and return
  ``fl(v * s)`` where v is the element value: float32 product for minifloat/INT values (exact
  float32 numbers), ``fl32(fl64(v) * s)`` for dINT/log values (float64 table values).
- Codes never leave the fused fake-quant kernels (``fq_rows``/``fq_cols``/``mx_fq``/``fp8scale_fq``);
  ``encode_rows``/``encode_cols`` produce codes (and, for STOCHASTIC, values from them).

Families and their parameter tuples (``_kernel_params``; built once per format by the KERNEL
handlers of ``kernel_plans``):
  MF  minifloats (any ExMy, bias, ieee/fn/fnuz/fin, subnormals or FTZ); variants MF1 (float32's
      exponent range, e.g. bf16) and MFX (outside float32's range: float64 core only)
  IN  INTn (signed, unsigned, narrow; zero points shift the clamp bounds)
  TB  sign-symmetric table formats (dINT, log-base-b): estimate + exact fix-up against the
      format's float64 boundaries; variants TBD/TBD32 (dINT, <= 2 denormal levels), TBS/TBS32
      (<= 8 thresholds: a select chain, no table loads), TBL (log, one-step fix-up)
Each family implements a code core (one code from a float64 input, any rounding) and a value
core (the element value of float32 or float64 y, RNE/RNA/TZ); ``elem_code(P, T, x64, r, z)`` and
``elem_fq(P, T, V, y, z)`` dispatch on the parameter tuple's type at compile time
(``numba.extending.overload``), so each (family, dtype) pair compiles once and is cached. Codes,
STOCHASTIC and float64 fake-quant use the base types only (``kernel_plans.generic``), which keeps the
number of compiled specializations small.

Where things live (this module is the facade; importing it does not import numba, the kernels
load on first attribute access):
  _kernel_params     parameter tuples and constants (no numba)
  _mf_cores          shared helpers and minifloat cores        _int_table_cores  INT, dINT, log cores
  _kernel_dispatch   elem_code / elem_fq (compile-time dispatch)
  _layout_kernels    encode_rows/cols, fq_rows/cols, sse_rows, finite_absmax_rows  (cache=True)
  _block_kernels     mx_fq, fp8scale_fq, mx_exps, fp8_scales, mx_shared_exp        (cache=True)
numba's cache only notices edits to the file that defines a cached kernel: the two cached modules
record the digest of the core sources (CORE_DIGEST) and refuse to import when it is stale.
"""

from __future__ import annotations

import importlib

from fmtlab.formats._kernel_params import *  # noqa: F401,F403  (tuples and constants, no numba)
from fmtlab.formats._kernel_params import __all__ as _PARAM_NAMES

_KERNELS = {
    "fmtlab.formats._layout_kernels": ("encode_rows", "encode_cols", "fq_rows", "fq_cols",
                                       "fq_vec", "sse_rows", "finite_absmax_rows"),
    "fmtlab.formats._block_kernels": ("mx_shared_exp", "mx_fq", "fp8scale_fq", "mx_exps",
                                      "fp8_scales"),
}
_WHERE = {name: mod for mod, names in _KERNELS.items() for name in names}

__all__ = [*_PARAM_NAMES, *_WHERE]


#: calls whose largest array holds fewer elements run the parallel kernels on one thread. A
#: numba parallel region needs every worker thread scheduled: on busy cores (load above the core
#: count) a 150k-element fake-quant took 50-110 ms with 2 threads against 0.14-0.4 ms with one
#: (benchmarks/bench_formats.py; issue 22), and the gain on idle cores is at most the core count.
#: The kernels' results do not depend on the thread count (elementwise work, integer counts).
PARALLEL_MIN_ELEMENTS = 1 << 20


def _size_gated(fn):
    import numpy as np
    import numba  # lazy: loaded with the first kernel (this facade stays numba-free on import)

    get, set_ = numba.get_num_threads, numba.set_num_threads

    def run(*args):
        if get() > 1 and max((a.size for a in args if isinstance(a, np.ndarray)), default=0) \
                < PARALLEL_MIN_ELEMENTS:
            prev = get()
            set_(1)  # per calling thread
            try:
                return fn(*args)
            finally:
                set_(prev)
        return fn(*args)

    run.__name__ = getattr(fn, "__name__", "kernel")
    run.__doc__ = fn.__doc__
    run.py_func = getattr(fn, "py_func", None)
    run.dispatcher = fn
    return run


def __getattr__(name: str):
    """Load a numba kernel on first use (PEP 562): ``import fmtlab.formats`` stays numba-free.
    Parallel kernels come wrapped so that small calls run on one thread (PARALLEL_MIN_ELEMENTS)."""
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    fn = getattr(importlib.import_module(mod), name)
    if getattr(fn, "targetoptions", {}).get("parallel"):
        fn = _size_gated(fn)
    globals()[name] = fn
    return fn
