"""GPTQ (OPTQ, Frantar et al. 2022) for any fmtlab weight quantizer, in numpy float64.

    res = gptq(W, H, get_quantizer("nvfp4"))      # W [out, in] (nn.Linear layout), H [in, in]
    res.weight                                     # float32 [out, in], every value on the grid
    res.codes, res.scales                          # the quantizer's own codes / scales of it

The algorithm is the reference one (IST-DASLab/gptq ``fasterquant``, described in the paper):
dead inputs (``H[j, j] == 0``) get ``H[j, j] = 1`` and ``W[:, j] = 0``; ``damp * mean(diag H)``
is added to the diagonal; ``U = chol(H^-1)`` (upper, float64); columns are quantized left to
right (or by descending ``diag H`` with ``act_order``) in lazy batches of ``block_size``, each
column's error ``(w - q) / U[j, j]`` propagated to the remaining columns through row j of U.

Rounding is the quantizer's own: each column goes through ``fmtlab.formats.kernels.fq_scaled``
with the element format, rounding, overflow and NaN rule of ``quantizer``, at the scales the
quantizer's own scale rule computes (``Quantizer.compute_scales``; for MX / FP8-scaled blocks
``fmtlab.formats.mx``), so INT, dINT, log, lookup (NF4), minifloat, asymmetric, per-group, MX and
NVFP4 quantizers all work. When scales are computed depends on the granularity of W [out, in]:

* fixed for the whole run (per tensor, per output channel, per token = per row, static rules):
  from the original W, as the reference does;
* groups / blocks along the input axis (``PerGroup(g)``, ``PerBlock(g)``): from the *current*,
  error-updated weights of the group's columns when its first column is reached (the reference);
  ``static_groups=True`` computes all of them from the original W (after dead columns are zeroed)
  before the run. NVFP4's per-tensor FP32 scale is always taken from the original W;
* scales per input column (``PerChannel(1)``, groups / blocks along the output axis): from the
  current column when it is quantized.

The lazy batches are exact (not an approximation), so ``block_size`` only changes speed; it is
cut to a multiple (or divisor) of the group size so that every group lies inside one batch and
its scales see fully updated weights. ``act_order`` with input-axis groups needs
``static_groups=True``: the reference's dynamic act-order groups follow the permuted order
(``g_idx``), which no fmtlab format stores. Stochastic rounding draws one number per weight
element from ``np.random.default_rng(seed)`` in C order, as the quantizer does.

Calibration: H = 2 X^T X / n over calibration rows only (``fmtlab.sim.hessian``); then
``||X W^T - X Q^T||_F^2 = (n / 2) tr((W - Q) H (W - Q)^T)`` (see :func:`hessian_error`).

RTN fallback (``rtn_fallback=True``, the default; a deviation from the reference): OPTQ is greedy
(Babai's nearest plane on the lattice of H), so on some rows its calibration error
``d H d^T`` (d = w - q, the undamped H) is above round-to-nearest's. After the OPTQ pass every
independent unit of rows is compared with the quantizer's own RTN (``quantizer.quantize(W)``)
and keeps RTN's codes and scales where RTN's error is strictly lower. A unit is one row when the
scales are per row, per input-axis group / block, or one per tensor equal in both (NVFP4's tensor
scale is RTN's by construction); ``q_len`` rows for groups / blocks along the output axis; the whole
matrix for scales per input column (every row shares them). Hence GPTQ's calibration error is never
above RTN's, row unit by row unit (:func:`row_errors`). Fallback rows are RTN's exactly (dead
columns keep RTN's values: they do not change the calibration error). ``rtn_fallback=False`` is
the reference algorithm (the residual and Cholesky laws in the tests are about it).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.linalg import cholesky, lapack

from fmtlab.errors import FmtlabError
from fmtlab.formats import mx as _mx
from fmtlab.formats.base import make_rng
from fmtlab.formats.four_over_six import four_over_six_blocks, tensor_scale_4o6
from fmtlab.formats.kernels import Rows, encode_scaled, fq_scaled, fq_vector
from fmtlab.formats.quantizer import QTensor, QuantReport, Quantizer
from fmtlab.formats.rounding import NanInput, Rounding
from fmtlab.formats.scaling import (
    FourOverSix, MinMax, MixFP4, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Static, from_work, plan_layout,
    to_work,
)
from fmtlab.sim.scale_search import block_scale_search

__all__ = ["GPTQResult", "gptq", "PreparedHessian", "prepare_hessian", "rtn", "hessian_error", "row_errors",
           "ColumnScheme"]


@dataclasses.dataclass(frozen=True, eq=False)
class GPTQResult:
    """Quantized weights of one layer.

    weight: float32 [out, in], the dequantized values (``quantizer.dequantize`` of codes/scales,
    bit for bit); codes: element codes [out, in]; scales: float32 effective scales in
    ``quantizer.layout(W.shape).scale_shape``; zero_points: int64 in the same shape (asymmetric
    INT) or None; scale_codes: E8M0 / E4M3 codes of block scales or None; tensor_scale: NVFP4's
    FP32 tensor scale or None; perm: the column order (act_order) or None; dead: bool [in], the
    inputs with ``H[j, j] == 0`` (their weights are set to 0 before quantizing); proxy_loss: the
    OPTQ objective sum_j ||w_j - q_j||^2 / (2 U[j, j]^2) summed over columns (float64) of the OPTQ
    pass (before any RTN fallback); fallback: bool [out], the rows that kept RTN's codes and scales
    (``rtn_fallback=True``), None without the fallback."""

    weight: np.ndarray
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    scale_codes: np.ndarray | None
    tensor_scale: float | None
    perm: np.ndarray | None
    dead: np.ndarray
    proxy_loss: float
    fallback: np.ndarray | None = None

    def qtensor(self, quantizer: Quantizer):
        """The result as a :class:`fmtlab.formats.quantizer.QTensor` of ``quantizer``."""
        n = int(self.codes.size)
        return QTensor(self.codes, self.scales, self.zero_points, self.scale_codes, self.tensor_scale,
                       quantizer, quantizer.layout(self.codes.shape), np.dtype(np.float32),
                       QuantReport(n, int(np.count_nonzero(self.weight)), 0, 0))


# ---------------------------------------------------------------------------------------------
# Column scheme: where a quantizer's scales live on W [out, in] and how one column is rounded
# ---------------------------------------------------------------------------------------------
class ColumnScheme:
    """How ``quantizer`` scales and rounds W [R, C] one input column at a time.

    kind "fixed": one scale per row for the whole run; "group": groups of ``g`` input columns,
    one scale per row per group; "column": scales per column (slots along the output axis).
    ``round(col, scales, zps, j)`` rounds a float64 column of length R with per-slot scales
    (``Rows(q, R // q)``: q = 1 for fixed/group, q = slot length for column kinds)."""

    def __init__(self, quantizer: Quantizer, shape: tuple[int, int], W0: np.ndarray,
                 scale_search: str | None = None):
        if not isinstance(quantizer, Quantizer):
            raise FmtlabError(f"gptq needs an fmtlab Quantizer, got {type(quantizer).__name__}")
        self.q = quantizer
        self.R, self.C = R, C = shape
        self.layout = plan_layout(quantizer.granularity, shape)  # validates sizes vs shape
        g = quantizer.granularity
        if getattr(g, "tile", None) is not None:
            raise FmtlabError(f"gptq: 2-D tiles ({g}) are not supported: GPTQ rounds column by column, "
                              "a tile's scale spans rows and columns; use 1-D groups or blocks")
        if isinstance(quantizer.scale_rule, MixFP4):
            raise FmtlabError(f"gptq: {quantizer} (MixFP4's per-block element choice) is not supported")
        self.block = quantizer.is_block
        self.g = 1
        self.static = isinstance(quantizer.scale_rule, Static)
        if isinstance(g, (PerTensor, PerToken)) or (isinstance(g, PerChannel) and g.axis % 2 == 0):
            self.kind, self.q_len = "fixed", 1
        elif isinstance(g, (PerGroup, PerBlock)) and g.axis % 2 == 1:
            self.kind, self.q_len, self.g = "group", 1, g.size
        elif isinstance(g, PerChannel):  # axis 1: one scale per input column
            self.kind, self.q_len = "column", R
        elif isinstance(g, (PerGroup, PerBlock)):  # along the output axis
            self.kind, self.q_len = "column", g.size
        else:  # pragma: no cover - plan_layout rejects other granularities
            raise FmtlabError(f"gptq: granularity {g} is not supported")
        if self.static and self.kind == "column":
            raise FmtlabError(f"gptq: static scales with {g} (scales per input column) are not supported; "
                              "use a per-row or per-input-group layout")
        self.tensor_g = None
        self.four_six = isinstance(quantizer.scale_rule, FourOverSix)
        if self.block and g.scale_format != "e8m0" and g.tensor_scale:
            be = _mx.block_elem(quantizer.format)
            a = np.abs(np.asarray(W0, np.float32))
            if not np.all(np.isfinite(a)):
                raise FmtlabError("gptq: the weights hold NaN or Inf")
            tsf = tensor_scale_4o6 if self.four_six else _mx.tensor_scale_of
            self.tensor_g = tsf(float(a.max()), be.elem_max)
        self.nan = NanInput.RAISE if self.block else quantizer.nan
        self.search = scale_search
        if scale_search is not None and not (self.block and self.kind == "group"):
            raise FmtlabError(f"scale_search={scale_search!r} needs a block quantizer along the input axis, got {quantizer}")

    # ---- scales --------------------------------------------------------------------------
    def slot_scales(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(scales, zero points, scale codes) of the quantizer on the 2-D array A, one per slot of
        A's own layout (flat, slot order). A is float64; statistics are float32 as usual."""
        q = self.q
        if not self.block:
            s, z = q.compute_scales(A)
            return np.asarray(s, np.float32).reshape(-1), z, None
        g = q.granularity
        if self.search is not None:
            s = block_scale_search(A, q, self.search, tensor_scale=self.tensor_g)
            return s.astype(np.float32), None, None
        lay = plan_layout(g, A.shape)
        flat = to_work(A, lay).reshape(-1)
        if g.scale_format == "e8m0":
            res = _mx.mx_blocks(q.format, flat, g.size, q.scale_rule.mode, q.rounding, q.overflow,
                                None, want_out=False, want_codes=False)
        elif self.four_six:  # the catalogue's Four Over Six rule (fmtlab.formats.four_over_six)
            ts = self.tensor_g if self.tensor_g is not None else False
            res = four_over_six_blocks(q.format, flat, g.size, ts, q.rounding, q.overflow, None,
                                       want_out=False, want_codes=False, metric=q.scale_rule.metric)
        else:
            ts = self.tensor_g if self.tensor_g is not None else False
            res = _mx.fp8_blocks(q.format, flat, g.size, ts, q.rounding, q.overflow, None,
                                 want_out=False, want_codes=False)
        if not np.all(np.isfinite(res.scales)):
            raise FmtlabError("gptq: a block of the weights holds NaN or Inf")
        return res.scales.astype(np.float32), None, res.scale_codes

    # ---- rounding ------------------------------------------------------------------------
    def round(self, col: np.ndarray, s: np.ndarray, z: np.ndarray | None, rand: np.ndarray | None) -> np.ndarray:
        """The quantizer's fake-quant of a float64 column with per-slot scales (float64 out)."""
        q = self.q
        if self.q_len == 1:  # one scale per element: the serial kernel (same bits as fq_scaled)
            return fq_vector(q.format, col, s, z, rounding=q.rounding, overflow=q.overflow,
                             nan=self.nan, rand=rand)
        pow2 = False if self.block else _is_pow2(s)
        return fq_scaled(q.format, col, Rows(self.q_len, s.size), s, z, pow2=pow2, rounding=q.rounding,
                         overflow=q.overflow, nan=self.nan, rand=rand)

    def encode(self, Qw: np.ndarray, scales: np.ndarray, zps: np.ndarray | None) -> np.ndarray:
        """Codes of the quantized weights Qw (float64 [R, C], exactly on the scaled grid)."""
        q = self.q
        lay = self.layout
        flat = to_work(Qw, lay).reshape(-1)
        s = scales.reshape(-1)
        codes = encode_scaled(q.format, flat, lay.kl, s, None if zps is None else zps.reshape(-1),
                              pow2=False if self.block else _is_pow2(s), rounding=_deterministic(q.rounding),
                              overflow=q.overflow, nan=self.nan)

        return np.ascontiguousarray(from_work(codes.reshape(lay.work_shape), lay))


def _deterministic(r: Rounding) -> Rounding:
    # Qw lies exactly on the grid, so any rounding returns its code; stochastic needs no draws
    return Rounding.NEAREST_EVEN if r is Rounding.STOCHASTIC else r


def _is_pow2(s: np.ndarray) -> bool:
    m, _ = np.frexp(s.astype(np.float64))
    return bool(np.all(m == 0.5))


def _check_inputs(W, H) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W)
    if isinstance(H, PreparedHessian):  # the factor is ready: check the layer only
        if W.ndim != 2 or W.size == 0 or W.dtype.kind != "f" or not np.all(np.isfinite(W)):
            raise FmtlabError(f"gptq: weight must be a finite, non-empty 2-D float array, got shape {W.shape}")
        if H.U.shape[0] != W.shape[1]:
            raise FmtlabError(f"gptq: the prepared hessian is [{H.U.shape[0]}, {H.U.shape[0]}], the layer has "
                              f"{W.shape[1]} inputs")
        return W.astype(np.float64), H
    H = np.asarray(H)
    if W.ndim != 2 or W.size == 0:
        raise FmtlabError(f"gptq: weight must be a non-empty 2-D [out, in] array, got shape {W.shape}")
    if H.shape != (W.shape[1], W.shape[1]):
        raise FmtlabError(f"gptq: hessian must be [in, in] = {(W.shape[1],) * 2}, got {H.shape}")
    if W.dtype.kind != "f" or H.dtype.kind != "f":
        raise FmtlabError(f"gptq: weight and hessian must be float arrays, got {W.dtype} and {H.dtype}")
    if not np.all(np.isfinite(W)):
        raise FmtlabError("gptq: the weights hold NaN or Inf")
    if not np.all(np.isfinite(H)):
        raise FmtlabError("gptq: the hessian holds NaN or Inf")
    return W.astype(np.float64), H.astype(np.float64)


def _batch_size(block_size: int, g: int) -> int:
    """A lazy-batch size near block_size whose batches start at every group start."""
    if g <= 1:
        return block_size
    if g <= block_size:
        return g * (block_size // g)
    return max(d for d in range(1, block_size + 1) if g % d == 0)


def _inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = H^-1 (float64; H symmetric positive definite): the factor the
    reference gets from chol(cholesky_inverse(chol H), upper), computed with one Cholesky and one
    triangular inverse: with J the reversal, J H J = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J),
    and J L^-1 J is upper triangular (Cholesky factors are unique, so this is the same U)."""
    try:
        L = cholesky(H[::-1, ::-1], lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise FmtlabError("gptq: the dampened hessian is not positive definite; raise damp") from None
    Linv, info = lapack.dtrtri(L, lower=1)
    if info != 0:
        raise FmtlabError("gptq: the hessian's Cholesky factor is singular; raise damp")
    return np.ascontiguousarray(Linv[::-1, ::-1])  # dtrtri leaves the zero upper part of L


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedHessian:
    """The part of GPTQ that depends on the Hessian only (shared by layers with one input, e.g.
    q/k/v): U = chol((H_d)^-1) upper of the dampened, dead-fixed (and act-order permuted) H_d;
    dead: bool [in]; perm: the act-order permutation or None; hessian: the original H (float64,
    undamped, unpermuted), which the RTN fallback scores rows with."""

    U: np.ndarray
    dead: np.ndarray
    perm: np.ndarray | None
    damp: float
    act_order: bool
    hessian: np.ndarray | None = None


def prepare_hessian(hessian, damp: float = 0.01, act_order: bool = False) -> PreparedHessian:
    """Dead columns (H[j, j] == 0 -> 1), act-order permutation (descending diag H), dampening
    (``damp`` * mean diag added to the diagonal) and the inverse Cholesky factor of H, as
    :func:`gptq` does them; pass the result to several ``gptq`` calls on layers sharing an input."""
    H0 = np.asarray(hessian, dtype=np.float64)
    H = H0.copy()
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.size == 0:
        raise FmtlabError(f"gptq: hessian must be a square [in, in] array, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise FmtlabError("gptq: the hessian holds NaN or Inf")
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise FmtlabError(f"gptq: damp must be a finite number >= 0, got {damp!r}")
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(H), kind="stable")
        H = H[np.ix_(perm, perm)]
    H[np.diag_indices(H.shape[0])] += damp * float(np.mean(np.diag(H)))
    return PreparedHessian(_inverse_cholesky(H), dead, perm, float(damp), bool(act_order), H0)


def gptq(weight, hessian, quantizer: Quantizer, *, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, static_groups: bool = False,
         scale_search: str | None = None, rtn_fallback: bool = True) -> GPTQResult:
    """OPTQ-quantize ``weight`` [out, in] under ``quantizer`` with the calibration Hessian
    ``hessian`` [in, in] (H = 2 X^T X / n); see the module docstring for the exact algorithm.

    block_size: lazy-batch width (speed only); damp: fraction of mean(diag H) added to the
    diagonal (the reference's percdamp); act_order: quantize columns by descending diag H;
    static_groups: group / block scales from the original weights instead of the updated ones;
    scale_search: "mse" picks each block's scale by ``fmtlab.sim.scale_search`` (block
    quantizers; the search runs on the current weights when the block starts), None = the rule's
    (Four Over Six is a rule: ``scale_rule="four_over_six"`` on an NVFP4 quantizer);
    rtn_fallback: keep RTN's codes and scales on every unit of rows where RTN's calibration error
    is lower (module docstring; False = the reference OPTQ).
    Raises FmtlabError for non-finite or mis-shaped input, a quantizer whose layout does not fit
    W, or a Hessian that stays indefinite after dampening.
    """
    W, H = _check_inputs(weight, hessian)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise FmtlabError(f"gptq: block_size must be a positive int, got {block_size!r}")
    R, C = W.shape
    scheme = ColumnScheme(quantizer, (R, C), W, scale_search)
    static_groups = bool(static_groups) or scheme.static  # static rules: every scale known up front
    if act_order and scheme.kind == "group" and not static_groups:
        raise FmtlabError("gptq: act_order with per-group / block scales needs static_groups=True "
                          "(dynamic act-order groups follow the permuted order, g_idx, which no "
                          "fmtlab format stores)")
    prep = hessian if isinstance(hessian, PreparedHessian) else prepare_hessian(H, damp, act_order)
    if prep.act_order != bool(act_order):
        raise FmtlabError(f"gptq: the prepared hessian was made with act_order={prep.act_order}")
    fixed = None
    if scheme.kind == "fixed":  # the reference: find_params(W) before dead columns are zeroed
        fs, fz, _ = scheme.slot_scales(W)
        fixed = (np.broadcast_to(fs, (R,)).copy(), None if fz is None else np.broadcast_to(fz, (R,)).copy())
    dead = prep.dead
    W[:, dead] = 0.0
    g = scheme.g
    ng = C // g if scheme.kind == "group" else 0
    gs = np.zeros((R, ng), np.float32)
    gz = np.zeros((R, ng), np.int64) if (scheme.kind == "group" and not scheme.block and
                                         _asym(quantizer)) else None
    gcodes = None
    if scheme.kind == "group" and static_groups:
        s, z, sc = scheme.slot_scales(W)
        gs[:] = s.reshape(R, ng)
        if gz is not None:
            gz[:] = z.reshape(R, ng)
        gcodes = None if sc is None else sc.reshape(R, ng)
    elif scheme.kind == "group" and scheme.block and scale_search is None:
        gcodes = np.zeros((R, ng), dtype=np.uint8)
    col_s = col_z = None
    if scheme.kind == "column":
        nslot = R // scheme.q_len
        col_s = np.zeros((C, nslot), np.float32)
        col_z = np.zeros((C, nslot), np.int64) if _asym(quantizer) and not scheme.block else None
        col_codes = np.zeros((C, nslot), np.uint8) if scheme.block else None

    perm = prep.perm
    if perm is not None:
        W = W[:, perm]
    W = np.ascontiguousarray(W)
    U = prep.U
    rand = None
    if quantizer.rounding is Rounding.STOCHASTIC:
        rand = make_rng(int(quantizer.seed)).random(R * C).reshape(R, C)
        if perm is not None:
            rand = rand[:, perm]
    B = _batch_size(int(block_size), g if (scheme.kind == "group" and not static_groups) else 1)
    Q = np.zeros_like(W)
    loss = 0.0
    for i1 in range(0, C, B):
        i2 = min(i1 + B, C)
        # the batch transposed (row i = column i1 + i); the in-batch updates are applied just in
        # time: column i gets the errors of columns [base, i) when it is reached (one vector-matrix
        # product) and all pending columns are applied to the rest of the batch at a group start
        W1T = np.ascontiguousarray(W[:, i1:i2].T)
        ErrT = np.zeros_like(W1T)
        U1 = U[i1:i2, i1:i2]
        base = 0
        for i in range(i2 - i1):
            j = i1 + i
            jo = int(perm[j]) if perm is not None else j  # original column index
            if scheme.kind == "group" and not static_groups and j % g == 0 and i > base:
                W1T[i:] -= U1[base:i, i:].T @ ErrT[base:i]  # the group sees fully updated weights
                base = i
            w = W1T[i] - U1[base:i, i] @ ErrT[base:i] if i > base else W1T[i].copy()
            if scheme.kind == "fixed":
                s, z = fixed[0], fixed[1]
            elif scheme.kind == "group":
                k = jo // g
                if not static_groups and j % g == 0:  # group starts: scales from current weights
                    s, z, sc = scheme.slot_scales(W1T[i:i + g].T)
                    gs[:, k] = s
                    if gz is not None:
                        gz[:, k] = z
                    if sc is not None:
                        gcodes[:, k] = sc
                s, z = gs[:, k], (gz[:, k] if gz is not None else None)
            else:
                s, z, sc = scheme.slot_scales(w.reshape(R, 1))
                col_s[jo] = s
                if col_z is not None:
                    col_z[jo] = z
                if sc is not None:
                    col_codes[jo] = sc
            qcol = scheme.round(w, s, z, None if rand is None else rand[:, j])
            Q[:, j] = qcol
            d = U1[i, i]
            r = w - qcol
            loss += float(np.dot(r, r)) / (2.0 * d * d)
            ErrT[i] = r / d
        if i2 < C:
            W[:, i2:] -= ErrT.T @ U[i1:i2, i2:]
    if perm is not None:
        inv = np.argsort(perm)
        Q = Q[:, inv]
    # ---- the quantizer's own codes and scales of Q
    lay = scheme.layout
    zps = scodes = None
    if scheme.kind == "fixed":
        s_full = fixed[0] if lay.nslots == R else fixed[0][:1]
        scales = s_full.reshape(lay.scale_shape)
        if fixed[1] is not None:
            zps = (fixed[1] if lay.nslots == R else fixed[1][:1]).reshape(lay.scale_shape)
        enc_s = np.broadcast_to(s_full, (lay.nslots,))
    elif scheme.kind == "group":
        scales = gs.reshape(lay.scale_shape)
        zps = None if gz is None else gz.reshape(lay.scale_shape)
        scodes = None if gcodes is None else gcodes.reshape(lay.scale_shape)
        enc_s = scales
    else:
        scales = col_s.reshape(lay.scale_shape)
        zps = None if col_z is None else col_z.reshape(lay.scale_shape)
        scodes = None if col_codes is None else col_codes.reshape(lay.scale_shape)
        enc_s = scales
    codes = scheme.encode(Q, np.asarray(enc_s, np.float32), zps)
    tg = float(scheme.tensor_g) if scheme.tensor_g is not None else None
    res = GPTQResult(Q.astype(np.float32), codes, np.ascontiguousarray(scales, np.float32), zps, scodes,
                     tg, perm, dead, loss)
    if rtn_fallback:
        H0 = prep.hessian if isinstance(hessian, PreparedHessian) else H
        if H0 is None:
            raise FmtlabError("gptq: rtn_fallback needs the original hessian; make the prepared one "
                              "with prepare_hessian, or pass rtn_fallback=False")
        res = _rtn_fallback(res, weight, H0, quantizer, scheme)
    return res


def row_errors(weight, quantized, hessian) -> np.ndarray:
    """Per output row r: d_r H d_r^T with d = W - Q (float64 [out]); their sum is
    :func:`hessian_error`."""
    D = np.asarray(weight, np.float64) - np.asarray(quantized, np.float64)
    return np.einsum("ij,ij->i", D @ np.asarray(hessian, np.float64), D)


def _fallback_unit(res: GPTQResult, rt: QTensor, scheme: ColumnScheme) -> int:
    """Rows per independent unit: scales that couple rows (per tensor unless equal, per input
    column, groups along the output axis) make the unit larger."""
    R = scheme.R
    if res.tensor_scale is not None and (rt.tensor_scale is None or
                                         np.float32(rt.tensor_scale) != np.float32(res.tensor_scale)):
        return R
    if scheme.kind == "column":
        return scheme.q_len  # R for one scale per input column, g for output-axis groups / blocks
    if scheme.layout.scale_shape == ():  # one per-tensor scale: rows are independent when RTN's is the same
        for a, b in ((res.scales, rt.scales), (res.zero_points, rt.zero_points)):
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a.reshape(-1), np.reshape(b, -1))):
                return R
    return 1


def _rtn_fallback(res: GPTQResult, weight, H: np.ndarray, q: Quantizer, scheme: ColumnScheme) -> GPTQResult:
    """``res`` with RTN's codes and scales on the row units where RTN's calibration error is lower."""
    W = np.asarray(weight, np.float64)
    rt = q.quantize(np.asarray(weight, np.float32))
    wr = np.asarray(q.dequantize(rt), np.float32)
    R = scheme.R
    u = _fallback_unit(res, rt, scheme)
    eg = row_errors(W, res.weight, H).reshape(R // u, u).sum(axis=1)
    er = row_errors(W, wr, H).reshape(R // u, u).sum(axis=1)
    take = er < eg  # ties keep GPTQ
    rows = np.repeat(take, u)
    if not take.any():
        return dataclasses.replace(res, fallback=rows)
    weight, codes = res.weight.copy(), res.codes.copy()
    weight[rows], codes[rows] = wr[rows], rt.codes[rows]

    def merge(a, b):
        if a is None:
            return None
        a = a.copy()
        if u == R:  # the whole matrix falls back
            return np.asarray(b, a.dtype).reshape(a.shape).copy()
        if scheme.layout.scale_shape == ():  # one per-tensor scale, equal in both
            return a
        if scheme.kind == "column":  # [C, R // u] (output-axis groups): unit k is column k of the scales
            a[:, take] = np.asarray(b)[:, take]
        else:  # [R] or [R, groups]: one row per output row
            a[rows] = np.asarray(b)[rows]
        return a

    return dataclasses.replace(res, weight=weight, codes=codes, scales=merge(res.scales, rt.scales),
                               zero_points=merge(res.zero_points, rt.zero_points),
                               scale_codes=merge(res.scale_codes, rt.scale_codes),
                               tensor_scale=rt.tensor_scale if u == R and rt.tensor_scale is not None
                               else res.tensor_scale, fallback=rows)


def _asym(q: Quantizer) -> bool:
    r = q.scale_rule
    return isinstance(r, MinMax) or (isinstance(r, Static) and r.zero_point is not None)


def rtn(weight, quantizer: Quantizer) -> np.ndarray:
    """Round-to-nearest baseline: ``quantizer.fake_quantize`` of the float32 weights."""
    return quantizer.fake_quantize(np.asarray(weight, dtype=np.float32))


def hessian_error(weight, quantized, hessian) -> float:
    """tr((W - Q) H (W - Q)^T) in float64: with H = 2 X^T X / n this is
    (2 / n) ||X W^T - X Q^T||_F^2, the layer-output error on the calibration rows."""
    D = np.asarray(weight, np.float64) - np.asarray(quantized, np.float64)
    return float(np.einsum("ij,jk,ik->", D, np.asarray(hessian, np.float64), D, optimize=True))
