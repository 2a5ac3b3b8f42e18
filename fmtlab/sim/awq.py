"""AWQ-style activation-aware per-input-channel scaling (Lin et al. 2023), for any weight quantizer.

For a layer W [out, in] with calibration Hessian H = 2 X^T X / n, AWQ scales input channel j by
s_j = a_j ** alpha (normalised: s / sqrt(max s * min s), as the reference implementation does),
quantizes W diag(s) and divides the input by s (merged into the previous op: a norm's weight, the
previous Linear's rows). The effective weight is W_eff = Q(W diag(s)) diag(s)^-1, and alpha is the
grid point of {0, 1/n_grid, ..., (n_grid - 1)/n_grid} with the least calibration output error
tr((W - W_eff) H (W - W_eff)^T) (ties: the smaller alpha; alpha = 0 is RTN).

a_j: the reference uses the mean |x_j| over calibration tokens; here a_j = sqrt(H_jj / 2), the RMS
of x_j, so that the Hessian is the only calibration statistic (a documented deviation). Under GPTQ
(``awq(..., method="gptq")``) the scaled layer is GPTQ-quantized with the Hessian of the scaled
input, diag(1/s) H diag(1/s). Merging into the previous op keeps the float model's function; with
weight-only quantization W_eff is exactly what the merged model computes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats.quantizer import Quantizer
from fmtlab.sim.gptq import gptq, hessian_error
from fmtlab.sim.scale_search import searched_fake_quantize

__all__ = ["AWQResult", "awq"]


@dataclasses.dataclass(frozen=True, eq=False)
class AWQResult:
    """weight: float32 W_eff [out, in]; scaled: the quantized W diag(s) (on the quantizer's grid);
    scales: float32 s [in] (divide the layer input by s); alpha: the chosen exponent; errors:
    calibration error per grid alpha (float64)."""

    weight: np.ndarray
    scaled: np.ndarray
    scales: np.ndarray
    alpha: float
    errors: np.ndarray


def awq(weight, hessian, quantizer: Quantizer, *, n_grid: int = 20, method: str = "rtn",
        scale_search: str | None = None, **gptq_kw) -> AWQResult:
    """Search alpha on the calibration Hessian and return the scaled, quantized layer.

    method: "rtn" (the quantizer's fake-quant; with ``scale_search`` its block search) or "gptq"
    (for every grid point: the search itself uses RTN, the chosen alpha is then GPTQ-quantized)."""
    W = np.asarray(weight, np.float32)
    H = np.asarray(hessian, np.float64)
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise FmtlabError(f"awq: weight [out, in] and hessian [in, in] needed, got {W.shape} and {H.shape}")
    if method not in ("rtn", "gptq"):
        raise FmtlabError(f"awq: method must be 'rtn' or 'gptq', got {method!r}")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise FmtlabError(f"awq: n_grid must be a positive int, got {n_grid!r}")
    a = np.sqrt(np.maximum(np.diag(H), 0.0) / 2.0)
    a = np.where(a > 0, a, a[a > 0].min() if np.any(a > 0) else 1.0)

    def rtn_q(M):
        if scale_search is not None:
            return searched_fake_quantize(M, quantizer, scale_search)
        return quantizer.fake_quantize(M)

    errs = np.empty(n_grid)
    best = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = np.maximum(a ** alpha, 1e-4)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        Ws = (W * s).astype(np.float32)
        Qs = rtn_q(Ws)
        Weff = (Qs.astype(np.float64) / s).astype(np.float32)
        errs[k] = hessian_error(W, Weff, H)
        if best is None or errs[k] < errs[best[0]]:
            best = (k, s, Qs, Weff)
    k, s, Qs, Weff = best
    if method == "gptq":
        Hs = H / s.astype(np.float64)[:, None] / s.astype(np.float64)[None, :]
        Qs = gptq((W * s).astype(np.float32), Hs, quantizer, scale_search=scale_search, **gptq_kw).weight
        Weff = (Qs.astype(np.float64) / s).astype(np.float32)
    return AWQResult(Weff, Qs, s, k / n_grid, errs)
