"""The base types of the outlier transforms (:mod:`fmtlab.sim.transforms`).

A transform rewrites a linear layer Y = X W^T (X [tokens, K], W [N, K], nn.Linear layout) as a
:class:`Decomposition` ``Y = row_scale * (x w^T) + sum(hp terms)`` whose ``x`` and ``w`` go
through the quantizers; :class:`Context` is what a transform may use besides X and W.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fmtlab.errors import FmtlabError

QFn = Callable[[np.ndarray], np.ndarray]

@dataclass
class Context:
    """What a transform may use besides X and W.

    positions: token position of each row of X (None: unknown); prefix_len: recorded prefix length;
    act_q / weight_q: the config's quantizers (AQAS searches with them).
    """

    positions: np.ndarray | None = None
    prefix_len: int = 0
    act_q: QFn | None = None
    weight_q: QFn | None = None


@dataclass
class HPTerm:
    """A high-precision term r * (x w^T), added to the rows ``rows`` (all rows when None)."""

    x: np.ndarray
    w: np.ndarray
    rows: np.ndarray | None = None
    row_scale: np.ndarray | None = None


@dataclass
class Decomposition:
    """Y = row_scale * (x w^T) + sum(hp terms); x and w are the parts that get quantized."""

    x: np.ndarray
    w: np.ndarray
    row_scale: np.ndarray | None = None
    hp: list[HPTerm] = field(default_factory=list)

    def output(self, act_q: QFn | None = None, weight_q: QFn | None = None,
               hp_dtype: np.dtype | None = np.float16, wq: np.ndarray | None = None,
               xq: np.ndarray | None = None) -> np.ndarray:
        """The layer output with the quantized part computed as Q_a(x) Q_w(w)^T (float32 GEMM).

        Precomputed ``xq``/``wq`` take precedence over the quantizers. ``hp_dtype`` rounds the
        high-precision terms' operands (None keeps float32).
        """
        if xq is None:
            xq = act_q(self.x) if act_q is not None else self.x
        if wq is None:
            wq = weight_q(self.w) if weight_q is not None else self.w
        y = np.asarray(xq, dtype=np.float32) @ np.asarray(wq, dtype=np.float32).T
        if self.row_scale is not None:
            y *= self.row_scale[:, None]
        for t in self.hp:
            hx, hw = t.x, t.w
            if hp_dtype is not None:
                hx = hx.astype(hp_dtype).astype(np.float32)
                hw = hw.astype(hp_dtype).astype(np.float32)
            part = hx @ hw.T
            if t.row_scale is not None:
                part *= (t.row_scale if t.rows is None else t.row_scale[t.rows])[:, None]
            if t.rows is None:
                y += part
            else:
                y[t.rows] += part
        return y

    def reconstruct(self) -> np.ndarray:
        """The unquantized output (equals X W^T up to float rounding for every transform)."""
        return self.output(None, None, hp_dtype=None)

    def then(self, inner: "Decomposition") -> "Decomposition":
        """Compose: ``inner`` decomposes this one's (x, w); returns the decomposition of the original."""
        rs = self.row_scale
        def mul(a, b):
            if a is None:
                return b
            if b is None:
                return a
            return a * b
        hp = list(self.hp)
        for t in inner.hp:
            hp.append(HPTerm(t.x, t.w, t.rows, mul(rs, t.row_scale)))
        return Decomposition(inner.x, inner.w, mul(rs, inner.row_scale), hp)


class Transform:
    """Base class. Subclasses override ``fit`` (optional) and ``decompose``."""

    name = "identity"
    #: True when the decomposition of W depends on X (then W' must be re-quantized per X)
    weight_depends_on_x = False
    #: True when X' depends on W (then X' cannot be shared between layers that share an input)
    x_depends_on_w = False
    #: True when the transform needs ctx.positions (token positions of X's rows)
    needs_positions = False
    #: True when ``fit`` learns statistics from X (static scales): the protocol fits it on
    #: calibration data only, never on the data it is scored on
    fits_data = False

    def fit(self, x: np.ndarray, w: np.ndarray, ctx: Context | None = None) -> "Transform":
        return self

    def decompose(self, x: np.ndarray, w: np.ndarray, ctx: Context | None = None) -> Decomposition:
        return Decomposition(x, w)

    def transform_activation(self, x: np.ndarray, ctx: Context | None = None) -> np.ndarray:
        """What the activation quantizer sees of a stand-alone activation (residual, K/V, probs).

        Identity unless the transform has a meaning without a weight (rotation, token exclusion);
        errors measured on the result equal errors in the original basis for these.
        """
        return x

    def __repr__(self) -> str:
        return self.name


Identity = Transform


def check_shapes(x: np.ndarray, w: np.ndarray) -> None:
    """Raise FmtlabError unless X is [tokens, K] and W is [N, K] with the same K."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise FmtlabError(f"transform needs X [tokens, K] and W [N, K]; got {x.shape} and {w.shape}")


def linear_input_map(t: Transform, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A [K, K'] float64, W' [N, K'] float32) of a fitted transform whose quantized part is
    X' = X A, W' = f(W) for every X (SmoothQuant / AQAS: A = diag(1/s), W' = W diag(s); Hadamard:
    A = R, W' = W R), so that weights fitted in the transformed space see the Hessian A^T H A.

    A is read off the decomposition of the identity matrix (rows e_j) and checked on a random
    probe. Raises FmtlabError for a transform that is not such a map: one that splits off
    high-precision terms, scales rows, depends on token positions or rewrites W per X
    (LLM.int8(), MUXQ, per-token scale, sink exclusion)."""
    check_shapes(np.zeros((1, w.shape[1]), np.float32), w)
    if t.weight_depends_on_x or t.needs_positions:
        raise FmtlabError(f"transform {t.name}: its weights or rows depend on the input, so it is not a "
                          "fixed linear map of the input (X' = X A)")
    K = w.shape[1]
    d = t.decompose(np.eye(K, dtype=np.float32), w)
    if d.hp or d.row_scale is not None or d.x.shape[0] != K or d.w.shape[1] != d.x.shape[1]:
        raise FmtlabError(f"transform {t.name} is not a linear map X' = X A of the input (it keeps "
                          "high-precision terms or scales rows)")
    A = np.asarray(d.x, np.float64)
    probe = np.random.default_rng(0).standard_normal((4, K)).astype(np.float32)
    dp = t.decompose(probe, w)
    if dp.hp or dp.row_scale is not None or not np.allclose(dp.x, probe @ A, rtol=1e-4, atol=1e-5 * float(np.abs(dp.x).max() + 1)):
        raise FmtlabError(f"transform {t.name} is not a linear map X' = X A of the input")
    return A, np.ascontiguousarray(d.w, np.float32)
