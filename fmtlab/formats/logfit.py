"""Log_b Quant with a fitted base: the base b of a log format chosen per tensor or per output
channel to minimise the weight MSE ("Log_b Quant: Quantizing Language Models in Logarithmic
Space"; the format itself is :class:`fmtlab.formats.logfmt.LogFormat`).

Quantization of one slot (the whole tensor, or one row of W [out, in] for ``axis=0``): absmax
scale ``s = fl32(max |w|)`` (LogFormat's largest level is 1, so nothing clips; an all-zero slot
gets s = 1), ``y = fl32(w / s)``, then the log format's own rounding (log domain: geometric-mean
boundaries, underflow below b**-(kmax + 1/2), ties by its NEAREST_EVEN rule), value
``fl32(v * s)``. This is bit for bit what ``Quantizer(LogFormat(bits, b), PerTensor())`` returns
on that slot (held by tests); it is vectorised here over slots with different bases, which the
Quantizer cannot do (one format per quantizer, ~30 ms to build one).

Base search (the objective is the slot's sum of squared errors as a function of b):

* ``method="grid"``: the best of ``grid`` (default :data:`DEFAULT_GRID`, 64 bases geometric
  between 1.05 and 4.0, plus the standard bases 2 and sqrt(2));
* ``method="golden"`` (default): the coarse grid :data:`COARSE_GRID` (24 bases, geometric in
  [1.05, 4.0], plus 2 and sqrt(2)) brackets the best grid point by its two neighbours, then golden-section search on
  ln b inside the bracket until the bracket is narrower than ``tol`` (relative); the result is the
  best base evaluated anywhere (so never worse than the coarse grid, base 2 included). The objective is not
  unimodal in general (rounding makes it piecewise smooth); the bracket keeps the search local to
  the grid's best basin.

The search evaluates the objective from |y| sorted per slot with prefix sums (O(levels) per base
after one sort; ties at a bound, a measure-zero event, count below it); the final quantization
uses each fitted base's exact LogFormat table, so the reported MSE is exact.
Spec names: ``log4_fitb_per_tensor``, ``log4_fitb_per_channel`` (one base per output row), with
``_grid`` for the grid search (e.g. ``log4_fitb_per_channel_grid``).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from fmtlab.errors import FmtlabError

__all__ = ["fit_log_base", "LogBaseFit", "FittedLogQuantizer", "log_quantize_slots", "parse_logfit_name",
           "SearchObjective", "DEFAULT_GRID", "COARSE_GRID"]

DEFAULT_GRID = tuple(sorted(set(np.geomspace(1.05, 4.0, 64).tolist()) | {2.0, math.sqrt(2.0)}))
COARSE_GRID = tuple(sorted(set(np.geomspace(1.05, 4.0, 24).tolist()) | {2.0, math.sqrt(2.0)}))
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
_NAME_RE = re.compile(r"log(\d+)_fitb_(per_tensor|per_channel)(_grid|_golden)?")


def parse_logfit_name(name: str) -> dict | None:
    """``"log4_fitb_per_channel[_grid]"`` -> dict(bits=4, axis=0, method="grid"); None otherwise."""
    m = _NAME_RE.fullmatch(str(name).strip().lower())
    if not m:
        return None
    return {"bits": int(m.group(1)), "axis": 0 if m.group(2) == "per_channel" else None,
            "method": "grid" if m.group(3) == "_grid" else "golden"}


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise FmtlabError(f"fitted-base log quantization takes 2..8 bits, got {bits=!r}")
    return int(bits)


def _slots(w: np.ndarray, axis) -> np.ndarray:
    """w as [slots, L] float32 (a view where possible)."""
    if axis is None:
        return w.reshape(1, -1)
    if axis != 0 or w.ndim != 2:
        raise FmtlabError(f"axis must be None (per tensor) or 0 (per output row of a 2-D weight); "
                          f"got axis={axis!r} for shape {w.shape}")
    return w


def _as_weight(w) -> np.ndarray:
    a = np.asarray(w)
    if a.dtype != np.float32:  # weights are fitted and quantized in float32
        a = a.astype(np.float32)
    if a.size == 0:
        raise FmtlabError("fitted-base log quantization got an empty tensor")
    if not np.all(np.isfinite(a)):
        raise FmtlabError("fitted-base log quantization needs finite weights (NaN/Inf found)")
    return np.ascontiguousarray(a)


def _slot_scales(M: np.ndarray) -> np.ndarray:
    amax = np.abs(M).max(axis=1).astype(np.float32)
    return np.where(amax == 0, np.float32(1.0), amax).astype(np.float32)  # fl32(c / fl32(1.0)) = c


def _levels(b: float, bits: int) -> np.ndarray:
    """Positive levels [0, b**-kmax, ..., 1] computed by the same expression as LogFormat.magnitudes."""
    kmax = (1 << (bits - 1)) - 2
    k = np.arange(kmax, -1, -1, dtype=np.float64)
    return np.concatenate([[0.0], float(b) ** (-k)])


def _exact_tables(bases: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels [S, n+1], bounds [S, n], even [S, n+1]) of the positive half of each base's LogFormat
    grid: levels as LogFormat.magnitudes, bounds as LogFormat._bounds (geometric means, the
    underflow threshold b**-(kmax + 1/2) above zero), even flags as LogFormat._is_even. The last
    bound (1.0 to the virtual level above it: overflow) is left out; |y| <= 1 never reaches it."""
    kmax = (1 << (bits - 1)) - 2
    cache: dict[float, np.ndarray] = {}
    lev = np.empty((bases.size, kmax + 2))
    under = np.empty(bases.size)
    for i, b in enumerate(bases.tolist()):
        if b not in cache:
            cache[b] = _levels(b, bits)
        lev[i] = cache[b]
        under[i] = float(b ** (-(kmax + 0.5)))
    bnd = np.concatenate([under[:, None], np.sqrt(np.abs(lev[:, 1:-1]) * np.abs(lev[:, 2:]))], axis=1)
    k = np.arange(kmax, -1, -1)
    even = np.concatenate([[True], k % 2 == 0])
    return lev, bnd, np.broadcast_to(even, lev.shape)


def _round_slots(y: np.ndarray, lev: np.ndarray, bnd: np.ndarray, even: np.ndarray) -> np.ndarray:
    """Level index per |y| [S, L] with per-slot tables; ties to the even neighbour, else smaller."""
    idx = np.zeros(y.shape, dtype=np.int8)
    for i in range(bnd.shape[1]):
        bi = bnd[:, i:i + 1]
        idx += y > bi
        up = even[:, i + 1] & ~even[:, i]
        if up.any():
            idx += (y == bi) & up[:, None]
    return idx.astype(np.intp)


def _scaled(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _slot_scales(M)
    return (M / s[:, None]).astype(M.dtype), s  # fl(w / s) in w's precision


def _quantize(M: np.ndarray, bases: np.ndarray, bits: int) -> np.ndarray:
    y, s = _scaled(M)
    lev, bnd, even = _exact_tables(bases, bits)
    j = _round_slots(np.abs(y).astype(np.float64), lev, bnd, even)
    v = np.take_along_axis(lev, j, axis=1)
    out = (v * s[:, None].astype(np.float64)).astype(M.dtype)
    return np.where(np.signbit(y) & (v != 0), -out, out)


def log_quantize_slots(w, bits: int, bases, axis=None) -> np.ndarray:
    """Fake-quantize ``w`` with the given base per slot (one base for ``axis=None``, one per row
    for ``axis=0``), absmax scale per slot (see the module docstring)."""
    bits = _check_bits(bits)
    a = _as_weight(w)
    M = _slots(a, axis)
    b = np.asarray(bases, dtype=np.float64).reshape(-1)
    if b.size == 1 and M.shape[0] > 1:
        b = np.full(M.shape[0], b[0])
    if b.size != M.shape[0]:
        raise FmtlabError(f"{b.size} base(s) for {M.shape[0]} slot(s)")
    if not np.all(np.isfinite(b)) or np.any(b <= 1.0):
        raise FmtlabError(f"log bases must be finite and > 1, got {b[~(np.isfinite(b) & (b > 1))][:3]}")
    return _quantize(M, b, bits).reshape(a.shape)


class SearchObjective:
    """The search objective in O(levels) per slot: |y| sorted per slot with prefix sums of y and
    y**2, so the SSE at any base is a sum over the level intervals (searchsorted on the bounds):
    sum_m [S2(m) - 2 v_m S1(m) + n_m v_m**2] * s**2. Ties at a bound (measure zero) count below it."""

    def __init__(self, M: np.ndarray, bits: int) -> None:
        y, s = _scaled(M)
        Y = np.sort(np.abs(y).astype(np.float64), axis=1)
        S, L = Y.shape
        self.bits, self.S, self.L = bits, S, L
        self.s2 = s.astype(np.float64) ** 2
        z = np.zeros((S, 1))
        self.P1 = np.concatenate([z, np.cumsum(Y, axis=1)], axis=1)
        self.P2 = np.concatenate([z, np.cumsum(Y * Y, axis=1)], axis=1)
        self.off = 2.0 * np.arange(S)  # |y| <= 1: slot r lives in [2r, 2r + 1] of one sorted array
        self.Z = (Y + self.off[:, None]).reshape(-1)

    def sse(self, bases: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.S) if rows is None else rows
        kmax = (1 << (self.bits - 1)) - 2
        k = np.arange(kmax, -1, -1, dtype=np.float64)
        b = np.asarray(bases, dtype=np.float64)[:, None]
        lev = np.concatenate([np.zeros((b.shape[0], 1)), b ** (-k)[None, :]], axis=1)
        bnd = np.concatenate([b ** (-(kmax + 0.5)), np.sqrt(lev[:, 1:-1] * lev[:, 2:])], axis=1)
        c = np.searchsorted(self.Z, bnd + self.off[rows, None], side="left") - (rows * self.L)[:, None]
        c = np.clip(c, 0, self.L)
        lo = np.concatenate([np.zeros((rows.size, 1), dtype=np.int64), c], axis=1)
        hi = np.concatenate([c, np.full((rows.size, 1), self.L, dtype=np.int64)], axis=1)
        base = (rows * (self.L + 1))[:, None]  # flat offsets: no copy of the prefix sums
        P1, P2 = self.P1.reshape(-1), self.P2.reshape(-1)
        s1 = P1[base + hi] - P1[base + lo]
        s2 = P2[base + hi] - P2[base + lo]
        n = (hi - lo).astype(np.float64)
        return np.maximum((s2 - 2 * lev * s1 + n * lev * lev).sum(axis=1), 0.0) * self.s2[rows]


@dataclasses.dataclass(frozen=True, eq=False)
class LogBaseFit:
    """Fitted base(s) (float64 [slots]), the slots' MSE at those bases (exact quantization) and
    the spec that reproduces the quantization."""

    bases: np.ndarray
    mse: np.ndarray
    bits: int
    axis: int | None
    method: str

    @property
    def quantizer(self) -> "FittedLogQuantizer":
        return FittedLogQuantizer(self.bits, self.axis, self.method)


def _grid_search(obj: "SearchObjective", grid: np.ndarray):
    sse = np.stack([obj.sse(np.full(obj.S, b)) for b in grid], axis=1)  # [S, G]
    return sse, np.argmin(sse, axis=1)


def fit_log_base(w, bits: int = 4, axis: int | None = None, method: str = "golden", grid=None,
                 tol: float = 1e-4, max_iter: int = 60) -> LogBaseFit:
    """Fit the log base of ``w`` per tensor (``axis=None``) or per output row (``axis=0``) to
    minimise the weight MSE; see the module docstring for the two methods.

    grid: bases to search (all > 1; default DEFAULT_GRID for "grid", COARSE_GRID as the golden
    bracket). tol: relative bracket width at which the golden-section search stops.
    Raises FmtlabError for bad bits/axis/method/grid/tol or non-finite weights.
    """
    bits = _check_bits(bits)
    if method not in ("golden", "grid"):
        raise FmtlabError(f"method must be 'golden' or 'grid', got {method=!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise FmtlabError(f"tol must lie in (0, 1), got {tol=!r}")
    a = _as_weight(w)
    M = _slots(a, axis)
    g = np.asarray(DEFAULT_GRID if grid is None and method == "grid" else COARSE_GRID if grid is None else grid,
                   dtype=np.float64).reshape(-1)
    if g.size < (1 if method == "grid" else 3) or not np.all(np.isfinite(g)) or np.any(g <= 1.0):
        raise FmtlabError(f"grid must hold finite bases > 1 ({'1' if method == 'grid' else '3'} or more), got {grid!r}")
    g = np.unique(g)
    obj = SearchObjective(M, bits)
    sse, i = _grid_search(obj, g)
    rows = np.arange(M.shape[0])
    best_b, best_s = g[i], sse[rows, i]
    if method == "golden":
        lo = np.log(g[np.maximum(i - 1, 0)])
        hi = np.log(g[np.minimum(i + 1, g.size - 1)])
        c = hi - _GOLD * (hi - lo)
        d = lo + _GOLD * (hi - lo)
        fc, fd = obj.sse(np.exp(c)), obj.sse(np.exp(d))
        for _ in range(max_iter):
            for t, f in ((c, fc), (d, fd)):
                better = f < best_s
                best_b, best_s = np.where(better, np.exp(t), best_b), np.where(better, f, best_s)
            if np.all(np.expm1(hi - lo) <= tol):
                break
            left = fc <= fd  # minimum in [lo, d]
            hi = np.where(left, d, hi)
            lo = np.where(left, lo, c)
            c_new = hi - _GOLD * (hi - lo)
            d_new = lo + _GOLD * (hi - lo)
            # reuse the surviving interior point, evaluate the new one
            c2 = np.where(left, c_new, d)
            d2 = np.where(left, c, d_new)
            f_c2 = np.where(left, np.nan, fd)
            f_d2 = np.where(left, fc, np.nan)
            need_c, need_d = np.isnan(f_c2), np.isnan(f_d2)
            if need_c.any():
                f_c2[need_c] = obj.sse(np.exp(c2[need_c]), np.flatnonzero(need_c))
            if need_d.any():
                f_d2[need_d] = obj.sse(np.exp(d2[need_d]), np.flatnonzero(need_d))
            c, d, fc, fd = c2, d2, f_c2, f_d2
    q = _quantize(M, best_b, bits)
    diff = M.astype(np.float64) - q.astype(np.float64)
    mse = np.einsum("ij,ij->i", diff, diff) / M.shape[1]
    return LogBaseFit(best_b.astype(np.float64), mse, bits, axis, method)


@dataclasses.dataclass(frozen=True)
class FittedLogQuantizer:
    """A weight quantizer that fits its log base(s) on the weight it is given, then quantizes.

    Data-free (it sees only the weight), deterministic. ``fake_quantize(w)`` takes W [out, in]
    (any shape for ``axis=None``). Usable as a replay weight spec (``log4_fitb_per_channel``) and,
    through :func:`fmtlab.pytorch.logfit.torch_log_fit`, in ``quantize_model``.
    """

    bits: int = 4
    axis: int | None = 0
    method: str = "golden"
    grid: tuple | None = None
    tol: float = 1e-4

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.axis not in (None, 0):
            raise FmtlabError(f"axis must be None or 0, got axis={self.axis!r}")
        if self.method not in ("golden", "grid"):
            raise FmtlabError(f"method must be 'golden' or 'grid', got method={self.method!r}")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(float(v) for v in np.asarray(self.grid).reshape(-1)))

    @classmethod
    def from_name(cls, name: str, **overrides) -> "FittedLogQuantizer":
        spec = parse_logfit_name(name)
        if spec is None:
            raise FmtlabError(f"{name!r} is not a fitted-base log name (log<N>_fitb_per_tensor|per_channel[_grid])")
        unknown = set(overrides) - {"tol", "method"}
        if unknown:
            raise FmtlabError(f"{name}: unknown override(s) {sorted(unknown)}; use tol, method")
        spec.update(overrides)
        return cls(**spec)

    @property
    def name(self) -> str:
        gran = "per_tensor" if self.axis is None else "per_channel"
        return f"log{self.bits}_fitb_{gran}" + ("_grid" if self.method == "grid" else "")

    def fit(self, w) -> LogBaseFit:
        return fit_log_base(w, self.bits, self.axis, self.method, self.grid, self.tol)

    def fake_quantize(self, w) -> np.ndarray:
        a = _as_weight(w)
        return log_quantize_slots(a, self.bits, self.fit(a).bases, self.axis)

    def clip_mask(self, w) -> np.ndarray:
        """All False: the absmax scale maps every |w| to at most 1.0, the largest level."""
        return np.zeros(np.shape(w), dtype=bool)
