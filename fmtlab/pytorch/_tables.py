"""Per-(format, device) tensors of a format's grid, built once from ``fmt.grid`` and cached.

These are the same arrays the numba table kernel reads (``fmtlab.formats._table_kernel``), moved
to a torch device: the extended grid ``vals`` (float64, with one virtual value at each end), its
``codes`` (int32, -1 / -2 at the virtual ends), the rounding ``bounds`` (float64) and the tie flags
``even`` (bool), plus the decode table ``values`` (float64 by code, NaN for NaN/unused codes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fmtlab.formats import Format

_CODE_DTYPE = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16,
               np.dtype(np.uint32): torch.uint32}


@dataclass(frozen=True)
class TorchGrid:
    """A format's table-kernel arrays on one device (read-only by convention)."""

    vals: torch.Tensor    # float64 [n], strictly increasing; vals[0], vals[-1] virtual
    codes: torch.Tensor   # int32 [n]; -1 / -2 at the virtual ends
    bounds: torch.Tensor  # float64 [n - 1]
    even: torch.Tensor    # bool [n]
    values: torch.Tensor  # float64 [2**bits], decode table
    lo: float             # vals[0] (virtual low end)
    hi: float             # vals[-1] (virtual high end)


def code_dtype(fmt: Format) -> torch.dtype:
    """torch dtype of the codes of ``fmt`` (uint8 / uint16 / uint32, as numpy's ``fmt.code_dtype``)."""
    return _CODE_DTYPE[np.dtype(fmt.code_dtype)]


@functools.lru_cache(maxsize=256)
def torch_grid(fmt: Format, device: torch.device) -> TorchGrid:
    """The cached :class:`TorchGrid` of ``fmt`` on ``device``."""
    g = fmt.grid

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.array(a)).to(device=device, dtype=dtype)

    return TorchGrid(vals=t(g.vals, torch.float64), codes=t(g.codes, torch.int32),
                     bounds=t(g.bounds, torch.float64), even=t(g.even, torch.bool),
                     values=t(fmt.values(), torch.float64),
                     lo=float(g.vals[0]), hi=float(g.vals[-1]))


@functools.lru_cache(maxsize=256)
def values_table(fmt: Format, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The decode table of ``fmt`` cast to ``dtype`` (torch's round-to-nearest-even cast)."""
    return torch_grid(fmt, device).values.to(dtype)
