"""Tensor moves for the numpy side's scale layouts (``fmtlab.formats.scaling.Layout``).

The shape arithmetic (which axis moves last, the working shape, the kernel layout, the number
and shape of scale slots, and every error for an impossible request) is ``plan_layout``'s; this
module only moves torch tensors the way ``to_work`` / ``from_work`` / ``slot_matrix`` /
``broadcast_scales`` move numpy arrays:

- ``Rows(Q, C)``: flat working element i belongs to slot (i // Q) % C; :meth:`rows` views the
  working data as [nrows // C, C, Q] and :meth:`per_slot` shapes slot values [1, C, 1];
- ``Cols(C)``: the working data is [P, C] and column c is slot c; per-slot values are [1, C];
- :meth:`slot_matrix` is [nslots, slot_len] in the numpy slot-matrix order (MSE's sequential
  error sums and the percentile sorts see the same elements in the same order).
"""

from __future__ import annotations

import torch

from fmtlab.formats.kernels import Cols
from fmtlab.formats.scaling import Granularity, Layout, plan_layout

__all__ = ["TorchLayout"]


class TorchLayout:
    """A numpy :class:`~fmtlab.formats.scaling.Layout` applied to tensors."""

    __slots__ = ("lay",)

    def __init__(self, lay: Layout) -> None:
        self.lay = lay

    @classmethod
    def plan(cls, g: Granularity, shape) -> "TorchLayout":
        """``plan_layout(g, shape)`` (raises FmtlabError on an impossible request)."""
        return cls(plan_layout(g, tuple(shape)))

    @property
    def nslots(self) -> int:
        return self.lay.nslots

    @property
    def scale_shape(self) -> tuple:
        return self.lay.scale_shape

    def to_work(self, x: torch.Tensor) -> torch.Tensor:
        """x arranged as the working array (C-contiguous), as ``scaling.to_work``."""
        if self.lay.tile is not None:
            r, c = self.lay.tile
            M, N = self.lay.shape[-2:]
            t = x.reshape(tuple(self.lay.shape[:-2]) + (M // r, r, N // c, c))
            return t.transpose(-3, -2).contiguous().reshape(self.lay.work_shape)
        if self.lay.moved is not None:
            x = x.movedim(self.lay.moved, -1)
        return x.contiguous()

    def from_work(self, w: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_work` (any view of the working data, e.g. :meth:`rows`)."""
        if self.lay.tile is not None:
            r, c = self.lay.tile
            M, N = self.lay.shape[-2:]
            t = w.reshape(tuple(self.lay.shape[:-2]) + (M // r, N // c, r, c))
            return t.transpose(-3, -2).reshape(self.lay.shape)
        w = w.reshape(self.lay.work_shape)
        if self.lay.moved is not None:
            w = w.movedim(-1, self.lay.moved)
        return w

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        """The working data as the view that :meth:`per_slot` values broadcast against."""
        kl = self.lay.kl
        if isinstance(kl, Cols):
            return w.reshape(-1, kl.C)
        return w.reshape(-1, kl.C, kl.Q)

    def per_slot(self, v: torch.Tensor) -> torch.Tensor:
        """Per-slot values (flat, nslots or 1) shaped to broadcast against :meth:`rows`."""
        kl = self.lay.kl
        v = v.reshape(-1)
        return v.reshape(1, -1) if isinstance(kl, Cols) else v.reshape(1, -1, 1)

    def slot_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """[nslots, slot_len] in ``scaling.slot_matrix``'s order (a view where it is one there)."""
        kl = self.lay.kl
        if isinstance(kl, Cols):
            return w.reshape(-1, kl.C).t()
        r = self.rows(w)
        return r[0] if r.shape[0] == 1 else r.transpose(0, 1).reshape(kl.C, -1)
