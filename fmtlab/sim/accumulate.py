"""Quantized GEMMs computed as a given accumulator computes them (the accumulator in the accuracy path).

``accumulated_matmul(x, w, act_q, weight_q, "int16")`` returns Y = Q_a(X) Q_w(W)^T ([tokens, out],
float32) with every dot product accumulated as the named accumulator would, instead of the float32
GEMM replay uses otherwise. Accumulators are :func:`fmtlab.hw.accumulators.parse_accumulator`
names (``int<W>``, ``int<W>_sat``, ``fp32``, ``bf16``, ``fp16``, ``tf32``, ``e<E>m<M>[_rtz]``,
``kulisch``) or promoted presets (``hopper_fp8_mma``, :mod:`fmtlab.hw.promotion`); a float
accumulator takes a chunk suffix ``_k<N>`` (``bf16_k32``; default k = 1).

Operands. Each operand is split into element values V and one scale per row r (X = diag(r_x) V_x,
W = diag(r_w) V_w): per-token / per-tensor / per-output-channel scales are factored out, as a
MAC array applies them once after the dot product; group and block scales (g<N>, MX, NVFP4)
vary along the reduction and stay inside V (each product carries its two block scales; MX
hardware instead scales each block's exact sum, :func:`fmtlab.hw.datapath.mx_dot`). Then
Y[i, j] = fl32(r_x[i] r_w[j] ACC_k(V_x[i, k] V_w[j, k])). Products of two float32 values are exact
in float64. Asymmetric (zero-point) quantizers are refused.

Accumulation (order: k = 0 .. K-1, the order of the reduction axis):

- **integer** ``int<W>`` (wrap): V must lie on a fixed-point grid (INT, dINT, log formats with
  per-row scales, as the datapath's integer-like operands; FmtlabError otherwise), taken in units
  of its finest step 2^-f; the exact integer dot product (a float64 GEMM of the codes, exact while
  K max|V_x| max|V_w| < 2^53, checked) is wrapped to W-bit two's complement. Wrapping is
  order-independent, so this equals the sequential W-bit register bit for bit. An overflowing
  dot product is one whose exact value lies outside [-2^(W-1), 2^(W-1)).
  ``int<W>_sat``: sequential, saturating after every product (k ascending); an overflowing dot
  product is one that saturated at least once.
- **float** (``fp32``, ``bf16``, ``fp16``, ``e<E>m<M>``): chunked emulation. The K products are cut
  into consecutive chunks of k (the last may be shorter); a chunk's sum is formed in float64, the
  products added in k order (exact where the products' bits fit 53 bits, as INT8 / FP8 element
  products do; otherwise float64 roundings, <= k 2^-53 relative) and added to the accumulator with ONE rounding to its
  format (nearest-even or toward zero; :func:`fmtlab.hw.dp_kernels.fp_step`). k = 1 is sequential
  accumulation and equals :func:`fmtlab.hw.datapath.dot` bit for bit. Overflow: a step giving Inf
  from finite inputs.
- **promoted** (``hopper_fp8_mma``): chunks of ``interval`` products accumulate from zero in the
  inner format (k-chunked as above, k = 1 by default), each partial is added into the outer
  accumulator with one rounding (:func:`fmtlab.hw.datapath.promoted_dot` for k = 1).
- **Kulisch**: the exact sum (one float64 chunk over the whole K), rounded once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import PerChannel, PerTensor, PerToken, Quantizer
from fmtlab.formats.mixfp4 import block_is_e1m2, element_values
from fmtlab.formats.scaling import MixFP4, broadcast_scales, from_work, to_work, work_rows
from fmtlab.hw.accumulators import FloatAcc, IntAcc, KulischAcc, parse_accumulator
from fmtlab.hw.datapath import float_params
from fmtlab.hw.operands import FixedView, view
from fmtlab.hw.promoted_acc import PromotedAcc, parse_promoted
from fmtlab.sim._acc_kernels import float_acc_partials, float_acc_rows

__all__ = ["Accumulator", "parse", "Operand", "operand", "accumulate", "accumulated_matmul", "AccResult"]

_CHUNK_RE = re.compile(r"^(.+)_k(\d+)$")


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """An accumulator of the accuracy path: the hardware accumulator and the chunk size k."""

    acc: Any  # IntAcc | FloatAcc | KulischAcc | PromotedAcc
    chunk: int = 1
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or getattr(self.acc, "name", str(self.acc))

    @property
    def is_integer(self) -> bool:
        return isinstance(self.acc, IntAcc)


def parse(spec: "str | Accumulator | None") -> Accumulator | None:
    """An :class:`Accumulator` from a name (module docstring); None / "none" / "fp32_gemm": None
    (the float32 GEMM of plain replay)."""
    if spec is None or isinstance(spec, Accumulator):
        return spec
    if not isinstance(spec, str):
        raise FmtlabError(f"accumulator must be a name, got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "none", "fp32_gemm", "gemm"):
        return None
    chunk = 1
    m = _CHUNK_RE.match(text)
    if m:
        text, chunk = m.group(1), int(m.group(2))
        if chunk < 1:
            raise FmtlabError(f"accumulator {spec!r}: chunk k must be >= 1")
    promoted = parse_promoted(text)
    acc = promoted if promoted is not None else parse_accumulator(text)
    if m and not isinstance(acc, (FloatAcc, PromotedAcc)):
        raise FmtlabError(f"accumulator {spec!r}: a chunk _k<N> applies to float accumulators only")
    return Accumulator(acc, chunk, spec.strip())


# --------------------------------------------------------------------------------- operands

@dataclasses.dataclass(frozen=True)
class Operand:
    """X = diag(row_scale) values: ``values`` float64 [rows, K], ``row_scale`` float64 [rows]."""

    values: np.ndarray
    row_scale: np.ndarray
    integer: bool


def _row_scales(q, scales: np.ndarray, rows: int) -> np.ndarray | None:
    g = q.granularity
    s = np.asarray(scales, dtype=np.float64)
    if isinstance(g, PerTensor):
        return np.full(rows, float(s.reshape(-1)[0]))
    if isinstance(g, PerToken) or (isinstance(g, PerChannel) and g.axis in (0, -2)):
        return s.reshape(rows)
    return None


def operand(q: Any, x: np.ndarray) -> Operand:
    """Element values and row scales of ``q`` (an fmtlab Quantizer, or None: x itself) applied to
    ``x`` [rows, K] (float32). FmtlabError for zero points or a quantizer without codes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise FmtlabError(f"accumulated GEMM operands are [rows, K] matrices, got shape {x.shape}")
    if q is None:
        return Operand(x.astype(np.float64), np.ones(x.shape[0]), False)
    if not isinstance(q, Quantizer):
        raise FmtlabError(f"the accumulator path needs an fmtlab Quantizer (codes and scales), got {q!r}")
    qt = q.quantize(x)
    if qt.zero_points is not None:
        raise FmtlabError(f"{q}: asymmetric (zero-point) quantizers are not supported in the accumulator path")
    if getattr(q.granularity, "tile", None) is not None or isinstance(q.scale_rule, MixFP4):
        # 2-D tiles / MixFP4's per-block element type: each element's value and scale from the
        # quantizer's own layout (the scale stays with each element)
        return Operand(_element_values_scaled(q, qt), np.ones(x.shape[0]), False)
    v = q.format.decode(qt.codes).astype(np.float64)
    r = _row_scales(q, qt.scales, x.shape[0])
    if r is None:  # groups / blocks along K: the scale stays with each element
        s = np.asarray(qt.scales, dtype=np.float64).reshape(x.shape[0], -1)
        v = v * np.repeat(s, x.shape[1] // s.shape[1], axis=1)
        return Operand(v, np.ones(x.shape[0]), False)
    unit = _fixed_unit(q.format)
    if unit is None:
        return Operand(v, r, False)
    return Operand(v * 2.0 ** unit, r * 2.0 ** -unit, True)


def _element_values_scaled(q, qt) -> np.ndarray:
    """float64 v * s per element of a QTensor (exact: element values and float32 scales), with
    MixFP4 blocks read in their flagged element format."""
    lay = qt.layout
    cw = to_work(qt.codes, lay).reshape(-1)
    s = broadcast_scales(np.asarray(qt.scales, dtype=np.float64).reshape(-1), lay)
    if isinstance(q.scale_rule, MixFP4):
        alt = broadcast_scales(block_is_e1m2(qt.scale_codes).reshape(-1), lay)
        v = element_values(work_rows(cw, lay), alt)
    else:
        v = work_rows(q.format.values()[cw.astype(np.intp)], lay)
    return np.ascontiguousarray(from_work((v * s).reshape(lay.work_shape), lay))


def _fixed_unit(fmt) -> int | None:
    """f such that every finite value of ``fmt`` times 2^f is an integer (INT: 0; dINT / log
    grids with fractional steps: their fraction bits), or None (floating point grids, > 24 bits)."""
    vals = np.asarray(fmt.values(), dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size > 4096:
        return None
    for f in range(0, 25):
        sv = vals * 2.0 ** f
        if np.all(sv == np.rint(sv)):
            return f if np.abs(sv).max(initial=0) < 2.0 ** 24 and _is_fixed(fmt, f) else None
    return None


def _is_fixed(fmt, f: int) -> bool:
    """Integer-like (a fixed-point grid) rather than a floating-point one: FP formats also have
    values on a 2^-f grid but accumulate in float units (the datapath's FixedView vs FloatView)."""
    try:
        return isinstance(view(fmt), FixedView)
    except Exception:  # noqa: BLE001 - a format the datapath does not model: integers only
        return f == 0


# ------------------------------------------------------------------------------ accumulation

@dataclasses.dataclass(frozen=True)
class AccResult:
    """``acc``: the accumulator value of each dot product (float64 [M, N], before row scales);
    ``overflow``: bool [M, N] (see the module docstring for each kind)."""

    acc: np.ndarray
    overflow: np.ndarray


def _round_slow(s: np.ndarray, man: int, emin: int, emax: int, rtz: bool) -> np.ndarray:
    """Round float64 ``s`` (finite, nonzero) to the format: frexp / ldexp path (any exponent)."""
    ax = np.abs(s)
    _, e = np.frexp(ax)
    q = np.maximum(e - 1, emin) - man
    y = np.ldexp(ax, -q)
    r = np.floor(y) if rtz else np.rint(y)
    res = np.ldexp(r, q)
    maxf = np.ldexp(2.0 - np.ldexp(1.0, -man), emax)
    res = np.where(res > maxf, maxf if rtz else np.inf, res)
    return np.copysign(res, s)


_MAG = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_ONE = np.int64(1)


def _fp_steps(acc: np.ndarray, p: np.ndarray, man: int, emin: int, emax: int, rtz: bool, f64: bool,
              ovf: np.ndarray) -> None:
    """acc <- round(acc + p) elementwise with ONE rounding each, in place; ovf |= (finite -> Inf).

    Vectorized :func:`fmtlab.hw.dp_kernels.fp_step`: the float64 sum rounded to odd (TwoSum error
    term; Boldo & Melquiond 2008), then rounded to ``man`` fraction bits with exponents
    [emin, emax] and subnormals (nearest-even, overflow -> Inf; toward zero, overflow -> max), on
    the float64 bit pattern (results that would drop 52 or more of its fraction bits, deep in the
    format's subnormals, take the frexp path)."""
    with np.errstate(all="ignore"):
        a, b = acc, p
        s = a + b
        if not f64:
            bb = s - a
            err = (a - (s - bb)) + (b - bb)
            bits = s.view(np.int64)
            ok = np.isfinite(s) & (s != 0)
            bump = ok & (err != 0) & ((bits & _ONE) == 0)
            bits = bits + np.where(bump, np.where((err > 0) == (s > 0), _ONE, -_ONE), 0)
            mag = bits & _MAG
            e = (mag >> 52) - 1023
            shift = (52 - man) + np.maximum(emin - e, 0)
            slow = ok & (shift > 51)
            sh = np.minimum(shift, 51)
            mask = (_ONE << sh) - _ONE
            if rtz:
                r = mag & ~mask
            else:
                r = (mag + (mask >> _ONE) + ((mag >> sh) & _ONE)) & ~mask
            maxf = np.ldexp(2.0 - np.ldexp(1.0, -man), emax)
            res = r.view(np.float64)
            res = np.where(res > maxf, maxf if rtz else np.inf, res)
            res = np.copysign(res, s)
            if slow.any():
                so = bits.view(np.float64)
                res[slow] = _round_slow(so[slow], man, emin, emax, rtz)
            s = np.where(ok, res, s)
        special = ~(np.isfinite(a) & np.isfinite(b))
        new = np.where(special, a + b, s)
        ovf |= np.isinf(new) & ~special
        acc[...] = new


def _chunks(k: int, size: int):
    return [(s, min(s + size, k)) for s in range(0, k, size)]


#: chunks of at least this many products take their sums from a batched float64 GEMM
_BLAS_CHUNK = 8
#: bytes of chunk partials [chunks, rows, columns] formed at a time (few, large parallel regions:
#: 4 MiB blocks ran 3x slower with 2 numba threads on a loaded 2-core machine than 32 MiB ones)
_PARTS_BYTES = 32 << 20


def _float_acc(vx: np.ndarray, vw: np.ndarray, acc: FloatAcc, chunk: int, lo: int = 0, hi: int | None = None):
    """Chunked float accumulation of products lo..hi-1 (module docstring), fused:
    chunks of >= 8 products sum in a batched float64 GEMM (row blocks of a few MiB) and
    :func:`fmtlab.sim._acc_kernels.float_acc_partials` adds them in order with one rounding each;
    shorter chunks form their products in :func:`fmtlab.sim._acc_kernels.float_acc_rows`."""
    man, emin, emax, rtz, f64 = float_params(acc)
    hi = vx.shape[1] if hi is None else hi
    M, N, L = vx.shape[0], vw.shape[0], hi - lo
    out = np.zeros((M, N))
    ovf = np.zeros(out.shape, dtype=bool)
    if L <= 0 or M == 0 or N == 0:
        return out, ovf
    args = (int(man), int(emin), int(emax), bool(rtz), bool(f64))
    if chunk < _BLAS_CHUNK:
        float_acc_rows(np.ascontiguousarray(vx[:, lo:hi], dtype=np.float64),
                       np.ascontiguousarray(vw[:, lo:hi].T, dtype=np.float64), int(chunk), 0, L, *args, out, ovf)
        return out, ovf
    c = -(-L // chunk)
    wp = np.zeros((N, c * chunk))
    wp[:, :L] = vw[:, lo:hi]  # zero products pad the last chunk: an exact sum is unchanged
    wp = np.ascontiguousarray(wp.reshape(N, c, chunk).transpose(1, 2, 0))  # [c, chunk, N]
    cols = N if c * N * 8 <= _PARTS_BYTES else max(1, _PARTS_BYTES // (c * 8))
    rows = max(1, _PARTS_BYTES // (c * cols * 8))
    for r in range(0, M, rows):
        rb = min(rows, M - r)
        xp = np.zeros((rb, c * chunk))
        xp[:, :L] = vx[r:r + rb, lo:hi]
        xp = xp.reshape(rb, c, chunk).transpose(1, 0, 2)
        for j in range(0, N, cols):
            parts = np.matmul(xp, wp[:, :, j:j + cols])  # [c, rb, cols]
            float_acc_partials(np.ascontiguousarray(parts), *args, out[r:r + rb, j:j + cols],
                               ovf[r:r + rb, j:j + cols])
    return out, ovf


def _float_acc_numpy(vx: np.ndarray, vw: np.ndarray, acc: FloatAcc, chunk: int, lo: int = 0,
                     hi: int | None = None):
    """The former implementation (a float64 GEMM per chunk, then the vectorized rounding step):
    the reference the fused kernel is tested against."""
    man, emin, emax, rtz, f64 = float_params(acc)
    hi = vx.shape[1] if hi is None else hi
    out = np.zeros((vx.shape[0], vw.shape[0]))
    ovf = np.zeros(out.shape, dtype=bool)
    for a, b in _chunks(hi - lo, chunk):
        part = vx[:, lo + a:lo + b] @ vw[:, lo + a:lo + b].T
        _fp_steps(out, np.ascontiguousarray(part), man, emin, emax, rtz, f64, ovf)
    return out, ovf


def accumulate(x: Operand, w: Operand, accumulator: "Accumulator | str") -> AccResult:
    """The dot products of every row of ``x`` with every row of ``w`` ([M, N]) as ``accumulator``
    accumulates the element products (row scales not applied; see the module docstring)."""
    accum = parse(accumulator)
    if accum is None:
        raise FmtlabError("accumulate needs an accumulator (got none)")
    vx, vw = x.values, w.values
    if vx.shape[1] != vw.shape[1]:
        raise FmtlabError(f"reduction lengths differ: {vx.shape[1]} vs {vw.shape[1]}")
    acc = accum.acc
    if isinstance(acc, IntAcc):
        if not (x.integer and w.integer):
            raise FmtlabError(f"an integer accumulator ({accum.name}) needs integer element values with "
                              "per-row scales on both operands (INT formats per token / tensor / channel)")
        bound = float(np.abs(vx).max(initial=0)) * float(np.abs(vw).max(initial=0)) * vx.shape[1]
        if bound >= 2.0 ** 53:
            raise FmtlabError(f"the exact integer dot products may exceed 2^53 (bound {bound:.3g})")
        lo, hi = -(2.0 ** (acc.width - 1)), 2.0 ** (acc.width - 1)
        if not acc.saturates:
            exact = vx @ vw.T  # exact: integers below 2^53
            wrapped = np.mod(exact - lo, 2.0 ** acc.width) + lo
            return AccResult(wrapped, (exact < lo) | (exact >= hi))
        out = np.zeros((vx.shape[0], vw.shape[0]))
        ovf = np.zeros(out.shape, dtype=bool)
        for k in range(vx.shape[1]):  # sequential, saturating after every product
            s = out + np.multiply.outer(vx[:, k], vw[:, k])
            ovf |= (s < lo) | (s > hi - 1)
            np.clip(s, lo, hi - 1, out=out)
        return AccResult(out, ovf)
    if isinstance(acc, FloatAcc):
        out, ovf = _float_acc(vx, vw, acc, accum.chunk)
        return AccResult(out, ovf)
    if isinstance(acc, PromotedAcc):
        man, emin, emax, rtz, f64 = float_params(acc.outer)
        out = np.zeros((vx.shape[0], vw.shape[0]))
        ovf = np.zeros(out.shape, dtype=bool)
        for a, b in _chunks(vx.shape[1], acc.interval):
            inner, iovf = _float_acc(vx, vw, acc.inner, accum.chunk, a, b)
            ovf |= iovf
            float_acc_partials(inner[None], int(man), int(emin), int(emax), bool(rtz), bool(f64), out, ovf)
        return AccResult(out, ovf)
    if isinstance(acc, KulischAcc):
        return AccResult(vx @ vw.T, np.zeros((vx.shape[0], vw.shape[0]), dtype=bool))
    raise FmtlabError(f"unsupported accumulator {accum.name!r}")


def accumulated_matmul(x: np.ndarray, w: np.ndarray, act_q: Any, weight_q: Any,
                       accumulator: "Accumulator | str", w_operand: Operand | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Y = Q_a(x) Q_w(w)^T ([rows, out] float32) and the overflow mask [rows, out], every dot
    product accumulated by ``accumulator``. ``x`` [rows, K] is one sequence (its dynamic scales
    are computed over it), ``w`` [out, K]; quantizers are fmtlab Quantizers or None.
    ``w_operand``: a precomputed :func:`operand` of the weight (reused across sequences)."""
    xo = operand(act_q, x)
    wo = w_operand if w_operand is not None else operand(weight_q, w)
    r = accumulate(xo, wo, accumulator)
    y = (xo.row_scale[:, None] * wo.row_scale[None, :]) * r.acc
    return y.astype(np.float32), r.overflow
