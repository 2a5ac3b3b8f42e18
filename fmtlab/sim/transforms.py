"""Function-preserving outlier transforms of a linear layer Y = X W^T.

X is [tokens, K] and W is [N, K] (nn.Linear layout). A transform rewrites the product as

    Y = r * (X' W'^T) + sum_i r_i * (X_i W_i^T)

where X', W' go through the activation and weight quantizers, ``r`` is an optional per-row
(per-token) scale and the ``hp`` terms (X_i, W_i, restricted to some rows or not) stay in high
precision (fp16 by default, as LLM.int8() keeps its outliers). Before quantization every transform
reproduces X W^T to float tolerance (tests check this).

Transforms are fitted, then applied: ``t.fit(x_calib, w, ctx)`` returns a fitted object whose
``decompose(x, w, ctx)`` returns a :class:`Decomposition`. Static transforms (SmoothQuant, AQAS,
AuxChannels with a ``ratio``; ``fits_data = True``) choose their scales at fit time from
calibration activations, and replay / the perplexity check fit them on calibration data only;
dynamic ones (LLM.int8() with its fixed threshold, per-token scale, Hadamard, sink exclusion) work
on whatever X they are given, one sequence at a time.

Costs (stated for an [T, K] x [K, N] layer):

* :class:`LLMInt8` - outlier columns (any |x| >= 6.0) in an fp16 GEMM of [T, k] x [k, N], the rest
  INT8; gather/scatter of k columns per call. k is usually a handful.
* :class:`AuxChannels` (MUXQ-style) - each outlier column c split into m_c equal parts (auxiliary
  channels) so that every part fits under the threshold; K grows by sum(m_c - 1); all INT.
* :class:`SmoothQuant` - per-channel scale s_j = max|X_j|^a / max|W_j|^(1-a); free at inference
  when folded into the preceding norm/linear, else one multiply per activation element.
* :class:`AQAS` - SmoothQuant's scale family with a chosen per layer (grid search over a), and
  optional per-channel refinement, minimising the output error of Q(X/s) Q(W s)^T on calibration
  tokens (the dINT paper's activation-quantization-aware scaling); offline cost only.
* :class:`Hadamard` - orthonormal rotation R = D H (random signs D, block-diagonal Sylvester
  Hadamard H with the largest power-of-two block dividing K): X R, W R; online cost one fast
  Walsh-Hadamard transform per token, O(K log b); weights rotated offline.
* :class:`PerTokenScale` - X / s_t with s_t = max_j |x_tj|, output rows times s_t: one absmax and
  one multiply per token (turns any per-tensor quantizer into a per-token one).
* :class:`ExcludeTokens` - the first tokens (attention sinks, or the recorded prefix) computed in
  high precision, as a precomputed sink/prefix cache would be; the quantizers never see them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats.names import Grammar, parse_call, split_plus
from fmtlab.sim.transform_base import Context, Decomposition, HPTerm, Transform, check_shapes as _check


class LLMInt8(Transform):
    """LLM.int8() outlier decomposition: feature columns with any |x| >= threshold stay in fp16.

    Pair it with per-token activation and per-output-channel weight INT8 quantizers (vector-wise
    quantization) to get the paper's scheme. Outlier columns are found on each X (dynamic), as
    the paper does per batch.
    """

    weight_depends_on_x = True

    def __init__(self, threshold: float = 6.0):
        if not threshold > 0:
            raise FmtlabError(f"threshold must be positive, got {threshold=}")
        self.threshold = float(threshold)
        self.name = f"llm_int8({self.threshold:g})"

    def outlier_columns(self, x: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.abs(x).max(axis=0) >= self.threshold) if x.size else np.zeros(0, np.int64)

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        cols = self.outlier_columns(x)
        if cols.size == 0:
            return Decomposition(x, w)
        xr = x.copy()
        wr = w.copy()
        xr[:, cols] = 0.0
        wr[:, cols] = 0.0
        return Decomposition(xr, wr, hp=[HPTerm(np.ascontiguousarray(x[:, cols]), np.ascontiguousarray(w[:, cols]))])


class AuxChannels(Transform):
    """MUXQ-style auxiliary-channel decomposition of activation outliers (all parts quantized).

    Our reading of MUXQ (Lee, Kim, Kim, 2026: "detects outlier channels in input activations and
    introduces a small auxiliary matrix that redistributes outlier magnitudes across channels"):
    each column c with m = max|x_c| > threshold is replaced by ceil(m / threshold) equal columns
    x_c / n, and W's column c is repeated n times, so X' W'^T = X W^T exactly and every column of
    X' is at most ``threshold`` in magnitude. The threshold is absolute, or with ``ratio`` it is
    ``ratio`` times the median over columns of max|x_c| (fitted on calibration data). ``max_split``
    caps n per column.
    """

    weight_depends_on_x = True

    def __init__(self, threshold: float | None = 6.0, ratio: float | None = None, max_split: int = 64):
        if threshold is None and ratio is None:
            raise FmtlabError("AuxChannels needs threshold or ratio")
        self.threshold = threshold
        self.ratio = ratio
        self.max_split = int(max_split)
        self.name = f"aux_channels({threshold if ratio is None else f'ratio={ratio}'})"
        self._fitted_threshold: float | None = None
        self.fits_data = ratio is not None

    def fit(self, x, w, ctx=None):
        t = AuxChannels(self.threshold, self.ratio, self.max_split)
        if self.ratio is not None:
            colmax = np.abs(x).max(axis=0)
            t._fitted_threshold = float(self.ratio * np.median(colmax))
        else:
            t._fitted_threshold = float(self.threshold)
        t.name = self.name
        return t

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        thr = self._fitted_threshold if self._fitted_threshold is not None else (
            self.fit(x, w)._fitted_threshold)
        if not thr or thr <= 0:
            return Decomposition(x, w)
        colmax = np.abs(x).max(axis=0)
        n = np.minimum(np.ceil(colmax / thr), self.max_split).astype(np.int64)
        n[n < 1] = 1
        if np.all(n == 1):
            return Decomposition(x, w)
        idx = np.repeat(np.arange(x.shape[1]), n)  # column c appears n_c times
        div = n[idx].astype(np.float32)
        xs = x[:, idx] / div
        ws = w[:, idx]
        return Decomposition(np.ascontiguousarray(xs), np.ascontiguousarray(ws))


def _smooth_scales(xmax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    xmax = np.maximum(xmax.astype(np.float64), 1e-5)
    wmax = np.maximum(wmax.astype(np.float64), 1e-5)
    s = xmax ** alpha / wmax ** (1.0 - alpha)
    s[~np.isfinite(s) | (s <= 0)] = 1.0
    return s.astype(np.float32)


class SmoothQuant(Transform):
    """SmoothQuant migration: X' = X / s, W' = W * s with s_j = max|X_j|^alpha / max|W_j|^(1-alpha).

    ``fit`` takes max|X_j| from calibration activations (deploy-time scales are static).
    """

    x_depends_on_w = True
    fits_data = True

    def __init__(self, alpha: float = 0.5):
        if not 0.0 <= alpha <= 1.0:
            raise FmtlabError(f"alpha must be in [0, 1], got {alpha=}")
        self.alpha = float(alpha)
        self.name = f"smoothquant({self.alpha:g})"
        self.scales: np.ndarray | None = None

    def fit(self, x, w, ctx=None):
        _check(x, w)
        t = SmoothQuant(self.alpha)
        t.scales = _smooth_scales(np.abs(x).max(axis=0), np.abs(w).max(axis=0), self.alpha)
        return t

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        s = self.scales if self.scales is not None else self.fit(x, w).scales
        if s.shape[0] != x.shape[1]:
            raise FmtlabError(f"{self.name} was fitted for K={s.shape[0]}, got K={x.shape[1]}")
        return Decomposition(x / s, w * s)


class AQAS(Transform):
    """Activation-quantization-aware scaling (the dINT paper's AQAS, our reading).

    Chooses per-channel scales s (X / s, W * s) that minimise || Q_a(X/s) Q_w(W s)^T - X W^T ||^2 on
    calibration tokens: a grid search over SmoothQuant's family s = max|X|^a / max|W|^(1-a), then
    ``refine_rounds`` passes of per-channel refinement of the ``refine_channels`` largest-|X|
    channels (each tries the factors ``refine_factors`` and keeps the best). Needs the config's
    quantizers (``ctx.act_q``, ``ctx.weight_q``); with none it falls back to SmoothQuant(0.5).
    ``max_tokens`` caps the calibration rows (evenly strided).
    """

    x_depends_on_w = True
    fits_data = True

    def __init__(self, alphas: Sequence[float] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2)),
                 refine_rounds: int = 1, refine_channels: int = 8,
                 refine_factors: Sequence[float] = (0.5, 0.7071, 1.4142, 2.0), max_tokens: int = 512):
        self.alphas = tuple(float(a) for a in alphas)
        self.refine_rounds = int(refine_rounds)
        self.refine_channels = int(refine_channels)
        self.refine_factors = tuple(float(f) for f in refine_factors)
        self.max_tokens = int(max_tokens)
        self.name = "aqas"
        self.scales: np.ndarray | None = None
        self.alpha: float | None = None

    def fit(self, x, w, ctx=None):
        _check(x, w)
        aq = ctx.act_q if ctx is not None else None
        wq = ctx.weight_q if ctx is not None else None
        t = AQAS(self.alphas, self.refine_rounds, self.refine_channels, self.refine_factors, self.max_tokens)
        xmax = np.abs(x).max(axis=0)
        wmax = np.abs(w).max(axis=0)
        if aq is None and wq is None:
            t.alpha, t.scales = 0.5, _smooth_scales(xmax, wmax, 0.5)
            return t
        aq = aq or (lambda a: a)
        wq = wq or (lambda a: a)
        if x.shape[0] > self.max_tokens:
            x = x[np.linspace(0, x.shape[0] - 1, self.max_tokens).astype(np.int64)]
        ref = x @ w.T

        def err(s: np.ndarray) -> float:
            y = aq(np.ascontiguousarray(x / s)) @ wq(np.ascontiguousarray(w * s)).T
            d = (y - ref).astype(np.float64).ravel()
            return float(np.dot(d, d))

        best = (math.inf, None, None)
        for a in self.alphas:
            s = _smooth_scales(xmax, wmax, a)
            e = err(s)
            if e < best[0]:
                best = (e, a, s)
        e_best, a_best, s_best = best
        s_best = s_best.copy()
        order = np.argsort(-xmax)[: self.refine_channels]
        for _ in range(self.refine_rounds):
            for c in order:
                base = s_best[c]
                for f in self.refine_factors:
                    s_best[c] = base * f
                    e = err(s_best)
                    if e < e_best:
                        e_best, base = e, s_best[c]
                    s_best[c] = base
        t.alpha, t.scales = a_best, s_best
        return t

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        t = self if self.scales is not None else self.fit(x, w, ctx)
        return Decomposition(x / t.scales, w * t.scales)


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_matrix(k: int, seed: int | None = 0, max_block: int | None = None) -> np.ndarray:
    """Orthonormal K x K rotation D * blockdiag(H_b) / sqrt(b) (b: largest power of 2 dividing K).

    ``seed`` draws the random signs D (None: no signs). ``max_block`` caps b.
    """
    if k < 1:
        raise FmtlabError(f"Hadamard size must be >= 1, got {k=}")
    b = k & -k
    if max_block is not None:
        b = min(b, 1 << int(math.log2(max_block)))
    h = _sylvester(b) / math.sqrt(b)
    r = np.kron(np.eye(k // b), h)
    if seed is not None:
        d = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=k)
        r = d[:, None] * r
    return r.astype(np.float32)


class Hadamard(Transform):
    """Rotate the reduction dimension: X R, W R with R orthonormal (see :func:`hadamard_matrix`).

    As in QuaRot/SpinQuant (random Hadamard), the rotation spreads outlier channels over all
    channels. K with a small power-of-two factor gets a block-diagonal rotation (weaker mixing).
    """

    def __init__(self, seed: int | None = 0, max_block: int | None = None):
        self.seed = seed
        self.max_block = max_block
        self.name = "hadamard" if seed is not None else "hadamard(no signs)"
        self._cache: dict[int, np.ndarray] = {}

    def matrix(self, k: int) -> np.ndarray:
        r = self._cache.get(k)
        if r is None:
            r = self._cache[k] = hadamard_matrix(k, self.seed, self.max_block)
        return r

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        r = self.matrix(x.shape[1])
        return Decomposition(x @ r, w @ r)

    def transform_activation(self, x, ctx=None):
        return x @ self.matrix(x.shape[-1])


class PerTokenScale(Transform):
    """Divide each token row by its max |x| and multiply the output rows back (dynamic scale)."""

    name = "per_token_scale"

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        s = np.abs(x).max(axis=1).astype(np.float32)
        s[s == 0] = 1.0
        return Decomposition(x / s[:, None], w, row_scale=s)


class ExcludeTokens(Transform):
    """Keep the first ``n_first`` positions of every sequence out of quantization (high precision).

    ``n_first=None`` uses the recorded prefix length, or 1 (the first token, the usual attention
    sink) when there is no prefix. Needs ``ctx.positions``.
    """

    needs_positions = True

    def __init__(self, n_first: int | None = None):
        if n_first is not None and n_first < 0:
            raise FmtlabError(f"n_first must be >= 0, got {n_first=}")
        self.n_first = n_first
        self.name = f"exclude_first({n_first})" if n_first is not None else "exclude_sink"

    def _rows(self, ctx: Context | None) -> np.ndarray:
        if ctx is None or ctx.positions is None:
            raise FmtlabError(f"{self.name} needs token positions (ctx.positions)")
        n = self.n_first if self.n_first is not None else (ctx.prefix_len or 1)
        return np.flatnonzero(np.asarray(ctx.positions) < n)

    def transform_activation(self, x, ctx=None):
        rows = self._rows(ctx)
        if len(ctx.positions) != x.shape[0]:
            raise FmtlabError(f"{self.name}: {len(ctx.positions)} positions for {x.shape[0]} rows")
        if rows.size == 0:
            return x
        x = x.copy()
        x[rows] = 0.0
        return x

    def decompose(self, x, w, ctx=None):
        _check(x, w)
        if ctx is not None and ctx.positions is not None and len(ctx.positions) != x.shape[0]:
            raise FmtlabError(f"{self.name}: {len(ctx.positions)} positions for {x.shape[0]} rows")
        rows = self._rows(ctx)
        if rows.size == 0:
            return Decomposition(x, w)
        xr = x.copy()
        xr[rows] = 0.0
        return Decomposition(xr, w, hp=[HPTerm(np.ascontiguousarray(x[rows]), w, rows=rows)])


class Compose(Transform):
    """Apply transforms in order; each works on the quantized part left by the previous one."""

    def __init__(self, *transforms: Transform):
        if not transforms:
            raise FmtlabError("Compose needs at least one transform")
        self.transforms = tuple(transforms)
        self.name = "+".join(t.name for t in self.transforms)
        self.weight_depends_on_x = any(t.weight_depends_on_x for t in self.transforms)
        self.x_depends_on_w = any(t.x_depends_on_w for t in self.transforms)
        self.needs_positions = any(t.needs_positions for t in self.transforms)
        self.fits_data = any(t.fits_data for t in self.transforms)

    def fit(self, x, w, ctx=None):
        fitted = []
        for t in self.transforms:
            ft = t.fit(x, w, ctx)
            fitted.append(ft)
            d = ft.decompose(x, w, ctx)
            x, w = d.x, d.w  # later transforms fit on the quantized part, as they will see it
        c = Compose(*fitted)
        c.name = self.name
        return c

    def decompose(self, x, w, ctx=None):
        d = self.transforms[0].decompose(x, w, ctx)
        for t in self.transforms[1:]:
            d = d.then(t.decompose(d.x, d.w, ctx))
        return d

    def transform_activation(self, x, ctx=None):
        for t in self.transforms:
            x = t.transform_activation(x, ctx)
        return x


_REGISTRY: dict[str, Callable[..., Transform]] = {
    "identity": Transform, "none": Transform,
    "llm_int8": LLMInt8, "llmint8": LLMInt8,
    "muxq": AuxChannels, "aux_channels": AuxChannels,
    "smoothquant": SmoothQuant, "smooth": SmoothQuant,
    "aqas": AQAS,
    "hadamard": Hadamard, "rotate": Hadamard,
    "per_token_scale": PerTokenScale, "per_token": PerTokenScale,
    "exclude_sink": ExcludeTokens, "exclude_first": ExcludeTokens, "exclude_tokens": ExcludeTokens,
}


#: transform names -> constructors ``ctor(**kwargs) -> Transform`` (one exact name per entry)
GRAMMAR: Grammar[Callable[..., Transform]] = Grammar("transform", FmtlabError)
for _name, _ctor in _REGISTRY.items():
    GRAMMAR.exact(_name, lambda _c=_ctor: _c)


def list_transforms() -> list[str]:
    return sorted(GRAMMAR.names())


def get_transform(spec: Any) -> Transform | None:
    """A transform from a spec: None, a Transform, or a name like ``"smoothquant(alpha=0.8)"``;
    ``"a+b"`` composes (e.g. ``"exclude_sink+smoothquant"``)."""
    if spec is None or isinstance(spec, Transform):
        return spec
    if not isinstance(spec, str):
        raise FmtlabError(f"a transform must be a name or a Transform, got {spec!r}")
    parts = [p for p in split_plus(spec) if p.strip()]
    out = []
    for p in parts:
        name, kwargs = parse_call(p)
        ctor = GRAMMAR.resolve(name, known=list_transforms())
        if ctor is ExcludeTokens and name.lower() == "exclude_first" and not kwargs:
            kwargs = {"n_first": 1}
        try:
            out.append(ctor(**kwargs))
        except TypeError as exc:
            raise FmtlabError(f"bad arguments for transform {name!r}: {exc}") from exc
    out = [t for t in out if type(t) is not Transform]
    if not out:
        return None
    return out[0] if len(out) == 1 else Compose(*out)
