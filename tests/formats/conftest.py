"""Shared fixtures of the format tests: the peer dtypes each fmtlab format is compared with."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from fmtlab.formats import get_format

#: fmtlab name -> ml_dtypes dtype with the same layout and conventions (checked by the tests)
ML_DTYPES = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "fp8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "e8m0": ml_dtypes.float8_e8m0fnu,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    # generic minifloats whose conventions match ml_dtypes' extra types
    "e3m4_ieee": ml_dtypes.float8_e3m4,
    "e4m3_ieee": ml_dtypes.float8_e4m3,
    "e4m3_fnuz_b11": ml_dtypes.float8_e4m3b11fnuz,
}

#: fmtlab name -> (torch dtype, overflow policy that reproduces torch's cast)
TORCH_DTYPES = {
    "fp8_e4m3": (torch.float8_e4m3fn, "saturate"),  # torch saturates finite overflow and Inf
    "fp8_e5m2": (torch.float8_e5m2, None),
    "fp8_e4m3fnuz": (torch.float8_e4m3fnuz, None),
    "fp8_e5m2fnuz": (torch.float8_e5m2fnuz, None),
    "fp16": (torch.float16, None),
    "bf16": (torch.bfloat16, None),
}


@pytest.fixture(params=sorted(ML_DTYPES), ids=str)
def ml_pair(request):
    """(fmtlab format, ml_dtypes dtype) for every format ml_dtypes has."""
    return get_format(request.param), ML_DTYPES[request.param]


@pytest.fixture(params=sorted(TORCH_DTYPES), ids=str)
def torch_triple(request):
    """(fmtlab format, torch dtype, overflow policy matching torch's cast)."""
    dt, ovf = TORCH_DTYPES[request.param]
    return get_format(request.param), dt, ovf


@pytest.fixture
def serial_numba():
    """Run numba kernels on one thread for the duration of a test. The hypothesis tests encode
    thousands of tiny arrays; waking a parallel thread pool costs ~2-10 ms per call on two busy
    shared cores against ~15 us serially. Results are identical (tests hold them bit-exact)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)
