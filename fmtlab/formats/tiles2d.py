"""2-D block scaling: one scale per r x c tile of a matrix, from any 1-D block or group quantizer.

- NVFP4 pre-training recipe (NVIDIA, arXiv 2509.25149): weights in 16 x 16 blocks (one E4M3
  scale per 256 elements, FP32 tensor scale), so that W and W^T share their quantized values;
  ``Tiled2D(get_quantizer("nvfp4", block_size=256), (16, 16))``;
- DeepSeek-V3 FP8 (arXiv 2412.19437, section 3.3.2): weights in 128 x 128 blocks with FP32
  scales (``fp8_e4m3_g16384`` on 128 x 128 tiles), activations in 1 x 128 tiles (that is the 1-D
  ``fp8_e4m3_g128``); the UE8M0-scale variant of later DeepSeek releases rounds every scale up
  to a power of two (``..._pow2``).

How: the matrix [M, N] (M, N multiples of r, c) is rearranged into rows of r*c elements, tile
(i, j) -> row i * (N / c) + j holding the tile in row-major order; the 1-D quantizer (group or
block size r * c along the last axis) runs on those rows; the result is rearranged back. Since
every block rule depends only on the elements of its block (their max, the element rounding),
the codes and values are exactly those of the 2-D rule. STOCHASTIC draws follow the rearranged
(tile-major) order. Scales come back as [M / r, N / c].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FmtlabError

__all__ = ["Tiled2D", "TiledQTensor", "to_tiles", "from_tiles"]


def to_tiles(x: np.ndarray, r: int, c: int) -> np.ndarray:
    """[M, N] -> [(M/r) * (N/c), r*c], tile (i, j) in row i*(N/c) + j, row-major inside."""
    M, N = x.shape
    return x.reshape(M // r, r, N // c, c).transpose(0, 2, 1, 3).reshape(-1, r * c)


def from_tiles(t: np.ndarray, M: int, N: int, r: int, c: int) -> np.ndarray:
    """Inverse of :func:`to_tiles`."""
    return t.reshape(M // r, N // c, r, c).transpose(0, 2, 1, 3).reshape(M, N)


@dataclasses.dataclass(frozen=True)
class TiledQTensor:
    """codes [M, N]; scales / scale_codes [M/r, N/c]; tensor_scale (NVFP4) or None."""

    codes: np.ndarray
    scales: np.ndarray
    scale_codes: np.ndarray | None
    tensor_scale: float | None
    values: np.ndarray  # dequantized, x's dtype


@dataclasses.dataclass(frozen=True)
class Tiled2D:
    """A 1-D quantizer applied per (r x c) tile of 2-D inputs (module docstring)."""

    quantizer: object
    tile: tuple[int, int]

    def __post_init__(self) -> None:
        r, c = self.tile
        g = self.quantizer.granularity
        size = getattr(g, "size", None)
        if size != r * c or getattr(g, "axis", -1) not in (-1,):
            raise FmtlabError(f"Tiled2D{self.tile} needs a group/block quantizer of size {r * c} "
                              f"along the last axis, got {g}")

    def _check(self, x) -> np.ndarray:
        a = np.asarray(x)
        r, c = self.tile
        if a.ndim != 2 or a.shape[0] % r or a.shape[1] % c:
            raise FmtlabError(f"2-D block scaling needs a matrix whose sides are multiples of "
                              f"{self.tile}, got shape {a.shape}")
        return a

    def fake_quantize(self, x) -> np.ndarray:
        a = self._check(x)
        r, c = self.tile
        out = self.quantizer.fake_quantize(np.ascontiguousarray(to_tiles(a, r, c)))
        return from_tiles(out, *a.shape, r, c)

    def quantize(self, x) -> TiledQTensor:
        a = self._check(x)
        r, c = self.tile
        M, N = a.shape
        qt = self.quantizer.quantize(np.ascontiguousarray(to_tiles(a, r, c)))
        shape = (M // r, N // c)
        sc = getattr(qt, "scale_codes", None)
        return TiledQTensor(from_tiles(qt.codes, M, N, r, c), np.asarray(qt.scales).reshape(shape),
                            None if sc is None else np.asarray(sc).reshape(shape),
                            getattr(qt, "tensor_scale", None),
                            from_tiles(self.quantizer.dequantize(qt), M, N, r, c))
