"""Scaling granularities and scale rules: where scales live and how each one is chosen.

Axis conventions (the simulator and the PyTorch plug-in rely on them):
- activations X are [tokens, features], weights W are nn.Linear [out, in]: the reduction axis is
  the last one in both;
- ``PerChannel(0)`` on W = one scale per output row; ``PerToken()`` on X = one scale per row
  (in general one per position of all axes but the last);
- groups and blocks run along the last axis unless told otherwise.

Numeric convention of every rule (all in float32; a torch twin must do exactly this):
- statistics are taken over finite values (NaN ignored; Inf makes absmax/minmax/MSE raise), then
  rounded to float32;
- symmetric: ``s = fl32(c / fl32(fmt.max))`` (IEEE division) for the clip value c of the rule;
  a slice whose c is 0 gets s = 1; a quotient that underflows to 0 gets 2**-149;
- ``pow2=True`` rounds s up to a power of two, exactly: s = 2**ceil(log2 s);
- asymmetric (``MinMax``, INT formats only): lo = min(min x, 0), hi = max(max x, 0) in float32,
  ``s = fl32(fl32(hi - lo) / fl32(qmax - qmin))`` (0 -> 1), zero point
  ``z = clip(rint(qmin - float64(lo) / float64(s)), qmin, qmax)`` (float64, ties to even);
- elements: ``y = fl(x / s)`` in x's precision, rounded to the grid shifted by -z, value
  ``fl(v * s)`` (see ``fmtlab.formats.kernels``).
Block rules (MX E8M0 shared exponents, FP8 block scales) are documented in ``mx.py``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import NamedTuple, Union

import numpy as np

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats.blockfmt import ScaleFormat, SharedExpRule
from fmtlab.formats.kernels import Cols, Rows

__all__ = [
    "PerTensor", "PerChannel", "PerToken", "PerGroup", "PerBlock", "Granularity",
    "AbsMax", "Percentile", "MSE", "Static", "MinMax", "SharedExp", "FourOverSix", "MixFP4",
    "ScaleRule",
    "parse_granularity", "parse_scale_rule", "Layout", "plan_layout", "pow2_ceil",
    "SHARED_EXP_RULES",
]


def _check_axis(axis, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise FmtlabError(f"{name} axis must be an int, got axis={axis!r}")
    return int(axis)


def _check_size(size, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise FmtlabError(f"{name} size must be a positive int, got size={size!r}")
    return int(size)


def _check_tile(g) -> None:
    """A 2-D tile (r, c) of a group/block granularity: r * c == size, over the last two axes."""
    t = g.tile
    if t is None:
        return
    if (not isinstance(t, (tuple, list)) or len(t) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in t)):
        raise FmtlabError(f"tile must be two positive ints (rows, cols), got tile={t!r}")
    t = (int(t[0]), int(t[1]))
    object.__setattr__(g, "tile", t)
    if t[0] * t[1] != g.size:
        raise FmtlabError(f"a {t[0]}x{t[1]} tile holds {t[0] * t[1]} elements, but size={g.size}")
    if g.axis != -1:
        raise FmtlabError(f"2-D tiles lie on the last two axes; axis must be -1, got axis={g.axis}")


def _tile_str(g) -> str:
    return "" if g.tile is None else f", tile={g.tile[0]}x{g.tile[1]}"


# ---------------------------------------------------------------------------------------------
# Granularities: small frozen types
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    def __str__(self) -> str:
        return "tensor"


@dataclasses.dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (weights [out, in]: axis 0 = per output channel)."""

    axis: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", _check_axis(self.axis, "PerChannel"))

    def __str__(self) -> str:
        return f"channel(axis={self.axis})"


@dataclasses.dataclass(frozen=True)
class PerToken:
    """One scale per row: per position of all axes but the last (X [tokens, features])."""

    def __str__(self) -> str:
        return "token"


@dataclasses.dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along ``axis`` (which ``size`` must divide);
    with ``tile=(r, c)`` (r * c == size) one scale per r x c tile of the last two axes instead
    (DeepSeek-V3's 128 x 128 weight blocks; see ``plan_layout``)."""

    size: int
    axis: int = -1
    tile: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _check_size(self.size, "PerGroup"))
        object.__setattr__(self, "axis", _check_axis(self.axis, "PerGroup"))
        _check_tile(self)

    def __str__(self) -> str:
        return f"group({self.size}, axis={self.axis}{_tile_str(self)})"


SCALE_FORMATS = tuple(m.value for m in ScaleFormat)


@dataclasses.dataclass(frozen=True)
class PerBlock:
    """Block format: ``size`` elements along ``axis`` share a scale stored in ``scale_format``:
    ScaleFormat.E8M0 (OCP MX: a power of two from a shared-exponent rule) or
    ScaleFormat.FP8_E4M3 (NVFP4-style; names "e8m0" / "fp8_e4m3" are accepted);
    ``tensor_scale=True`` adds the FP32 per-tensor scale of NVFP4 (fp8_e4m3 blocks only).
    ``fmtlab.formats.BlockFormat`` names these (mxfp8, nvfp4, ...)."""

    size: int = 32
    axis: int = -1
    scale_format: ScaleFormat | str = ScaleFormat.E8M0
    tensor_scale: bool = False
    tile: tuple[int, int] | None = None  # (r, c): one scale per r x c tile (NVFP4 16 x 16 weights)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _check_size(self.size, "PerBlock"))
        object.__setattr__(self, "axis", _check_axis(self.axis, "PerBlock"))
        try:
            object.__setattr__(self, "scale_format", ScaleFormat.parse(self.scale_format))
        except FormatError:
            raise FmtlabError(f"PerBlock scale_format must be one of {SCALE_FORMATS}, got "
                              f"scale_format={self.scale_format!r}") from None
        if self.tensor_scale and self.scale_format != "fp8_e4m3":
            raise FmtlabError("tensor_scale=True (two-level NVFP4 scaling) needs scale_format='fp8_e4m3'")
        _check_tile(self)

    def __str__(self) -> str:
        extra = ", tensor_scale" if self.tensor_scale else ""
        return f"block({self.size}, axis={self.axis}, {self.scale_format}{extra}{_tile_str(self)})"


Granularity = Union[PerTensor, PerChannel, PerToken, PerGroup, PerBlock]
_GRANULARITIES = (PerTensor, PerChannel, PerToken, PerGroup, PerBlock)


def parse_granularity(g) -> Granularity:
    """A granularity object from itself or a short name: "tensor", "token", "channel" (axis 0),
    "channel:1", "group:128", "block:32"."""
    if isinstance(g, _GRANULARITIES):
        return g
    if not isinstance(g, str):
        raise FmtlabError(f"granularity must be a PerTensor/PerChannel/PerToken/PerGroup/PerBlock "
                          f"or a name, got {g!r}")
    key = g.strip().lower()
    if key in ("tensor", "per_tensor"):
        return PerTensor()
    if key in ("token", "per_token", "row", "rows"):
        return PerToken()
    m = re.fullmatch(r"(?:per_)?(channel|group|block)(?::(-?\d+))?", key)
    if m:
        kind, arg = m.group(1), m.group(2)
        if kind == "channel":
            return PerChannel(int(arg) if arg is not None else 0)
        if arg is None:
            raise FmtlabError(f"granularity {g!r} needs a size, e.g. '{kind}:32'")
        return PerGroup(int(arg)) if kind == "group" else PerBlock(int(arg))
    raise FmtlabError(f"unknown granularity {g!r}; use tensor, token, channel[:axis], group:SIZE, block:SIZE")


# ---------------------------------------------------------------------------------------------
# Scale rules
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AbsMax:
    """c = max |x| over the slice (finite values)."""

    def __str__(self) -> str:
        return "absmax"


@dataclasses.dataclass(frozen=True)
class Percentile:
    """c = the p-th percentile of |x| over the slice (finite values), linear interpolation:
    v = sorted |x| (float32), h = (n - 1) * (p / 100) in float64, i = floor(h), t = h - i,
    c = fl32(v[i] + (v[i+1] - v[i]) * t) in float64 (v[i+1] = v[i] when i = n - 1)."""

    p: float = 99.9

    def __post_init__(self) -> None:
        p = float(self.p)
        if not (0.0 < p <= 100.0):
            raise FmtlabError(f"percentile p must lie in (0, 100], got p={self.p!r}")
        object.__setattr__(self, "p", p)

    def __str__(self) -> str:
        return f"percentile({self.p:g})"


@dataclasses.dataclass(frozen=True)
class MSE:
    """Search clip values c_k = fl32(amax * r_k), r_k = fl32((grid - k) / grid) for
    k = 0 .. floor(grid * (1 - min_ratio)), per slice; keep the c_k whose fake-quant has the least
    sum of squared errors (float64 sum of float64 squares); ties keep the larger c (smaller k)."""

    grid: int = 100
    min_ratio: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, (int, np.integer)) or self.grid < 1:
            raise FmtlabError(f"MSE grid must be a positive int, got grid={self.grid!r}")
        if not (0.0 < float(self.min_ratio) <= 1.0):
            raise FmtlabError(f"MSE min_ratio must lie in (0, 1], got min_ratio={self.min_ratio!r}")
        object.__setattr__(self, "grid", int(self.grid))
        object.__setattr__(self, "min_ratio", float(self.min_ratio))

    @property
    def ratios(self) -> np.ndarray:
        k = np.arange(int(math.floor(self.grid * (1.0 - self.min_ratio) + 1e-9)) + 1)
        return ((self.grid - k) / self.grid).astype(np.float32)

    def __str__(self) -> str:
        return f"mse(grid={self.grid}, min_ratio={self.min_ratio:g})"


@dataclasses.dataclass(frozen=True)
class Static:
    """A given scale (calibrated elsewhere): a float or a sequence with one value per slice, plus
    zero points for asymmetric INT (optional). Stored as tuples so the rule stays hashable."""

    scale: float | tuple = 1.0
    zero_point: int | tuple | None = None

    def __post_init__(self) -> None:
        s = np.asarray(self.scale, dtype=np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise FmtlabError(f"static scale must be finite and > 0, got scale={self.scale!r}")
        object.__setattr__(self, "scale", float(s) if s.ndim == 0 else tuple(s.reshape(-1).tolist()))
        if self.zero_point is not None:
            z = np.asarray(self.zero_point)
            if z.dtype.kind not in "iu" and not np.all(z == np.round(z)):
                raise FmtlabError(f"zero points must be integers, got zero_point={self.zero_point!r}")
            zi = z.astype(np.int64)
            object.__setattr__(self, "zero_point", int(zi) if zi.ndim == 0 else tuple(zi.reshape(-1).tolist()))

    def __str__(self) -> str:
        return "static"


@dataclasses.dataclass(frozen=True)
class MinMax:
    """Asymmetric min/max scale with an integer zero point (INT formats only)."""

    def __str__(self) -> str:
        return "minmax"


SHARED_EXP_RULES = tuple(m.value for m in SharedExpRule)


@dataclasses.dataclass(frozen=True)
class SharedExp:
    """E8M0 shared-exponent rule of MX blocks: "floor" (OCP MX v1.0), "ceil", "even", "rceil"
    (the rules torchao exposes), "neuron" (AWS Neuron's quantize_mx, twice the FLOOR scale) and
    "midmax" (Brevitas: FLOOR, one step up where the block max is nearer 2**(emax+1) * X);
    see mx.py for the exact definitions."""

    mode: SharedExpRule | str = SharedExpRule.FLOOR

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", SharedExpRule.parse(self.mode))
        except FormatError:
            raise FmtlabError(f"shared-exponent rule must be one of {SHARED_EXP_RULES}, "
                              f"got {self.mode!r}") from None

    def __str__(self) -> str:
        return self.mode


@dataclasses.dataclass(frozen=True)
class FourOverSix:
    """NVFP4 "Four Over Six" block scales (arXiv 2512.02010; fmtlab/formats/four_over_six.py):
    each FP8-scaled block maps its max |x| to 6 or to 4, whichever gives the lower block error
    (``metric``: "mse" (default, the paper's), "l1" or "abs_max")."""

    metric: str = "mse"

    def __post_init__(self) -> None:
        if self.metric not in ("mse", "l1", "abs_max"):
            raise FmtlabError(f"FourOverSix metric must be mse, l1 or abs_max, got {self.metric!r}")

    def __str__(self) -> str:
        return "four_over_six" + ("" if self.metric == "mse" else f"({self.metric})")


@dataclasses.dataclass(frozen=True)
class MixFP4:
    """MixFP4 (arXiv 2605.31035; fmtlab/formats/mixfp4.py): each NVFP4 block stores E2M1 or E1M2
    elements, flagged in bit 7 of its E4M3 scale code; E1M2 is kept iff its block error
    (``metric``: "mse" (default), "l1", "abs_max") is strictly lower (fmtlab's rule)."""

    metric: str = "mse"

    def __post_init__(self) -> None:
        if self.metric not in ("mse", "l1", "abs_max"):
            raise FmtlabError(f"MixFP4 metric must be mse, l1 or abs_max, got {self.metric!r}")

    def __str__(self) -> str:
        return "mixfp4" + ("" if self.metric == "mse" else f"({self.metric})")


ScaleRule = Union[AbsMax, Percentile, MSE, Static, MinMax, SharedExp, FourOverSix, MixFP4]
_RULES = (AbsMax, Percentile, MSE, Static, MinMax, SharedExp, FourOverSix, MixFP4)


def parse_scale_rule(r) -> ScaleRule:
    """A rule from itself, a number (static scale) or a name: "absmax", "percentile",
    "percentile(99.99)", "mse", "minmax" (alias "asymmetric"), "floor", "ceil", "even", "rceil",
    "four_over_six" (alias "4over6"; "four_over_six(l1)"), "mixfp4" ("mixfp4(l1)")."""
    if isinstance(r, _RULES):
        return r
    if isinstance(r, (int, float, np.floating, np.integer)) and not isinstance(r, bool):
        return Static(float(r))
    if not isinstance(r, str):
        raise FmtlabError(f"scale_rule must be a rule object, a number or a name, got {r!r}")
    key = r.strip().lower()
    if key in ("absmax", "max", "amax"):
        return AbsMax()
    if key in ("minmax", "asymmetric", "asym"):
        return MinMax()
    if key == "mse":
        return MSE()
    if key in SHARED_EXP_RULES:
        return SharedExp(key)
    m = re.fullmatch(r"(?:four_over_six|4over6|4/6)(?:\((mse|l1|abs_max)\))?", key)
    if m:
        return FourOverSix(m.group(1) or "mse")
    m = re.fullmatch(r"mixfp4(?:\((mse|l1|abs_max)\))?", key)
    if m:
        return MixFP4(m.group(1) or "mse")
    m = re.fullmatch(r"percentile(?:\(([0-9.eE+-]+)\)|:([0-9.eE+-]+))?", key)
    if m:
        arg = m.group(1) or m.group(2)
        return Percentile(float(arg)) if arg else Percentile()
    raise FmtlabError(f"unknown scale rule {r!r}; use absmax, percentile(P), mse, minmax, a number, "
                      f"or an MX rule {SHARED_EXP_RULES}")


def pow2_ceil(s: np.ndarray) -> np.ndarray:
    """2**ceil(log2 s) for positive float32 s, exact (frexp: s = m * 2**e, m in [0.5, 1))."""
    m, e = np.frexp(np.asarray(s, dtype=np.float64))
    out = np.ldexp(1.0, np.where(m == 0.5, e - 1, e))
    with np.errstate(over="ignore"):
        return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Layouts: how a granularity maps an array to scale slots
# ---------------------------------------------------------------------------------------------
class Layout(NamedTuple):
    """How an array of ``shape`` maps onto scale slots.

    moved: the axis moved last before working (groups/blocks along another axis), else None;
    work_shape: the working array's shape; kl: the kernel layout (Rows/Cols) over its flat data;
    nslots: number of scales; scale_shape: the shape scales are reported in;
    bshape: the shape that broadcasts scales against the working array; tile: (r, c) for 2-D
    tiles: the last two axes [M, N] become [M / r, N / c, r * c], tile (i, j) in row-major order
    inside its row (scale_shape [..., M / r, N / c]).
    """

    shape: tuple
    moved: int | None
    work_shape: tuple
    kl: Rows | Cols
    nslots: int
    scale_shape: tuple
    bshape: tuple
    tile: tuple | None = None  # (r, c): the working array holds r x c tiles as rows (to_work)


def _norm_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise FmtlabError(f"{what}: axis={axis} is out of range for a {ndim}-d array")
    return axis % ndim


def plan_layout(g: Granularity, shape: tuple) -> Layout:
    """The layout of granularity ``g`` on an array of ``shape`` (raises on impossible requests)."""
    shape = tuple(int(d) for d in shape)
    nd = len(shape)
    n = int(np.prod(shape)) if nd else 1
    if n == 0:
        raise FmtlabError(f"cannot quantize an empty tensor (shape {shape})")
    if isinstance(g, PerTensor):
        return Layout(shape, None, shape, Rows(n, 1), 1, (), (1,) * nd)
    if nd == 0:
        raise FmtlabError(f"{g} needs an array with at least one axis; got a 0-d array")
    if isinstance(g, PerChannel):
        a = _norm_axis(g.axis, nd, str(g))
        C = shape[a]
        Q = int(np.prod(shape[a + 1:]))
        bshape = tuple(C if i == a else 1 for i in range(nd))
        kl = Cols(C) if Q == 1 else Rows(Q, C)
        return Layout(shape, None, shape, kl, C, (C,), bshape)
    if isinstance(g, PerToken):
        C = int(np.prod(shape[:-1]))
        return Layout(shape, None, shape, Rows(shape[-1], C), C, shape[:-1], shape[:-1] + (1,))
    if isinstance(g, (PerGroup, PerBlock)) and g.tile is not None:
        r, c = g.tile
        if nd < 2 or shape[-2] % r or shape[-1] % c:
            raise FmtlabError(f"{g}: 2-D tiles of {r}x{c} need an array whose last two axes are "
                              f"multiples of ({r}, {c}); got shape {shape}")
        sshape = shape[:-2] + (shape[-2] // r, shape[-1] // c)
        work = sshape + (r * c,)
        nslots = n // (r * c)
        return Layout(shape, None, work, Rows(r * c, nslots), nslots, sshape, sshape + (1,), (r, c))
    if isinstance(g, (PerGroup, PerBlock)):
        kind = "group" if isinstance(g, PerGroup) else "block"
        a = _norm_axis(g.axis, nd, str(g))
        L = shape[a]
        if L % g.size:
            raise FmtlabError(f"{kind} size {g.size} does not divide axis {a} of length {L} "
                              f"(shape {shape}); pad the tensor or pick a size that divides {L}")
        moved = None if a == nd - 1 else a
        work = shape[:a] + shape[a + 1:] + (L,) if moved is not None else shape
        ng = L // g.size
        nslots = n // g.size
        sshape = work[:-1] + (ng,)
        return Layout(shape, moved, work, Rows(g.size, nslots), nslots, sshape, sshape + (1,))
    raise FmtlabError(f"unknown granularity {g!r}")


def to_work(x: np.ndarray, lay: Layout) -> np.ndarray:
    """x arranged as the working array (C-contiguous)."""
    if lay.tile is not None:
        r, c = lay.tile
        M, N = lay.shape[-2:]
        lead = tuple(lay.shape[:-2])
        t = np.asarray(x).reshape(lead + (M // r, r, N // c, c))
        return np.ascontiguousarray(np.swapaxes(t, -3, -2)).reshape(lay.work_shape)
    if lay.moved is not None:
        x = np.moveaxis(x, lay.moved, -1)
    return np.ascontiguousarray(x)


def from_work(w: np.ndarray, lay: Layout) -> np.ndarray:
    """Inverse of ``to_work`` (a view where possible)."""
    if lay.tile is not None:
        r, c = lay.tile
        M, N = lay.shape[-2:]
        t = np.asarray(w).reshape(tuple(lay.shape[:-2]) + (M // r, N // c, r, c))
        return np.swapaxes(t, -3, -2).reshape(lay.shape)
    w = w.reshape(lay.work_shape)
    if lay.moved is not None:
        w = np.moveaxis(w, -1, lay.moved)
    return w


def slot_matrix(w: np.ndarray, lay: Layout) -> np.ndarray:
    """The working data as a 2-D [nslots, slot_len] array (a copy for column/middle layouts)."""
    kl = lay.kl
    if isinstance(kl, Cols):
        return np.ascontiguousarray(w.reshape(-1, kl.C).T)
    nrows = w.size // kl.Q
    if nrows == kl.C:
        return w.reshape(kl.C, kl.Q)
    return np.ascontiguousarray(w.reshape(nrows // kl.C, kl.C, kl.Q).transpose(1, 0, 2).reshape(kl.C, -1))


def broadcast_scales(values: np.ndarray, lay: Layout) -> np.ndarray:
    """Per-slot values shaped to broadcast against the working array."""
    kl = lay.kl
    v = np.asarray(values).reshape(-1)
    if isinstance(kl, Cols):
        return v.reshape(1, kl.C)
    nrows = int(np.prod(lay.work_shape)) // kl.Q
    return np.tile(v, nrows // kl.C).reshape(nrows, 1)


def work_rows(w: np.ndarray, lay: Layout) -> np.ndarray:
    """The working data as the 2-D array that ``broadcast_scales`` broadcasts against."""
    kl = lay.kl
    return w.reshape(-1, kl.C) if isinstance(kl, Cols) else w.reshape(-1, kl.Q)
