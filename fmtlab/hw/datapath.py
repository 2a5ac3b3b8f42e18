"""Bit-accurate MAC datapath: dot products computed exactly as the MAC hardware computes them.

- integer-like products (INT, dINT, log2) are exact integers in units of 2**-(frac_w + frac_a),
  accumulated in a W-bit two's-complement register that wraps or saturates on overflow (each
  overflowing step counted);
- float products (minifloats, FP16, BF16) are exact; a float accumulator (fp32, bf16, fp16,
  any e<E>m<M>) rounds once per step (nearest-even or toward zero, subnormals kept, overflow to
  Inf or to the largest finite value), so a product + accumulator step is an FMA;
- a Kulisch accumulator adds every product exactly into a fixed-point register of
  ``mag + 1 + guard`` bits (wrapping if even that overflows, flagged);
- MX block dot products: per block the exact sum of element products, scaled by the two E8M0
  scales 2^(Sw + Sx - 254), rounded once to the accumulator format and added with one rounding.

Every result comes with the exact dot product (rounded once to float64) and overflow counts.
Accumulation is sequential over k = 0 .. K-1, as a single MAC unit would do it. See
:mod:`fmtlab.hw.dp_kernels` for the numeric conventions of the kernels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import BlockFormat, Format
from fmtlab.hw import dp_kernels as K
from fmtlab.hw.mac import kulisch_flag_bits, kulisch_geometry, make_unit, MacUnit
from fmtlab.hw.operands import (AccOverflow, AccRounding, FixedView, FloatAcc, FloatView, IntAcc,
                                KulischAcc, view)
from fmtlab.hw.promoted_acc import PRESETS as PROMOTED_PRESETS, PromotedAcc, parse_promoted
from fmtlab.hw.promotion import promote_partials

# ------------------------------------------------------------------------------------------
# accumulator bit patterns
# ------------------------------------------------------------------------------------------


def float_params(acc: FloatAcc) -> tuple[int, int, int, bool, bool]:
    """(man_bits, emin, emax, toward_zero, is_fp64) for the kernels."""
    if acc.man_bits > 50 and not (acc.exp_bits, acc.man_bits) == (11, 52):
        raise FmtlabError(f"float accumulators up to 50 fraction bits (or fp64) are supported, "
                          f"got {acc.name}")
    if (acc.exp_bits, acc.man_bits) == (11, 52) and acc.rounding is not AccRounding.NEAREST_EVEN:
        raise FmtlabError("an fp64 accumulator supports nearest-even rounding only")
    emin = 1 - acc.bias
    emax = (1 << acc.exp_bits) - 2 - acc.bias
    return acc.man_bits, emin, emax, acc.toward_zero, (acc.exp_bits, acc.man_bits) == (11, 52)


def float_to_bits(values, acc: FloatAcc) -> np.ndarray:
    """Bit patterns (uint64) of values that lie on ``acc``'s grid; NaN -> the quiet NaN with
    sign 0 and the top fraction bit set."""
    v = np.asarray(values, dtype=np.float64)
    e, m, bias = acc.exp_bits, acc.man_bits, acc.bias
    sign = np.signbit(v).astype(np.uint64) << np.uint64(e + m)
    a = np.abs(v)
    out = np.zeros(v.shape, dtype=np.uint64)
    emax_field = np.uint64((1 << e) - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        fin = np.isfinite(a) & (a > 0)
        mant, ex = np.frexp(np.where(fin, a, 1.0))
        t = ex - 1
        emin = 1 - bias
        normal = fin & (t >= emin)
        E = np.where(normal, t + bias, 0).astype(np.int64)
        lsb = np.where(normal, t - m, emin - m)
        sig = np.ldexp(np.where(fin, a, 0.0), -lsb)
        frac = np.where(normal, sig - (1 << m), sig)
    bits = (E.astype(np.uint64) << np.uint64(m)) | frac.astype(np.uint64)
    out = np.where(fin, bits, out)
    out = np.where(np.isinf(a), emax_field << np.uint64(m), out)
    out = out | sign
    nan = (emax_field << np.uint64(m)) | np.uint64(1 << (m - 1))
    return np.where(np.isnan(v), nan, out).astype(np.uint64)


def bits_to_float(bits, acc: FloatAcc) -> np.ndarray:
    """Values (float64) of accumulator bit patterns."""
    b = np.asarray(bits, dtype=np.uint64)
    e, m, bias = acc.exp_bits, acc.man_bits, acc.bias
    E = ((b >> np.uint64(m)) & np.uint64((1 << e) - 1)).astype(np.int64)
    F = (b & np.uint64((1 << m) - 1)).astype(np.float64)
    neg = ((b >> np.uint64(e + m)) & np.uint64(1)).astype(bool)
    mag = np.where(E > 0, np.ldexp(F + float(1 << m), E - bias - m), np.ldexp(F, 1 - bias - m))
    top = (1 << e) - 1
    mag = np.where(E == top, np.where(F == 0, np.inf, np.nan), mag)
    return np.where(neg, -mag, mag)


def wrap_int(x, width: int) -> np.ndarray:
    """Two's-complement value of the low ``width`` bits (int64 in, int64 out)."""
    x = np.asarray(x, dtype=np.int64)
    if width == 64:
        return x
    hi = np.int64(1) << np.int64(width - 1)
    return ((x + hi) & ((np.int64(1) << np.int64(width)) - 1)) - hi


# ------------------------------------------------------------------------------------------
# per-format tables
# ------------------------------------------------------------------------------------------


def products_exact_in_fp32(vw: FloatView, va: FloatView, acc: FloatAcc) -> bool:
    """True when ``acc`` is fp32 nearest-even and every finite product of the two formats is a
    float32 value (significand <= 24 bits, exponents within float32's grid), so that the
    accumulation is plain float32 addition."""
    return ((acc.exp_bits, acc.man_bits, acc.rounding) == (8, 23, AccRounding.NEAREST_EVEN)
            and vw.sig_bits + va.sig_bits <= 24 and vw.lsb_min + va.lsb_min >= -149
            and vw.msb_max + va.msb_max + 1 <= 127)


def float_tables(v: FloatView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, significand, shift) per code: |value| = sig * 2^(shift + lsb_min) when finite.

    Codes the format leaves unused (``fmt.unused_codes``: flushed subnormals, the -0 slot of a
    rule without -0) take the value the decoder's structure gives them, as in the RTL: the
    significand and exponent of their fields (flushed subnormals: the hidden bit 0, so +/-0).
    """
    n = 1 << v.bits
    codes = np.arange(n, dtype=np.int64)
    E = (codes >> v.man_bits) & ((1 << v.exp_bits) - 1)
    F = codes & ((1 << v.man_bits) - 1)
    sig = np.where(E > 0, F | (1 << v.man_bits), F).astype(np.int64)
    sh = (np.maximum(E, 1) - 1).astype(np.int64)
    val = v.values.astype(np.float64)
    if not v.subnormals:  # flushed codes: the hardware sees the hidden bit as 0 -> value 0
        sig = np.where(E == 0, 0, sig)
    unused = np.zeros(n, dtype=bool)
    unused[sorted(v.fmt.unused_codes)] = True
    if unused.any():
        sign = np.where(codes >> (v.bits - 1), -1.0, 1.0)
        val = np.where(unused, sign * np.ldexp(sig.astype(np.float64), sh + v.lsb_min), val)
    bad = ~np.isfinite(val)
    sig = np.where(bad, 0, sig)
    return val, sig, sh


def _codes(x, fmt_bits: int, what: str) -> np.ndarray:
    c = np.asarray(x)
    if c.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array of codes, got dtype {c.dtype}")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= (1 << fmt_bits)):
        raise FmtlabError(f"{what}: codes must lie in [0, {1 << fmt_bits}), got "
                          f"[{int(c.min())}, {int(c.max())}]")
    dt = np.uint8 if fmt_bits <= 8 else np.uint16
    return np.ascontiguousarray(c, dtype=dt)


def _as_2d(w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    if w.ndim == 0 or x.ndim == 0:
        raise FmtlabError("dot products need arrays with a last (reduction) axis")
    if w.shape[-1] != x.shape[-1]:
        raise FmtlabError(f"reduction lengths differ: {w.shape[-1]} vs {x.shape[-1]}")
    kk = w.shape[-1]
    lead = np.broadcast_shapes(w.shape[:-1], x.shape[:-1])
    W = np.ascontiguousarray(np.broadcast_to(w, lead + (kk,)).reshape(-1, kk))
    if x.ndim == 1 or int(np.prod(x.shape[:-1], dtype=np.int64)) == 1:
        X = np.ascontiguousarray(x.reshape(1, kk))
    else:
        X = np.ascontiguousarray(np.broadcast_to(x, lead + (kk,)).reshape(-1, kk))
    return W, X, lead


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DotResult:
    """Dot products as the hardware computes them, next to the exact ones.

    value: the accumulator after the last step (float64; integer accumulators times ``unit``);
    exact: the exact dot product plus ``init``, rounded once to float64;
    overflows: per dot product, the steps that overflowed (int: wrap/saturate events; float:
    finite + finite giving Inf); Kulisch: 1 if the final exact sum did not fit its register;
    raw: the accumulator register (int: the W-bit integer as int64; float: bit pattern uint64;
    Kulisch: the wrapped integer in units of ``unit`` as float64).
    """

    value: np.ndarray
    exact: np.ndarray
    overflows: np.ndarray
    raw: np.ndarray
    unit: float
    accumulator: str

    @property
    def abs_error(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.abs(self.value - self.exact)

    @property
    def rel_error(self) -> np.ndarray:
        """|value - exact| / |exact| (inf where exact is 0 and value is not)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            e = self.abs_error / np.abs(self.exact)
        return np.where(self.abs_error == 0, 0.0, e)

    def summary(self) -> dict[str, float]:
        """max/mean absolute and relative error and the total overflow count."""
        fin = np.isfinite(self.abs_error)
        ae = self.abs_error[fin]
        re = self.rel_error[fin & np.isfinite(self.rel_error)]
        return dict(n=int(self.value.size), max_abs_error=float(ae.max()) if ae.size else 0.0,
                    mean_abs_error=float(ae.mean()) if ae.size else 0.0,
                    max_rel_error=float(re.max()) if re.size else 0.0,
                    mean_rel_error=float(re.mean()) if re.size else 0.0,
                    overflows=int(self.overflows.sum()), non_finite=int((~fin).sum()))


# ------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------


def dot(w_codes, a_codes, weight: "str | Format", activation: "str | Format",
        accumulator: "str | IntAcc | FloatAcc | KulischAcc | None" = None, *,
        overflow: "AccOverflow | str | None" = None, rounding: "AccRounding | str | None" = None,
        init=None) -> DotResult:
    """Dot products over the last axis of ``w_codes`` and ``a_codes`` (broadcast over the
    leading axes) as the (weight x activation -> accumulator) MAC unit computes them.

    Codes are the formats' bit patterns (``fmt.encode(x)``). ``init``: initial accumulator
    value(s) (float; default 0). Returns a :class:`DotResult` shaped like the leading axes.
    ``accumulator`` may also be a two-level accumulator of a real accelerator (a
    :class:`fmtlab.hw.promoted_acc.PromotedAcc` or a preset name such as ``"hopper_fp8_mma"``).
    """
    if parse_promoted(accumulator) is not None:
        if overflow is not None or rounding is not None:
            raise FmtlabError("overflow/rounding overrides do not apply to a promoted accumulator; "
                              "set them in its inner/outer FloatAcc")
        return promoted_dot(w_codes, a_codes, weight, activation, accumulator, init=init)
    unit = make_unit(weight, activation, accumulator, overflow=overflow, rounding=rounding)
    if unit.is_mx:
        raise FmtlabError("use mx_dot() for MX block formats (it needs the E8M0 scales)")
    vw, va = view(unit.weight), view(unit.activation)
    w = _codes(w_codes, unit.weight.bits, "w_codes")
    x = _codes(a_codes, unit.activation.bits, "a_codes")
    W, X, lead = _as_2d(w, x)
    m = W.shape[0]
    init_arr = np.zeros(m) if init is None else np.broadcast_to(np.asarray(init, np.float64), lead).reshape(-1)
    acc = unit.accumulator
    if isinstance(vw, FixedView):
        return _dot_fixed(unit, vw, va, W, X, init_arr, lead)
    if isinstance(acc, FloatAcc):
        return _dot_float(unit, vw, va, W, X, init_arr, lead)
    return _dot_kulisch(unit, vw, va, W, X, init_arr, lead)


def promoted_dot(w_codes, a_codes, weight, activation, accumulator: "str | PromotedAcc",
                 *, init=None):
    """Dot products over the last axis as a promoted accumulator computes them (:mod:`fmtlab.hw.promotion`).

    Same arguments and result as :func:`dot` (floating-point operands only);
    ``overflows`` counts inner and outer steps that overflowed; ``raw`` holds outer bit patterns.
    """
    acc = parse_promoted(accumulator)
    if acc is None:
        raise FmtlabError(f"unknown promoted accumulator {accumulator!r}; presets: {', '.join(PROMOTED_PRESETS)}")
    w = np.asarray(w_codes)
    x = np.asarray(a_codes)
    if w.ndim == 0 or x.ndim == 0:
        raise FmtlabError("promoted_dot needs arrays with a K axis (last axis)")
    k = w.shape[-1]
    if x.shape[-1] != k:
        raise FmtlabError(f"w_codes and a_codes disagree on K: {w.shape} vs {x.shape}")
    full = dot(w, x, weight, activation, acc.outer, init=init)  # exact reference and the init rounding
    lead = full.value.shape
    if k == 0:
        return dataclasses.replace(full, accumulator=acc.name)
    starts = range(0, k, acc.interval)
    parts = []
    ovf = np.zeros(int(np.prod(lead, dtype=np.int64)), np.int64)
    for s in starts:
        r = dot(w[..., s:s + acc.interval], x[..., s:s + acc.interval], weight, activation, acc.inner)
        parts.append(r.value.reshape(-1))
        ovf += r.overflows.reshape(-1)
    partials = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float64)
    man, emin, emax, rtz, f64 = float_params(acc.outer)
    init_arr = np.zeros(partials.shape[0]) if init is None else \
        np.broadcast_to(np.asarray(init, np.float64), lead).reshape(-1)
    acc0 = np.array([v if f64 else K.round_fmt(float(v), man, emin, emax, rtz) for v in init_arr])
    out = np.empty(partials.shape[0])
    out_ovf = np.empty(partials.shape[0], np.int64)
    promote_partials(partials, acc0, man, emin, emax, rtz, f64, out, out_ovf)
    return DotResult(out.reshape(lead), full.exact, (ovf + out_ovf).reshape(lead),
                     float_to_bits(out, acc.outer).reshape(lead), 1.0, acc.name)


def matvec(w_codes, x_codes, weight: "str | Format", activation: "str | Format",
           accumulator: "str | IntAcc | FloatAcc | KulischAcc | None" = None, **kw) -> DotResult:
    """``W @ x`` for a (M, K) code matrix and a (K,) code vector: M dot products of length K."""
    w = np.asarray(w_codes)
    x = np.asarray(x_codes)
    if w.ndim != 2 or x.ndim != 1:
        raise FmtlabError(f"matvec needs a 2-D matrix and a 1-D vector, got {w.shape} and {x.shape}")
    return dot(w, x, weight, activation, accumulator, **kw)


def _dot_fixed(unit: MacUnit, vw: FixedView, va: FixedView, W, X, init, lead) -> DotResult:
    acc: IntAcc = unit.accumulator  # type: ignore[assignment]
    scale = 2.0 ** -(vw.frac + va.frac)
    acc0 = np.rint(init / scale).astype(np.int64)
    if np.any(np.abs(init / scale - acc0) > 0):
        raise FmtlabError(f"init must be a multiple of the accumulator unit {scale}")
    acc0 = wrap_int(acc0, acc.width)
    m = W.shape[0]
    out = np.empty(m, np.int64)
    ex = np.empty(m, np.int64)
    ovf = np.empty(m, np.int64)
    K.dot_fixed(W, X, vw.lut, va.lut, acc.width, acc.saturates, acc0, out, ex, ovf)
    exact = (ex.astype(np.float64) + init / scale) * scale
    return DotResult((out * scale).reshape(lead), exact.reshape(lead), ovf.reshape(lead),
                     out.reshape(lead), scale, acc.name)


def _dot_float(unit: MacUnit, vw: FloatView, va: FloatView, W, X, init, lead) -> DotResult:
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    man, emin, emax, rtz, f64 = float_params(acc)
    valw, sigw, shw = float_tables(vw)
    valx, sigx, shx = float_tables(va)
    m = W.shape[0]
    acc0 = np.array([K.round_fmt(float(v), man, emin, emax, rtz) if not f64 else float(v)
                     for v in init])
    out = np.empty(m)
    ovf = np.empty(m, np.int64)
    if products_exact_in_fp32(vw, va, acc):
        out32 = np.empty(m, np.float32)
        K.dot_float32(W, X, valw.astype(np.float32), valx.astype(np.float32), acc0.astype(np.float32),
                      out32, ovf)
        out = out32.astype(np.float64)
    else:
        K.dot_float(W, X, valw, valx, man, emin, emax, rtz, f64, acc0, out, ovf)
    exact = _exact_float(vw, va, W, X, valw, sigw, shw, valx, sigx, shx, 0)[0] + acc0
    return DotResult(out.reshape(lead), exact.reshape(lead), ovf.reshape(lead),
                     float_to_bits(out, acc).reshape(lead), 1.0, acc.name)


def _nlimbs(vw: FloatView, va: FloatView, k: int, width: int = 0) -> int:
    bits = (vw.msb_max + va.msb_max + 2) - (vw.lsb_min + va.lsb_min) + max(k, 1).bit_length() + 2
    return max(bits, width) // K.LIMB + 3


def _sum_exact_in_f64(vw: FloatView, va: FloatView, k: int) -> bool:
    """True when every partial sum of ``k`` finite products, in any order, is a float64 value:
    each is a multiple of 2^(lsb_w + lsb_a) below k * 2^(msb_w + msb_a + 2) in magnitude, so at
    most 53 significant bits suffice (e.g. fp8_e4m3 x fp8_e4m3 for k < 2^17)."""
    bits = (vw.msb_max + va.msb_max + 2) - (vw.lsb_min + va.lsb_min) + max(k, 1).bit_length()
    return (bits <= 53 and vw.sig_bits + va.sig_bits <= 53 and vw.lsb_min + va.lsb_min >= -1074
            and vw.msb_max + va.msb_max + 2 + max(k, 1).bit_length() <= 1023)


def _exact_float_f64(W, X, valw, sigw, shw, valx, sigx, shx, lsb_w: int, lsb_a: int) -> np.ndarray:
    """``dot_exact_float``'s out_exact (with its specials) where :func:`_sum_exact_in_f64` holds:
    a plain float64 sum of the products is then exact whatever the order. Finite products are
    sign * sig_w * sig_x * 2^(shifts + lsb) as in the limb kernel; a product with a NaN or
    infinite operand is val_w * val_x; a NaN result is ``np.nan``, a zero result +0.0."""
    tw = np.where(valw < 0, -1.0, 1.0) * np.ldexp(sigw.astype(np.float64), shw + lsb_w)
    tx = np.where(valx < 0, -1.0, 1.0) * np.ldexp(sigx.astype(np.float64), shx + lsb_a)
    fin_w, fin_x = np.isfinite(valw), np.isfinite(valx)
    m, k = W.shape
    out = np.empty(m)
    step = max(1, (1 << 20) // max(k, 1))
    for r0 in range(0, m, step):
        w = W[r0:r0 + step]
        x = X if X.shape[0] == 1 else X[r0:r0 + step]
        terms = tw[w] * tx[x]
        special = ~(fin_w[w] & fin_x[x])
        if special.any():
            terms = np.where(special, valw[w] * valx[x], terms)
        out[r0:r0 + step] = terms.sum(axis=1)
    out = np.where(np.isnan(out), np.nan, out)
    return out + 0.0  # -0.0 -> +0.0, as the limb sum gives


def _exact_float(vw, va, W, X, valw, sigw, shw, valx, sigx, shx, width):
    m = W.shape[0]
    if width <= 0 and _sum_exact_in_f64(vw, va, W.shape[1]):
        exact = _exact_float_f64(W, X, valw, sigw, shw, valx, sigx, shx, vw.lsb_min, va.lsb_min)
        return exact, exact.copy(), np.zeros(m, np.int64)
    exact = np.empty(m)
    wrapped = np.empty(m)
    ovf = np.empty(m, np.int64)
    special = np.empty(m)
    base = vw.lsb_min + va.lsb_min
    K.dot_exact_float(W, X, sigw, shw, sigx, shx, valw, valx, base, _nlimbs(vw, va, W.shape[1], width),
                      width, exact, wrapped, ovf, special)
    sp = special != 0
    exact = np.where(sp, special, exact)
    wrapped = np.where(sp, special, wrapped)
    return exact, wrapped, ovf


def _dot_kulisch(unit: MacUnit, vw: FloatView, va: FloatView, W, X, init, lead) -> DotResult:
    acc: KulischAcc = unit.accumulator  # type: ignore[assignment]
    if init is not None and np.any(init != 0):
        raise FmtlabError("a Kulisch accumulator starts from 0 (init is not supported)")
    _, _, width = kulisch_geometry(vw, va, acc.guard)
    valw, sigw, shw = float_tables(vw)
    valx, sigx, shx = float_tables(va)
    exact, wrapped, ovf = _exact_float(vw, va, W, X, valw, sigw, shw, valx, sigx, shx, width)
    unit_ = 2.0 ** (vw.lsb_min + va.lsb_min)
    return DotResult(wrapped.reshape(lead), exact.reshape(lead), ovf.reshape(lead),
                     (wrapped / unit_).reshape(lead), unit_, acc.name)


def mx_dot(w_codes, a_codes, w_scales, a_scales, weight: "str | BlockFormat" = "mxfp8",
           activation: "str | BlockFormat" = "mxfp8", accumulator: "str | FloatAcc" = "fp32", *,
           rounding: "AccRounding | str | None" = None, init=None) -> DotResult:
    """MX block dot products over the last axis: element codes (..., K) and E8M0 scale codes
    (..., K / block) for both operands (255 = NaN scale)."""
    unit = make_unit(weight, activation, accumulator, rounding=rounding)
    if not unit.is_mx:
        raise FmtlabError("mx_dot needs MX formats (e.g. 'mxfp8', 'mxfp4')")
    ew, ea = view(unit.weight.element), view(unit.activation.element)
    blk = unit.weight.block
    w = _codes(w_codes, ew.bits, "w_codes")
    x = _codes(a_codes, ea.bits, "a_codes")
    if w.shape[-1] % blk:
        raise FmtlabError(f"the reduction length {w.shape[-1]} is not a multiple of the block {blk}")
    sw = _codes(w_scales, 8, "w_scales")
    sx = _codes(a_scales, 8, "a_scales")
    nblk = w.shape[-1] // blk
    if sw.shape[-1] != nblk or sx.shape[-1] != nblk:
        raise FmtlabError(f"scales need {nblk} entries on the last axis, got {sw.shape[-1]} and {sx.shape[-1]}")
    W, X, lead = _as_2d(w, x)
    SW, SX, _ = _as_2d(sw, sx)
    if SW.shape[0] != W.shape[0] or SX.shape[0] != X.shape[0]:
        raise FmtlabError("scales must broadcast like the codes")
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    man, emin, emax, rtz, f64 = float_params(acc)
    if f64:
        raise FmtlabError("MX units accumulate in formats of at most 50 fraction bits")
    valw, sigw, shw = float_tables(ew)
    valx, sigx, shx = float_tables(ea)
    m = W.shape[0]
    init_arr = np.zeros(m) if init is None else np.broadcast_to(np.asarray(init, np.float64), lead).reshape(-1)
    acc0 = np.array([K.round_fmt(float(v), man, emin, emax, rtz) for v in init_arr])
    nl = _nlimbs(ew, ea, blk)
    nl_all = (K.MX_OFFSET + 254 + 30 * nl + max(W.shape[1], 1).bit_length()) // K.LIMB + 3
    out = np.empty(m)
    exact = np.empty(m)
    ovf = np.empty(m, np.int64)
    K.dot_mx(W, X, SW, SX, blk, sigw, shw, sigx, shx, valw, valx, ew.lsb_min + ea.lsb_min, nl, nl_all,
             man, emin, emax, rtz, acc0, out, exact, ovf)
    return DotResult(out.reshape(lead), exact.reshape(lead), ovf.reshape(lead),
                     float_to_bits(out, acc).reshape(lead), 1.0, acc.name)


# ------------------------------------------------------------------------------------------
# one MAC step on register bit patterns (the RTL cross-check)
# ------------------------------------------------------------------------------------------


def mac_step(unit: MacUnit, acc_in, w_codes, a_codes) -> np.ndarray:
    """Next accumulator register (bit pattern) for each (acc_in, w, a) triple.

    int: W-bit patterns (uint64); float: IEEE-like patterns (uint64); Kulisch: Python ints
    (object array) holding ``{flags, register}`` with flags (MSB first) NaN, +Inf, -Inf as
    present for the pair (see :func:`fmtlab.hw.mac.kulisch_flag_bits`).
    """
    if unit.is_mx:
        raise FmtlabError("use mx_step() for MX units")
    vw, va = view(unit.weight), view(unit.activation)
    w = _codes(w_codes, unit.weight.bits, "w_codes").reshape(-1, 1)
    x = _codes(a_codes, unit.activation.bits, "a_codes").reshape(-1, 1)
    acc = unit.accumulator
    n = w.shape[0]
    if isinstance(acc, IntAcc):
        a_in = np.asarray(acc_in, dtype=np.uint64).reshape(-1)
        mask = np.uint64((1 << acc.width) - 1) if acc.width < 64 else np.uint64(2 ** 64 - 1)
        acc0 = wrap_int((a_in & mask).astype(np.int64), acc.width)
        out = np.empty(n, np.int64)
        ex = np.empty(n, np.int64)
        ovf = np.empty(n, np.int64)
        K.dot_fixed(w, x, vw.lut, va.lut, acc.width, acc.saturates, acc0, out, ex, ovf)
        return out.astype(np.uint64) & mask
    if isinstance(acc, FloatAcc):
        man, emin, emax, rtz, f64 = float_params(acc)
        acc0 = bits_to_float(np.asarray(acc_in, dtype=np.uint64).reshape(-1), acc)
        valw, _, _ = float_tables(vw)
        valx, _, _ = float_tables(va)
        out = np.empty(n)
        ovf = np.empty(n, np.int64)
        K.dot_float(w, x, valw, valx, man, emin, emax, rtz, f64, acc0, out, ovf)
        return float_to_bits(out, acc)
    return kulisch_step(unit, vw, va, acc_in, w.reshape(-1), x.reshape(-1))


def kulisch_product(vw: FloatView, va: FloatView, cw: int, cx: int) -> tuple[str, int]:
    """('nan' | 'pinf' | 'ninf' | 'fin', integer product in Kulisch units)."""
    valw, sigw, shw = float_tables(vw)
    valx, sigx, shx = float_tables(va)
    p = float(valw[cw]) * float(valx[cx])
    if math.isnan(p):
        return "nan", 0
    if math.isinf(p):
        return ("pinf" if p > 0 else "ninf"), 0
    mag = int(sigw[cw]) * int(sigx[cx]) << int(shw[cw] + shx[cx])
    return "fin", (-mag if (valw[cw] < 0) != (valx[cx] < 0) else mag)


def kulisch_step(unit: MacUnit, vw: FloatView, va: FloatView, acc_in, w, x) -> np.ndarray:
    """Kulisch register update on Python ints (exact, any width)."""
    acc: KulischAcc = unit.accumulator  # type: ignore[assignment]
    _, _, width = kulisch_geometry(vw, va, acc.guard)
    nf = kulisch_flag_bits(vw, va)
    valw, sigw, shw = float_tables(vw)
    valx, sigx, shx = float_tables(va)
    mask = (1 << width) - 1
    out = np.empty(len(w), dtype=object)
    for i, (r, cw, cx) in enumerate(zip(np.asarray(acc_in, dtype=object).reshape(-1), w, x)):
        r = int(r)
        reg = r & mask
        flags = r >> width
        nan, pinf, ninf = (flags >> 2) & 1, (flags >> 1) & 1, flags & 1
        if nf == 1:
            nan, pinf, ninf = flags & 1, 0, 0
        p = float(valw[cw]) * float(valx[cx])
        if math.isnan(p):
            nan = 1
        elif math.isinf(p):
            if p > 0:
                pinf = 1
            else:
                ninf = 1
        else:
            mag = int(sigw[cw]) * int(sigx[cx]) << int(shw[cw] + shx[cx])
            reg = (reg + (-mag if (valw[cw] < 0) != (valx[cx] < 0) else mag)) & mask
        if nf == 3:
            flags = (nan << 2) | (pinf << 1) | ninf
        elif nf == 1:
            flags = nan
        else:
            flags = 0
        out[i] = (flags << width) | reg
    return out


def mx_step(unit: MacUnit, acc_in, w_blocks, a_blocks, w_scales, a_scales) -> np.ndarray:
    """Next float accumulator bit pattern for each (acc_in, block of w, block of a, scales)."""
    if not unit.is_mx:
        raise FmtlabError("mx_step needs an MX unit")
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    init = bits_to_float(np.asarray(acc_in, dtype=np.uint64).reshape(-1), acc)
    r = mx_dot(np.asarray(w_blocks), np.asarray(a_blocks), np.asarray(w_scales).reshape(-1, 1),
               np.asarray(a_scales).reshape(-1, 1), unit.weight, unit.activation, acc, init=init)
    return np.asarray(r.raw, dtype=np.uint64).reshape(-1)
