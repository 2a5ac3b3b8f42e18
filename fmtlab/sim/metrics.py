"""Error and outlier metrics of one tensor (numpy; sums accumulate in float64).

Definitions (x: the tensor before quantization, q: after fake quantization, e = q - x):

* ``underflow_rate``: nonzero inputs that became zero / nonzero inputs (NaN when x has no nonzero).
* ``underflow_energy_frac``: sum of x^2 over underflowed elements / sum of x^2.
* ``clip_rate``: clipped elements / all elements, where *clipped* means beyond the format's range
  after scaling (|x / scale| > format max); NaN when the quantizer cannot say (a plain callable).
* ``clipped_energy_frac``: sum of x^2 over clipped elements / sum of x^2 (the share of the signal
  that sits in clipped values).
* ``clip_error_share``: sum of e^2 over clipped elements / sum of e^2 (the share of the error that
  clipping causes; the rest is rounding and underflow).
* ``mse``: mean of e^2. ``sqnr_db``: 10 log10(sum x^2 / sum e^2); +inf when e == 0, NaN when x == 0.
* ``max_abs_err``: max |e|.

Outlier statistics of an activation X [tokens, features] (:func:`outlier_stats`):
``absmax``, ``median_abs`` (median of |x| over all elements), ``max_over_median`` (their ratio,
taking the median over nonzero |x| when the plain median is 0), ``kurtosis`` (Pearson's, m4 / m2^2
about the mean: 3 for a Gaussian), ``channels_ge6`` (feature columns with any |x| >= 6, LLM.int8()'s
outlier criterion), and the top channels (columns by max |x|) and top tokens (rows by max |x|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

LLM_INT8_THRESHOLD = 6.0


@numba.njit(cache=True, nogil=True)
def _error_pass(x, q, clipped, has_mask):  # pragma: no cover - compiled
    """One pass over flat float32 x, q (and bool clipped): float64 sums and counts.

    Returns (signal, noise, n_nonzero, n_under, under_energy, n_clip, clip_energy, clip_noise, max_err).
    """
    signal = 0.0
    noise = 0.0
    under_e = 0.0
    clip_e = 0.0
    clip_n = 0.0
    max_err = 0.0
    n_nz = 0
    n_under = 0
    n_clip = 0
    for i in range(x.size):
        xv = np.float64(x[i])
        qv = np.float64(q[i])
        e = qv - xv
        xx = xv * xv
        ee = e * e
        signal += xx
        noise += ee
        ae = abs(e)
        if ae > max_err or ae != ae:
            max_err = ae
        if xv != 0.0:
            n_nz += 1
            if qv == 0.0:
                n_under += 1
                under_e += xx
        if has_mask and clipped[i]:
            n_clip += 1
            clip_e += xx
            clip_n += ee
    return signal, noise, n_nz, n_under, under_e, n_clip, clip_e, clip_n, max_err


@numba.njit(cache=True, nogil=True)
def _error_pass_thresholds(x, q, t_lo, t_hi, Q, C, cols):  # pragma: no cover - compiled
    """``_error_pass`` with the clip mask computed in the same pass: element i (slot k = (i // Q) % C,
    or i % C with ``cols``, Q = C) is clipped where x_i > t_hi[k] or x_i < t_lo[k] (float32
    thresholds, see :meth:`ScaledClip.thresholds`). Same sums in the same order."""
    signal = 0.0
    noise = 0.0
    under_e = 0.0
    clip_e = 0.0
    clip_n = 0.0
    max_err = 0.0
    n_nz = 0
    n_under = 0
    n_clip = 0
    nrows = x.size // Q
    for r in range(nrows):
        base = r * Q
        kr = r % C
        for j in range(Q):
            k = j if cols else kr
            i = base + j
            xv = np.float64(x[i])
            qv = np.float64(q[i])
            e = qv - xv
            xx = xv * xv
            ee = e * e
            signal += xx
            noise += ee
            ae = abs(e)
            if ae > max_err or ae != ae:
                max_err = ae
            if xv != 0.0:
                n_nz += 1
                if qv == 0.0:
                    n_under += 1
                    under_e += xx
            if x[i] > t_hi[k] or x[i] < t_lo[k]:
                n_clip += 1
                clip_e += xx
                clip_n += ee
    return signal, noise, n_nz, n_under, under_e, n_clip, clip_e, clip_n, max_err


@numba.njit(cache=True, nogil=True)
def _error_pass_segments(x, q, ends):  # pragma: no cover - compiled
    """``_error_pass`` without a mask over flat float32 x, q, plus the signal and noise sums of
    each segment [ends[k-1], ends[k]) (ends[-1] == x.size), each summed from 0 in element order:
    the whole-array sums equal ``_error_pass``'s and each segment's equal ``_error_pass`` of that
    segment alone (same operations in the same order)."""
    signal = 0.0
    noise = 0.0
    under_e = 0.0
    max_err = 0.0
    n_nz = 0
    n_under = 0
    seg_s = np.zeros(ends.size)
    seg_n = np.zeros(ends.size)
    i = 0
    for k in range(ends.size):
        ss = 0.0
        sn = 0.0
        while i < ends[k]:
            xv = np.float64(x[i])
            qv = np.float64(q[i])
            e = qv - xv
            xx = xv * xv
            ee = e * e
            signal += xx
            noise += ee
            ss += xx
            sn += ee
            ae = abs(e)
            if ae > max_err or ae != ae:
                max_err = ae
            if xv != 0.0:
                n_nz += 1
                if qv == 0.0:
                    n_under += 1
                    under_e += xx
            i += 1
        seg_s[k] = ss
        seg_n[k] = sn
    return signal, noise, n_nz, n_under, under_e, max_err, seg_s, seg_n


def _div32(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (x / s).astype(np.float64)


def _last_at_most(bound: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    with np.errstate(all="ignore"):
        return _last_at_most_(bound, s)


def _last_at_most_(bound: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """Per slot, the largest float32 t with fl64(fl32(t / s)) <= bound (s > 0), or None if the
    search did not settle (the caller then evaluates the mask directly).
    x / s is monotonic in x for s > 0 (correct rounding), so {x: fl32(x/s) > bound} = {x > t}."""
    with np.errstate(all="ignore"):
        t = (bound * s.astype(np.float64)).astype(np.float32)
    t = np.where(np.isnan(t), np.float32(np.inf), t)
    for _ in range(64):  # step down while t is too large (at most a few ulps)
        bad = ~(_div32(t, s) <= bound)
        if not bad.any():
            break
        t = np.where(bad, np.nextafter(t, np.float32(-np.inf)), t)
    for _ in range(64):  # step up while the next float still qualifies
        nxt = np.nextafter(t, np.float32(np.inf))
        up = (nxt > t) & (_div32(nxt, s) <= bound)
        if not up.any():
            break
        t = np.where(up, nxt, t)
    nxt = np.nextafter(t, np.float32(np.inf))
    ok = bool(np.all(_div32(t, s) <= bound)) and not bool(np.any((nxt > t) & (_div32(nxt, s) <= bound)))
    return t if ok else None


@dataclass(frozen=True)
class ScaledClip:
    """A clip mask held as the slot scales that decide it (no per-element mask materialized).

    For flat row-major float32 x: element i belongs to slot (i // Q) % C (``cols`` False) or
    i % C (``cols`` True, Q = C); it is clipped where y = fl64(fl32(x_i / scales[k])) (+ zps[k])
    lies above ``hi`` or below ``lo`` (NaN y: not clipped), the QuantReport's definition.
    ``scales``: float32 [C]; ``zps``: int64 [C] or None.
    """

    scales: np.ndarray
    zps: np.ndarray | None
    Q: int
    C: int
    cols: bool
    lo: float
    hi: float

    def thresholds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(t_lo, t_hi) float32 per slot with clipped <=> x < t_lo or x > t_hi, exactly the mask's
        definition (None when a slot's scale is not a positive finite float, e.g. a NaN block:
        then the mask is evaluated directly)."""
        s = self.scales.astype(np.float32)
        if not np.all(np.isfinite(s) & (s > 0)):
            return None
        z = np.zeros(s.shape) if self.zps is None else self.zps.astype(np.float64)
        hi = np.float64(self.hi) - z  # y + z > hi <=> y > hi - z (small integers: exact)
        lo = np.float64(self.lo) - z
        t_hi = _last_at_most(hi, s)
        t_lo = _last_at_most(-lo, s)  # y < lo <=> -y > -lo, and fl32(-x / s) = -fl32(x / s)
        if t_hi is None or t_lo is None:
            return None
        return (-t_lo).astype(np.float32), t_hi.astype(np.float32)

    def mask(self, x: np.ndarray) -> np.ndarray:
        """The boolean clip mask of ``x`` (its shape), computed as numpy would."""
        xf = np.ascontiguousarray(x, dtype=np.float32)
        w = xf.reshape(-1, self.C) if self.cols else xf.reshape(-1, self.Q)
        s = self.scales.reshape(1, -1) if self.cols else np.tile(self.scales, w.shape[0] // self.C).reshape(-1, 1)
        with np.errstate(all="ignore"):
            y = w / s
            if self.zps is not None:
                z = self.zps.reshape(1, -1) if self.cols else np.tile(self.zps, w.shape[0] // self.C).reshape(-1, 1)
                y = y + z
            return ((y > np.float64(self.hi)) | (y < np.float64(self.lo))).reshape(xf.shape)


@numba.njit(cache=True, nogil=True)
def _moments(x):  # pragma: no cover - compiled
    """(mean, m2, m4) of flat x about its mean, in float64 (two passes)."""
    n = x.size
    s = 0.0
    for i in range(n):
        s += np.float64(x[i])
    mean = s / n
    m2 = 0.0
    m4 = 0.0
    for i in range(n):
        d = np.float64(x[i]) - mean
        d2 = d * d
        m2 += d2
        m4 += d2 * d2
    return mean, m2 / n, m4 / n


def _sumsq(a: np.ndarray) -> float:
    f = a.reshape(-1)
    if f.dtype != np.float64:
        f = f.astype(np.float64)
    return float(np.dot(f, f))


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10 log10(signal / noise): +inf for zero noise, NaN for zero signal."""
    if signal_energy <= 0.0:
        return math.nan
    if noise_energy <= 0.0:
        return math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


_SUM_KEYS = ("n", "signal", "noise", "n_nonzero", "n_under", "under_energy", "n_clip", "clip_energy",
             "clip_noise", "max_err", "has_mask")


def error_sums(x: np.ndarray, q: np.ndarray, clipped: np.ndarray | None = None) -> dict[str, float]:
    """The additive sums behind :func:`error_stats` (float64 energies, integer counts, max |e|).

    ``clipped``: a boolean mask of x's shape, a :class:`ScaledClip` (the mask computed in the same
    pass, identical sums), or None (clipping unknown).

    Sums of disjoint parts (e.g. the sequences of a trace) merge with :func:`merge_sums`; the merged
    sums give the metrics of the whole with :func:`stats_from_sums`.
    """
    x = np.asarray(x)
    q = np.asarray(q)
    if x.shape != q.shape:
        raise ValueError(f"quantized tensor has shape {q.shape}, input {x.shape}")
    if isinstance(clipped, ScaledClip):
        if x.dtype == np.float32 and x.size % clipped.Q == 0:
            xf = np.ascontiguousarray(x).reshape(-1)
            qf = np.ascontiguousarray(q, dtype=np.float32).reshape(-1)
            th = clipped.thresholds()
            if th is not None:
                vals = _error_pass_thresholds(xf, qf, th[0], th[1], clipped.Q, clipped.C, clipped.cols)
                return dict(zip(_SUM_KEYS, (float(x.size),) + tuple(float(v) for v in vals) + (1.0,)))
        clipped = clipped.mask(x)
    has_mask = clipped is not None
    if has_mask:
        clipped = np.asarray(clipped, dtype=bool)
        if clipped.shape != x.shape:
            raise ValueError(f"clip mask has shape {clipped.shape}, input {x.shape}")
        mask = np.ascontiguousarray(clipped).reshape(-1)
    else:
        mask = np.zeros(1, dtype=np.bool_)
    xf = np.ascontiguousarray(x, dtype=np.float32).reshape(-1) if x.dtype != np.float64 else x.reshape(-1)
    qf = np.ascontiguousarray(q, dtype=xf.dtype).reshape(-1)
    if has_mask:
        vals = _error_pass(xf, qf, mask, has_mask)
    else:  # the same sums from the kernel the output pass uses: one compiled kernel fewer (cold start)
        sig, noi, n_nz, n_under, under_e, max_err, _, _ = _error_pass_segments(
            xf, qf, np.array([xf.size], dtype=np.int64))
        vals = (sig, noi, n_nz, n_under, under_e, 0, 0.0, 0.0, max_err)
    return dict(zip(_SUM_KEYS, (float(x.size),) + tuple(float(v) for v in vals) + (float(has_mask),)))


def merge_sums(parts: "list[dict[str, float]]") -> dict[str, float]:
    """Sums of the union of disjoint parts (max |e| is the max; a clip mask must be known for all)."""
    if not parts:
        raise ValueError("merge_sums needs at least one part")
    out = {k: float(sum(p[k] for p in parts)) for k in _SUM_KEYS if k not in ("max_err", "has_mask")}
    errs = [p["max_err"] for p in parts]
    out["max_err"] = math.nan if any(e != e for e in errs) else max(errs)
    out["has_mask"] = float(all(p["has_mask"] for p in parts))
    return out


def stats_from_sums(s: dict[str, float]) -> dict[str, float]:
    """The metrics of :func:`error_stats` from (merged) sums."""
    n, signal, noise = s["n"], s["signal"], s["noise"]
    n_nz, n_under, n_clip = s["n_nonzero"], s["n_under"], s["n_clip"]
    out = {
        "n": float(n),
        "underflow_rate": n_under / n_nz if n_nz else math.nan,
        "underflow_energy_frac": s["under_energy"] / signal if signal > 0 else (0.0 if n_under == 0 else math.nan),
        "clip_rate": math.nan,
        "clipped_energy_frac": math.nan,
        "clip_error_share": math.nan,
        "mse": noise / n if n else math.nan,
        "sqnr_db": sqnr_db(signal, noise),
        "max_abs_err": float(s["max_err"]) if n else math.nan,
        "signal": float(signal),
        "noise": float(noise),
    }
    if s["has_mask"] and n:
        out["clip_rate"] = n_clip / n
        out["clipped_energy_frac"] = s["clip_energy"] / signal if signal > 0 else (0.0 if n_clip == 0 else math.nan)
        out["clip_error_share"] = s["clip_noise"] / noise if noise > 0 else 0.0
    return out


def error_stats(x: np.ndarray, q: np.ndarray, clipped: np.ndarray | None = None) -> dict[str, float]:
    """Underflow, clipping and error metrics of ``q`` (quantized) against ``x`` (see module doc).

    ``clipped`` is a boolean mask of x's shape (or None when unknown). ``signal`` and ``noise``
    (sum x^2, sum e^2) are returned too so that callers can pool them.
    """
    return stats_from_sums(error_sums(x, q, clipped))


def output_error_stats(y_ref: np.ndarray, y_q: np.ndarray) -> dict[str, float]:
    """Error of a layer output ``y_q`` = Q(X) Q(W)^T against ``y_ref`` = X W^T.

    mse, sqnr_db (energy-weighted over the whole tensor, so dominated by the tokens of largest
    norm, e.g. attention sinks), max_abs_err, nsr (noise / signal), and tok_sqnr_db: the median
    over rows (tokens) of each row's SQNR, which weighs every token equally.
    """
    if y_ref.shape != y_q.shape:
        raise ValueError(f"output shapes differ: {y_q.shape} vs reference {y_ref.shape}")
    return _output_stats(error_stats(y_ref, y_q), y_ref, y_q)


def output_error_stats_by_rows(y_ref: np.ndarray, y_q: np.ndarray, bounds: "list[tuple[int, int]]"
                               ) -> tuple[dict[str, float], list[float], list[float]]:
    """(:func:`output_error_stats`, per-part signal sums, per-part noise sums) of 2-D outputs whose
    rows split into the consecutive ranges ``bounds`` [(start, stop)] covering all rows: one pass
    for the float32 case, every number identical to ``output_error_stats`` and
    ``error_sums(y_ref[a:b], y_q[a:b])`` computed separately."""
    if y_ref.shape != y_q.shape:
        raise ValueError(f"output shapes differ: {y_q.shape} vs reference {y_ref.shape}")
    ok = (y_ref.ndim == 2 and y_ref.dtype == np.float32 and y_q.dtype == np.float32 and bounds
          and bounds[0][0] == 0 and bounds[-1][1] == y_ref.shape[0]
          and all(b0 == a1 for (_, b0), (a1, _) in zip(bounds, bounds[1:])))
    if not ok:
        parts = [error_sums(y_ref[a:b], y_q[a:b]) for a, b in bounds]
        return (output_error_stats(y_ref, y_q), [p["signal"] for p in parts], [p["noise"] for p in parts])
    r = np.ascontiguousarray(y_ref)
    q = np.ascontiguousarray(y_q)
    ends = np.array([b * r.shape[1] for _, b in bounds], dtype=np.int64)
    sig, noi, n_nz, n_under, under_e, max_err, seg_s, seg_n = _error_pass_segments(
        r.reshape(-1), q.reshape(-1), ends)
    sums = dict(zip(_SUM_KEYS, (float(r.size), float(sig), float(noi), float(n_nz), float(n_under),
                                float(under_e), 0.0, 0.0, 0.0, float(max_err), 0.0)))
    return _output_stats(stats_from_sums(sums), r, q), [float(v) for v in seg_s], [float(v) for v in seg_n]


def _output_stats(s: dict[str, float], y_ref: np.ndarray, y_q: np.ndarray) -> dict[str, float]:
    signal, noise = s["signal"], s["noise"]
    r32 = y_ref.reshape(-1, y_ref.shape[-1]) if y_ref.ndim else y_ref.reshape(1, 1)
    q32 = np.asarray(y_q).reshape(r32.shape)
    rs = np.empty(r32.shape[0])
    rn = np.empty(r32.shape[0])
    step = max(1, 32768 // max(1, r32.shape[1]))  # row blocks of <= 256 KiB float64: cache-resident
    for a in range(0, r32.shape[0], step):  # per-row sums do not depend on the blocking
        r = r32[a:a + step].astype(np.float64)
        e = q32[a:a + step].astype(np.float64)
        e -= r
        np.einsum("ij,ij->i", r, r, out=rs[a:a + step])
        np.einsum("ij,ij->i", e, e, out=rn[a:a + step])
    with np.errstate(divide="ignore", invalid="ignore"):
        tok = np.where(rs > 0, 10.0 * np.log10(rs / rn), np.nan)
    tok = tok[~np.isnan(tok)]
    return {"mse": s["mse"], "sqnr_db": s["sqnr_db"], "max_abs_err": s["max_abs_err"],
            "nsr": noise / signal if signal > 0 else math.nan,
            "tok_sqnr_db": float(np.median(tok)) if tok.size else math.nan}


def pearson_kurtosis(x: np.ndarray) -> float:
    """m4 / m2^2 of all elements about their mean (3 for a Gaussian; NaN for a constant tensor)."""
    f = np.ascontiguousarray(x).reshape(-1)
    if f.size == 0:
        return math.nan
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    _, m2, m4 = _moments(f)
    if m2 == 0.0:
        return math.nan
    return float(m4 / (m2 * m2))


def outlier_stats(x: np.ndarray, top_k: int = 3, positions: np.ndarray | None = None,
                  threshold: float = LLM_INT8_THRESHOLD) -> dict[str, Any]:
    """Outlier statistics of an activation ``x`` [tokens, features] (see module doc).

    ``positions`` (one per row) turns row indices into token positions in ``top_tokens``.
    Top lists hold ``[index, max |x|]`` pairs, largest first.
    """
    x2 = np.asarray(x).reshape(-1, np.asarray(x).shape[-1]) if np.asarray(x).ndim != 2 else np.asarray(x)
    a = np.abs(x2)
    absmax = float(a.max()) if a.size else math.nan
    med = float(np.median(a)) if a.size else math.nan
    if med == 0.0:
        nz = a[a != 0]
        med = float(np.median(nz)) if nz.size else 0.0
    ch = a.max(axis=0) if a.size else np.zeros(0)
    tok = a.max(axis=1) if a.size else np.zeros(0)
    k = min(top_k, ch.size)
    top_ch = np.argsort(-ch, kind="stable")[:k]
    k2 = min(top_k, tok.size)
    top_tok = np.argsort(-tok, kind="stable")[:k2]
    tok_ids = positions[top_tok] if positions is not None else top_tok
    return {
        "absmax": absmax,
        "median_abs": med,
        "max_over_median": absmax / med if med > 0 else math.inf,
        "kurtosis": pearson_kurtosis(x2),
        "channels_ge6": int(np.count_nonzero(ch >= threshold)),
        "top_channels": [[int(i), float(ch[i])] for i in top_ch],
        "top_tokens": [[int(p), float(tok[i])] for p, i in zip(tok_ids, top_tok)],
    }
