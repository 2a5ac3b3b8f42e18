"""Quantizer: an element format + a granularity + a scale rule + rounding -> codes and scales.

    q = Quantizer("int8", PerChannel(0))       # weights [out, in]: one scale per output row
    qt = q.quantize(w)                          # QTensor: codes, scales, zero points, report
    w_hat = q.dequantize(qt)                    # == q.fake_quantize(w), bit for bit
    y = q.fake_quantize(x)                      # fused: scale, round, clamp, rescale in one pass

Numeric convention (a torch twin reproduces these bits; details in scaling.py and mx.py):
- scales are float32; statistics are rounded to float32 first; s = fl32(c / fl32(fmt.max));
- elements: y = fl(x / s) in x's precision (float32 or float64; never through the other), the
  format's rounding of y (minus the zero point for asymmetric INT), value fl(v * s), where v*s is
  exact in float64 before the final rounding;
- ``fake_quantize(x) == dequantize(quantize(x))`` and both equal the element oracle applied to
  x / s, times s;
- stochastic rounding draws ``np.random.default_rng(seed).random(x.size)``, one per element of x
  in C order (same seed, same result).
Bad input (empty, non-finite scales, Inf under absmax, NaN for a format without NaN, a group size
that does not divide the axis, an axis out of range) raises FmtlabError/FormatError naming it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import _fast_kernels as K
from fmtlab.formats import mx as _mx
from fmtlab.formats.base import Format, check_exact_in_float64, make_rng
from fmtlab.formats.kernels import Rows, encode_scaled, fq_scaled, generic, params, scale_args
from fmtlab.formats.registry import get_format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding, parse_bool
from fmtlab.formats.block_rules import run_block_rule
from fmtlab.formats import mixfp4 as _mix
from fmtlab.formats.scaling import (
    MSE, AbsMax, FourOverSix, Granularity, MixFP4, Layout, MinMax, Percentile, PerBlock, PerTensor,
    ScaleRule, SharedExp, Static, broadcast_scales, from_work, parse_granularity, parse_scale_rule, plan_layout,
    pow2_ceil, slot_matrix, to_work, work_rows,
)

__all__ = ["Quantizer", "QTensor", "QuantReport"]

_TINY32 = np.float32(2.0 ** -149)


@dataclasses.dataclass(frozen=True)
class QuantReport:
    """What a quantizer did to one tensor.

    clipped: inputs whose scaled value y = x / s (+ zero point) lies beyond the rounding boundary
    of the largest (or most negative) finite value: nearest rounding would have left the range, so
    they saturated or overflowed (Inf inputs included); flushed: nonzero finite inputs whose result
    is zero; nonfinite_blocks: blocks of a block format that got the NaN scale."""

    n: int
    nonzero: int
    clipped: int
    flushed: int
    nonfinite_blocks: int = 0

    @property
    def frac_clipped(self) -> float:
        """clipped / n."""
        return self.clipped / self.n if self.n else 0.0

    @property
    def frac_flushed(self) -> float:
        """flushed / (number of nonzero finite inputs)."""
        return self.flushed / self.nonzero if self.nonzero else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized tensor: everything needed to reproduce its bits.

    codes: element codes in x's shape (the format's code dtype); scales: float32, one per slot
    in ``layout.scale_shape`` (the effective element scale; NaN for non-finite blocks);
    zero_points: int64 per slot (asymmetric INT) or None; scale_codes: E8M0 / FP8 codes of block
    scales or None; tensor_scale: NVFP4's FP32 per-tensor scale or None."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    scale_codes: np.ndarray | None
    tensor_scale: float | None
    quantizer: "Quantizer"
    layout: Layout
    dtype: np.dtype
    report: QuantReport

    @property
    def shape(self) -> tuple:
        return self.codes.shape

    @property
    def format(self) -> Format:
        return self.quantizer.format

    def dequantize(self) -> np.ndarray:
        return self.quantizer.dequantize(self)


def _as_input(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "c":
        raise FmtlabError("cannot quantize complex input")
    if a.dtype.kind not in "fiub":
        raise FmtlabError(f"cannot quantize an array of dtype {a.dtype}")
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        check_exact_in_float64(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype.kind == "f" and a.dtype.itemsize <= 4 else np.float64)
    if a.size == 0:
        raise FmtlabError(f"cannot quantize an empty tensor (shape {a.shape})")
    return a


def _is_pow2(s: np.ndarray) -> bool:
    m, _ = np.frexp(s.astype(np.float64))
    return bool(np.all(m == 0.5))


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Element format x granularity x scale rule x rounding (see the module docstring).

    format: a Format or a registry name; granularity: PerTensor() (default), PerChannel(axis),
    PerToken(), PerGroup(size, axis), PerBlock(size, axis, scale_format, tensor_scale) or a short
    name; scale_rule: AbsMax() (default; SharedExp("floor") for E8M0 blocks), Percentile(p), MSE(),
    Static(scale[, zero_point]), MinMax() (asymmetric INT), SharedExp(mode), or a name/number;
    rounding: any Rounding (STOCHASTIC needs ``seed``); overflow: element overflow (default
    saturate, the MX/NVFP4 rule); nan: what NaN inputs do in a format without NaN (None, the
    default: raise; for block formats None is OCP MX's rule, a NaN makes its whole block NaN with
    scale code 0xFF, while an explicit "raise" raises FormatError and "zero" reads NaN as 0);
    pow2: round scales up to powers of two (a bool; config strings true/false/1/0/yes/no/on/off, any
    other value raises); name: the preset name, if any.
    """

    format: Format | str
    granularity: Granularity | str = PerTensor()
    scale_rule: ScaleRule | str | float | None = None
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    overflow: Overflow | str = Overflow.SATURATE
    nan: NanInput | str | None = None
    pow2: bool = False
    seed: int | None = None
    name: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        fmt = get_format(self.format)
        g = parse_granularity(self.granularity)
        block = isinstance(g, PerBlock)
        if self.scale_rule is None:
            rule = SharedExp("floor") if block and g.scale_format == "e8m0" else AbsMax()
        else:
            rule = parse_scale_rule(self.scale_rule)
        rounding, overflow, nan = fmt.resolve_conventions(self.rounding, self.overflow,
                                               NanInput.RAISE if self.nan is None else self.nan)
        if self.nan is None and block:
            nan = None  # OCP MX: a NaN element makes its block NaN (see _blocks)
        try:  # config strings hand over "no" / "off": a non-empty str must not read as True
            pow2 = parse_bool(self.pow2, "pow2")
        except ValueError as exc:
            raise FmtlabError(str(exc)) from None
        for k, v in (("format", fmt), ("granularity", g), ("scale_rule", rule), ("pow2", pow2),
                     ("rounding", rounding), ("overflow", overflow), ("nan", nan)):
            object.__setattr__(self, k, v)
        if not np.any(fmt.values() == 0):  # E8M0: zeros could not survive any scale
            raise FmtlabError(f"{fmt.name} has no zero: it is a scale format, not an element format")
        if block:
            if g.scale_format == "e8m0" and not isinstance(rule, SharedExp):
                raise FmtlabError(f"E8M0 block scales take a shared-exponent rule (floor, ceil, even, "
                                  f"rceil, neuron, midmax), got scale_rule={rule}")
            if g.scale_format != "e8m0" and not isinstance(rule, (AbsMax, FourOverSix, MixFP4)):
                raise FmtlabError(f"FP8 block scales are computed from the block absmax; got "
                                  f"scale_rule={rule}")
            if self.pow2:
                raise FmtlabError("pow2=True does not apply to block formats (MX scales are powers "
                                  "of two already)")
            _mx.block_elem(fmt)  # validates the element format
        elif isinstance(rule, SharedExp):
            raise FmtlabError(f"shared-exponent rule {rule} needs PerBlock(scale_format='e8m0')")
        if isinstance(rule, (FourOverSix, MixFP4)) and not (block and g.scale_format != "e8m0"):
            raise FmtlabError(f"scale rule {rule} needs FP8-scaled blocks (PerBlock(scale_format="
                              "'fp8_e4m3'), e.g. nvfp4)")
        if isinstance(rule, MixFP4):
            _mix.check_element(fmt)
        if isinstance(rule, MinMax) or (isinstance(rule, Static) and rule.zero_point is not None):
            if not _integer_grid(fmt):
                raise FmtlabError(f"asymmetric scaling (zero points) needs an INT format (consecutive "
                                  f"integer values), got {fmt.name}")
        if rounding is Rounding.STOCHASTIC:
            if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
                raise FmtlabError("stochastic rounding needs seed=<int> (no hidden global RNG)")
        if self.seed is not None and not isinstance(self.seed, (int, np.integer)):
            raise FmtlabError(f"seed must be an int, got {self.seed!r}")

    # ---- description ----------------------------------------------------------------------
    def __str__(self) -> str:
        if self.name:
            return self.name
        return f"{self.format.name}/{self.granularity}/{self.scale_rule}"

    def describe(self) -> str:
        """One line: format, granularity, rule, rounding."""
        extra = ", pow2 scales" if self.pow2 else ""
        return (f"{self}: {self.format.name} elements, {self.granularity}, scale rule {self.scale_rule}, "
                f"{self.rounding.value} rounding, overflow {self.overflow.value}{extra}")

    @property
    def is_block(self) -> bool:
        return isinstance(self.granularity, PerBlock)

    def layout(self, shape: tuple) -> Layout:
        """Where the scales of an array of ``shape`` live (see scaling.Layout)."""
        return plan_layout(self.granularity, shape)

    # ---- scales ---------------------------------------------------------------------------
    def _qmax(self) -> np.float32:
        return np.float32(self.format.max)

    def _finalize(self, c: np.ndarray) -> np.ndarray:
        """s = fl32(c / qmax) with the zero and underflow conventions, then pow2."""
        c = np.asarray(c, dtype=np.float32)
        if not np.all(np.isfinite(c)):
            raise FmtlabError(f"non-finite scale: the input holds Inf (rule {self.scale_rule}); "
                              "clean it or use a static scale")
        s = c / self._qmax()
        s = np.where(c == 0, np.float32(1.0), np.where(s == 0, _TINY32, s)).astype(np.float32)
        return self._pow2(s)

    def _pow2(self, s: np.ndarray) -> np.ndarray:
        if self.pow2:
            s = pow2_ceil(s)
            if not np.all(np.isfinite(s)):
                raise FmtlabError("a power-of-two scale overflows float32")
        return s

    def _slot_absmax(self, M: np.ndarray) -> np.ndarray:
        """max finite |x| per row of the [nslots, L] matrix M (float32); raises on Inf."""
        nslots, L = M.shape
        if M.dtype == np.float32 and M.flags.c_contiguous:
            flat = M.reshape(-1)
            if nslots < 8 and L >= 65536 and L % 8192 == 0:
                amax = np.empty(flat.size // 8192, np.float32)
                flags = np.empty(amax.size, np.int64)
                K.finite_absmax_rows(flat, 8192, amax, flags)
                amax = amax.reshape(nslots, -1).max(axis=1)
                flags = np.bitwise_or.reduce(flags.reshape(nslots, -1), axis=1)
            else:
                amax = np.empty(nslots, np.float32)
                flags = np.empty(nslots, np.int64)
                K.finite_absmax_rows(flat, L, amax, flags)
            inf = bool(np.any(flags & 2))
        else:
            b = np.abs(M)
            inf = bool(np.isinf(b).any())
            amax = np.where(np.isfinite(b), b, 0).max(axis=1).astype(np.float32)
        if inf:
            raise FmtlabError(f"non-finite scale: the input holds Inf (rule {self.scale_rule}); "
                              "clean it or use a static scale")
        return amax

    def _percentile(self, M: np.ndarray, p: float) -> np.ndarray:
        v = np.sort(np.abs(M).astype(np.float32), axis=1)  # NaN sorts last
        n = np.sum(~np.isnan(v), axis=1)
        h = (np.maximum(n, 1) - 1) * (p / 100.0)
        i = np.floor(h).astype(np.int64)
        t = h - i
        lo = np.take_along_axis(v, i[:, None], axis=1)[:, 0].astype(np.float64)
        hi = np.take_along_axis(v, np.minimum(i + 1, np.maximum(n - 1, 0))[:, None], axis=1)[:, 0]
        c = (lo + (hi.astype(np.float64) - lo) * t).astype(np.float32)
        return np.where(n == 0, np.float32(0), c)

    def mse_clip_values(self, M: np.ndarray, rule: MSE | None = None) -> np.ndarray:
        """The clip value per row of a slot matrix M [nslots, L] (float32 or float64) that the MSE
        rule picks (``rule``, default the quantizer's own), float32, before the scale conversion
        (the torch twin calls this on CPU: fmtlab.pytorch.scales)."""
        rule = self.scale_rule if rule is None else rule
        if not isinstance(rule, MSE):
            raise FmtlabError(f"mse_clip_values needs an MSE rule, got {rule}")
        M = np.asarray(M)
        if M.ndim != 2 or M.dtype not in (np.float32, np.float64):
            raise FmtlabError(f"mse_clip_values needs a float32/float64 [slots, L] matrix, got {M.dtype} {M.shape}")
        return self._mse(M, rule)

    def _mse(self, M: np.ndarray, rule: MSE) -> np.ndarray:
        amax = self._slot_absmax(M)
        rnd = Rounding.NEAREST_EVEN if self.rounding is Rounding.STOCHASTIC else self.rounding
        nan = NanInput.ZERO if not self.format.has_nan else self.nan
        plan = params(self.format, rnd, self.overflow, nan)
        if plan is not None and M.dtype != np.float32:
            plan = generic(plan)
        Mc = np.ascontiguousarray(M).reshape(-1)
        nslots, L = M.shape
        best = np.full(nslots, np.inf)
        best_c = amax.copy()
        z = np.zeros(1, M.dtype)
        sse = np.empty(nslots)
        for r in rule.ratios:
            c = (amax * r).astype(np.float32)
            s = self._finalize(c)
            sd, inv, _, pw = scale_args(s, None, M.dtype, _is_pow2(s))
            if plan is not None:
                K.sse_rows(*plan, Mc, L, nslots, sd, inv, z, pw, sse)
            else:  # table path: the same fake-quant, summed in the kernel's (sequential) order
                fq = fq_scaled(self.format, Mc, Rows(L, nslots), s, pow2=pw, rounding=rnd,
                               overflow=self.overflow, nan=nan)
                with np.errstate(invalid="ignore", over="ignore"):
                    d = fq.astype(np.float64).reshape(nslots, L) - M.astype(np.float64)
                    sse = np.cumsum(d * d, axis=1)[:, -1] if L else np.zeros(nslots)
            better = sse < best
            best = np.where(better, sse, best)
            best_c = np.where(better, c, best_c)
        return best_c

    def compute_scales(self, x) -> tuple[np.ndarray, np.ndarray | None]:
        """(scales, zero_points) of a non-block quantizer for x, one per slot (flat, float32 /
        int64)."""
        if self.is_block:
            raise FmtlabError("block formats compute their scales inside quantize/fake_quantize")
        a = _as_input(x)
        lay = self.layout(a.shape)
        return self._scales(to_work(a, lay), lay)

    def _scales(self, w: np.ndarray, lay: Layout) -> tuple[np.ndarray, np.ndarray | None]:
        rule = self.scale_rule
        if isinstance(rule, Static):
            s = np.asarray(rule.scale, dtype=np.float32).reshape(-1)
            s = self._pow2(np.broadcast_to(s, (lay.nslots,)).copy() if s.size in (1, lay.nslots)
                           else _bad_static(s.size, lay))
            z = None
            if rule.zero_point is not None:
                z = np.asarray(rule.zero_point, dtype=np.int64).reshape(-1)
                if z.size not in (1, lay.nslots):
                    raise FmtlabError(f"static zero_point has {z.size} values for {lay.nslots} slots")
                z = np.broadcast_to(z, (lay.nslots,)).copy()
                if np.any(z < self.format.min) or np.any(z > self.format.max):
                    raise FmtlabError(f"zero points must lie in [{self.format.min:g}, {self.format.max:g}]")
            return s, z
        M = slot_matrix(w, lay)
        if isinstance(rule, AbsMax):
            return self._finalize(self._slot_absmax(M)), None
        if isinstance(rule, Percentile):
            return self._finalize(self._percentile(M, rule.p)), None
        if isinstance(rule, MSE):
            return self._finalize(self._mse(M, rule)), None
        if isinstance(rule, MinMax):
            return self._minmax(M)
        raise FmtlabError(f"scale rule {rule} does not apply to {self.granularity}")

    def _minmax(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if np.isinf(M).any():
            raise FmtlabError("non-finite scale: the input holds Inf (rule minmax)")
        with np.errstate(all="ignore"):
            lo = np.minimum(np.nan_to_num(np.nanmin(M, axis=1), nan=0.0), 0).astype(np.float32)
            hi = np.maximum(np.nan_to_num(np.nanmax(M, axis=1), nan=0.0), 0).astype(np.float32)
        qmin, qmax = np.float32(self.format.min), np.float32(self.format.max)
        s = (hi - lo) / (qmax - qmin)
        s = np.where(hi - lo == 0, np.float32(1.0), np.where(s == 0, _TINY32, s)).astype(np.float32)
        if not np.all(np.isfinite(s)):
            raise FmtlabError("non-finite scale: max - min overflows float32")
        s = self._pow2(s)
        z = np.clip(np.rint(float(qmin) - lo.astype(np.float64) / s.astype(np.float64)), qmin, qmax)
        return s, z.astype(np.int64)

    # ---- main API -------------------------------------------------------------------------
    def _rand(self, a: np.ndarray, lay: Layout) -> np.ndarray | None:
        if self.rounding is not Rounding.STOCHASTIC:
            return None
        r = make_rng(int(self.seed)).random(a.size).reshape(a.shape)
        return to_work(r, lay).reshape(-1)

    def _kw(self, rand):
        return dict(rounding=self.rounding, overflow=self.overflow, nan=self.nan, rand=rand)

    def fake_quantize(self, x) -> np.ndarray:
        """Fused quantize-dequantize of x (float32 or float64 in, same dtype and shape out)."""
        return self.fake_quantize_scaled(x)[0]

    def fake_quantize_scaled(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``fake_quantize(x)`` and the scales and zero points it used: (out, scales, zero_points),
        scales flat float32 one per slot of ``layout(x.shape)`` (a block format's effective block
        scales, NaN for non-finite blocks), zero points flat int64 or None. The same numbers as
        ``compute_scales`` / ``quantize(x).scales``, from one pass (the simulator derives its clip
        mask from them instead of recomputing the scales)."""
        a = _as_input(x)
        lay = self.layout(a.shape)
        w = to_work(a, lay)
        flat = w.reshape(-1)
        if self.is_block:
            res = self._blocks(flat, lay, want_out=True, want_codes=False)
            return from_work(res.out, lay), np.asarray(res.scales).reshape(-1), None
        s, z = self._scales(w, lay)
        out = fq_scaled(self.format, flat, lay.kl, s, z, pow2=_is_pow2(s), **self._kw(self._rand(a, lay)))
        self._check_range(flat, out, s)
        return from_work(out, lay), s, z

    def _check_range(self, x: np.ndarray, out: np.ndarray, s: np.ndarray) -> None:
        """Raise if a finite input's result left the float range of its dtype. Only power-of-two
        scales can do this (s = 2**ceil(log2(amax / qmax)) puts the grid's end up to 2x beyond
        amax: x = 3.4e38 rounds to 2**128 in int8 with s = 2**122), so the pass runs only when
        the scaled grid reaches beyond the dtype's max."""
        reach = float(np.max(s, initial=0.0)) * (abs(self.format.max) + abs(self.format.min))
        if reach < float(np.finfo(out.dtype).max):
            return
        with np.errstate(invalid="ignore"):
            bad = np.isinf(out) & np.isfinite(x)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FmtlabError(f"{int(bad.sum())} finite input(s) (e.g. {float(x[i])!r}) round beyond the "
                              f"{out.dtype} range on the power-of-two grid (pow2=True near the dtype's max): "
                              "use pow2=False or float64 input")

    def fake_quantize_report(self, x) -> tuple[np.ndarray, QuantReport]:
        """fake_quantize(x) and the QuantReport of what it did."""
        q = self.quantize(x)
        return self.dequantize(q), q.report

    def _blocks(self, flat: np.ndarray, lay: Layout, want_out: bool, want_codes: bool):
        if self.nan is not None:
            with np.errstate(invalid="ignore"):
                nan = np.isnan(flat)
            if nan.any():
                if self.nan is NanInput.RAISE:
                    raise FormatError(f"{self}: the input holds {int(nan.sum())} NaN value(s) and nan='raise' "
                                      "(the default nan=None makes their MX blocks NaN; nan='zero' reads them as 0)")
                flat = np.where(nan, flat.dtype.type(0), flat)
        return run_block_rule(self, flat, want_out, want_codes)

    def quantize(self, x) -> QTensor:
        """Codes, scales (and zero points / block scale codes) of x, with a QuantReport."""
        a = _as_input(x)
        lay = self.layout(a.shape)
        w = to_work(a, lay)
        flat = w.reshape(-1)
        if self.is_block:
            res = self._blocks(flat, lay, want_out=False, want_codes=True)
            codes, s, z = res.codes, res.scales, None
            scodes, ts = res.scale_codes.reshape(lay.scale_shape), res.tensor_scale
        else:
            s, z = self._scales(w, lay)
            codes = encode_scaled(self.format, flat, lay.kl, s, z, pow2=_is_pow2(s),
                                  **self._kw(self._rand(a, lay)))
            scodes, ts = None, None
        qt = QTensor(from_work(codes, lay).copy(), s.reshape(lay.scale_shape), 
                     None if z is None else z.reshape(lay.scale_shape), scodes, ts, self, lay,
                     a.dtype, QuantReport(0, 0, 0, 0))
        out = self.dequantize(qt)
        object.__setattr__(qt, "report", self._report(a, w, out, lay, s, z, scodes))
        return qt

    def dequantize(self, q: QTensor) -> np.ndarray:
        """Values of a QTensor: fl(fl64(v - z) * s) per element, in the original dtype."""
        if not isinstance(q, QTensor):
            raise FmtlabError(f"dequantize takes a QTensor, got {type(q).__name__}")
        lay = q.layout
        cw = to_work(q.codes, lay).reshape(-1).astype(np.intp)
        if isinstance(self.scale_rule, MixFP4):  # per block E2M1 or E1M2 (scale-code bit 7)
            alt = broadcast_scales(_mix.block_is_e1m2(q.scale_codes).reshape(-1), lay)
            rows = _mix.element_values(work_rows(cw, lay), alt)
        else:
            rows = work_rows(self.format.values()[cw], lay)
        if q.zero_points is not None:
            rows = rows - broadcast_scales(q.zero_points, lay)
        with np.errstate(invalid="ignore", over="ignore"):
            out = (rows * broadcast_scales(q.scales.astype(np.float64), lay)).astype(q.dtype)
        if self.pow2:
            finite_codes = np.isfinite(rows).reshape(-1)
            self._check_range(np.where(finite_codes, 0.0, np.inf), out.reshape(-1), q.scales)
        return from_work(out, lay)

    def _report(self, a, w, out, lay, s, z, scodes=None) -> QuantReport:
        fin = np.isfinite(a)
        nonzero = int(np.count_nonzero(fin & (a != 0)))
        flushed = int(np.count_nonzero(fin & (a != 0) & (out == 0)))
        hi, lo = self.format.grid.bounds[-1], self.format.grid.bounds[0]  # max|virtual, virtual|min
        if isinstance(self.scale_rule, MixFP4):  # E1M2 blocks clip at E1M2's bounds
            lo, hi = _mix.clip_bounds(broadcast_scales(_mix.block_is_e1m2(scodes).reshape(-1), lay), lo, hi)
        with np.errstate(all="ignore"):
            y = work_rows(w, lay) / broadcast_scales(s.astype(w.dtype), lay)
            if z is not None:
                y = y + broadcast_scales(z, lay)
            clipped = (y > hi) | (y < lo)
        bad = int(np.count_nonzero(~np.isfinite(s))) if self.is_block else 0
        return QuantReport(int(a.size), nonzero, int(np.count_nonzero(clipped)), flushed, bad)


def _integer_grid(fmt: Format) -> bool:
    """The finite values are consecutive integers (what a zero point shifts exactly)."""
    v = fmt.grid.vals[1:-1]
    return bool(np.all(np.diff(v) == 1.0) and np.all(v == np.rint(v)))


def _bad_static(size: int, lay: Layout):
    raise FmtlabError(f"static scale has {size} values; this layout needs 1 or {lay.nslots} "
                      f"(scale shape {lay.scale_shape})")
