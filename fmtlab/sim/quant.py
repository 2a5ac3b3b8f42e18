"""Adapting quantizer specs to the simulator: names, Quantizer objects or plain callables.

A *spec* is one of:

* ``None``, ``"none"`` or ``"fp32"``: no quantization (identity);
* a quantizer name (``"int8_per_token"``, ``"mxfp4"``, ``"int8_peg6"``, ``"log4_fitb_per_channel"``,
  ...), optionally with options as ``"name(key=value, ...)"``, or its parsed
  :class:`fmtlab.formats.QuantSpec`: both go through the one resolver,
  :func:`fmtlab.formats.parse_quantizer` / :func:`fmtlab.formats.get_quantizer`;
* an object with ``fake_quantize(x) -> ndarray`` (an fmtlab ``Quantizer``);
* any callable ``ndarray -> ndarray`` of the same shape.

Axis conventions (shared with fmtlab.formats): activations X are [tokens, features] and weights W
are nn.Linear [out_features, in_features]; the reduction axis is last in both; per-token and
per-channel scales are one per row.

Clipping needs the scale: for an fmtlab Quantizer the clip mask follows its QuantReport: x / scale
(+ zero point) beyond the rounding boundary of the largest (or most negative) grid value, with the
scales the quantizer picks; other objects exposing ``quantize(x).scales`` and ``format.max`` use
|x / scale| > max (relative tolerance 2^-20); an object may also offer
``clip_mask(x) -> bool ndarray``. For a plain callable the clip metrics are NaN (unknown).
Underflow needs no scale: nonzero inputs that come back as zero.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats import QuantSpec, Quantizer, parse_quantizer
from fmtlab.formats.mixfp4 import block_is_e1m2, clip_bounds
from fmtlab.formats.scaling import (
    Cols, MixFP4, PerTensor, Static, broadcast_scales, from_work, parse_scale_rule, to_work, work_rows,
)
from fmtlab.sim.metrics import ScaledClip

__all__ = ["CLIP_RTOL", "QuantFn", "STATIC_RULES", "calibrate_static", "clip_mask", "resolve"]

#: |x / scale| may exceed the format max by float32 rounding of the scale; beyond this it is clipping
CLIP_RTOL = 2.0 ** -20


@dataclass
class QuantFn:
    """A resolved quantizer: ``fn(x) -> x_q`` plus an optional clip-mask provider."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray] | None  # None = identity
    obj: Any = field(default=None, repr=False)
    spec: QuantSpec | None = field(default=None, repr=False)  # None: not from a name / QuantSpec

    @property
    def identity(self) -> bool:
        return self.fn is None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fn is None:
            return x
        x = np.ascontiguousarray(x, dtype=np.float32)
        q = np.asarray(self.fn(x))
        if q.shape != x.shape:
            raise FmtlabError(f"quantizer {self.name!r} returned shape {q.shape} for input {x.shape}")
        return q.astype(np.float32, copy=False)

    def with_mask(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(x_q, clipped mask or None when the quantizer cannot tell)."""
        q, c = self.with_clip(x)
        return q, c.mask(x) if isinstance(c, ScaledClip) else c

    def with_clip(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | ScaledClip | None]:
        """``with_mask`` where the mask may come as a :class:`fmtlab.sim.metrics.ScaledClip` (the
        scales the fake-quant pass used; :func:`fmtlab.sim.metrics.error_sums` evaluates it in its
        own pass): an fmtlab Quantizer's scales are taken from its fake-quant, not recomputed."""
        if self.fn is None:
            return x, np.zeros(x.shape, dtype=bool)
        x = np.ascontiguousarray(x, dtype=np.float32)
        obj = self.obj
        if type(obj) is Quantizer and self.fn == obj.fake_quantize:
            q, s, z = obj.fake_quantize_scaled(x)
            q = q.astype(np.float32, copy=False)
            lay = obj.layout(x.shape)
            if isinstance(obj.scale_rule, MixFP4):  # per-block element type: per-block bounds
                return q, _fmtlab_clip_mask(obj, x)
            if lay.moved is not None or lay.tile is not None:
                return q, _mask_from_scales(obj, x, s, z)
            kl = lay.kl
            cols = isinstance(kl, Cols)
            bounds = obj.format.grid.bounds
            return q, ScaledClip(np.asarray(s, dtype=np.float32).reshape(-1),
                                 None if z is None else np.asarray(z, dtype=np.int64).reshape(-1),
                                 kl.C if cols else kl.Q, kl.C, cols, float(bounds[0]), float(bounds[-1]))
        return self(x), clip_mask(obj, x)


def clip_mask(obj: Any, x: np.ndarray) -> np.ndarray | None:
    """Elements of ``x`` beyond ``obj``'s range after scaling, or None when ``obj`` cannot tell."""
    if obj is None:
        return None
    fn = getattr(obj, "clip_mask", None)
    if callable(fn):
        return np.asarray(fn(x), dtype=bool)
    if isinstance(obj, Quantizer):
        return _fmtlab_clip_mask(obj, x)
    quantize = getattr(obj, "quantize", None)
    fmt = getattr(obj, "format", None) or getattr(obj, "fmt", None)
    if callable(quantize) and fmt is not None and hasattr(fmt, "max"):
        try:
            qt = quantize(x)
        except Exception:  # noqa: BLE001 - a quantizer without a scale report: clipping unknown
            return None
        scale = _broadcast_scales(qt, x.shape)
        if scale is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.abs(x.astype(np.float64) / scale)
        return np.nan_to_num(y, nan=0.0) > float(fmt.max) * (1.0 + CLIP_RTOL)
    return None


def _fmtlab_clip_mask(q: Any, x: np.ndarray) -> np.ndarray:
    """Per-element clip mask of an fmtlab Quantizer, by its own QuantReport's definition.

    y = x / s (+ zero point) with the scales the quantizer picks for x; clipped where y lies
    beyond the rounding boundary of the largest (or most negative) finite grid value. Block
    formats (MX, NVFP4) get their scales from ``quantize``; others from ``compute_scales``.
    """
    scodes = None
    if q.is_block:
        qt = q.quantize(x)
        s, z, scodes = np.asarray(qt.scales).reshape(-1), None, qt.scale_codes
    else:
        s, z = q.compute_scales(x)
    return _mask_from_scales(q, x, s, z, scodes)


def _mask_from_scales(q: Any, x: np.ndarray, s: np.ndarray, z: np.ndarray | None,
                      scale_codes: np.ndarray | None = None) -> np.ndarray:
    """The clip mask of :func:`_fmtlab_clip_mask` given the slot scales ``s`` (and zero points) that
    ``q`` picked for ``x`` (MixFP4: and its scale codes, whose flag names each block's element)."""
    lay = q.layout(x.shape)
    w = to_work(x, lay)
    lo, hi = q.format.grid.bounds[0], q.format.grid.bounds[-1]
    if isinstance(q.scale_rule, MixFP4):
        lo, hi = clip_bounds(broadcast_scales(block_is_e1m2(scale_codes).reshape(-1), lay), lo, hi)
    with np.errstate(all="ignore"):
        y = work_rows(w, lay) / broadcast_scales(np.asarray(s).astype(w.dtype), lay)
        if z is not None:
            y = y + broadcast_scales(z, lay)
        clipped = (y > hi) | (y < lo)
    return np.ascontiguousarray(from_work(clipped.reshape(lay.work_shape), lay))


def _broadcast_scales(qt: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-element scale of a quantized tensor, if it offers one in x's shape or broadcastable."""
    for attr in ("element_scales", "scale_per_element"):
        fn = getattr(qt, attr, None)
        if fn is not None:
            s = fn() if callable(fn) else fn
            return np.broadcast_to(np.asarray(s, dtype=np.float64), shape)
    s = getattr(qt, "scales", getattr(qt, "scale", None))
    if s is None:
        return None
    s = np.asarray(s, dtype=np.float64)
    try:
        return np.broadcast_to(s, shape)
    except ValueError:
        return None


def resolve(spec: Any) -> QuantFn:
    """Turn a quantizer spec (see module doc) into a :class:`QuantFn`."""
    if spec is None:
        return QuantFn("fp32", None, spec=parse_quantizer("fp32"))
    if isinstance(spec, QuantFn):
        return spec
    if isinstance(spec, (str, QuantSpec)):
        qs = parse_quantizer(spec)
        if qs.identity:
            return QuantFn("fp32", None, spec=qs)
        name = spec if isinstance(spec, str) else str(spec)
        base = None if not isinstance(spec, str) or "(" in spec else spec.strip().lower()
        q = qs.build(name=base)
        return QuantFn(name, q.fake_quantize, q, qs)
    fq = getattr(spec, "fake_quantize", None)
    if callable(fq):
        return QuantFn(getattr(spec, "name", None) or str(spec), fq, spec)
    if callable(spec):
        return QuantFn(getattr(spec, "__name__", None) or repr(spec), spec, spec)
    raise FmtlabError(f"a quantizer spec must be None, a quantizer name, a QuantSpec, a Quantizer or a "
                      f"callable; got {spec!r}")


#: scale rules a static activation quantizer may be calibrated with
STATIC_RULES = ("absmax", "percentile", "mse")


def calibrate_static(q: QuantFn, x_calib: np.ndarray, rule: str = "absmax") -> QuantFn:
    """A frozen per-tensor quantizer: ``q``'s format with the one scale that ``rule`` picks on
    ``x_calib`` (calibration activations), applied unchanged to whatever it is given later.

    ``rule`` is "absmax", "percentile(P)" (e.g. "percentile(99.99)") or "mse" (see
    fmtlab.formats.scaling). ``q`` must be an fmtlab per-tensor Quantizer preset (e.g.
    "int8_per_tensor"); anything else raises FmtlabError, as does empty calibration data.
    """
    own = getattr(q.obj, "calibrate", None)  # issue 12 hook: quantizers with their own static
    if callable(own) and not isinstance(q.obj, Quantizer):  # calibration (PEG: K group scales)
        if not str(rule).split("(")[0].strip().lower() in STATIC_RULES:
            raise FmtlabError(f"static calibration rule must be one of {STATIC_RULES}, got {rule!r}")
        frozen = own(np.ascontiguousarray(x_calib, dtype=np.float32), rule)
        return QuantFn(f"{q.name}[static {rule}]", frozen.fake_quantize, getattr(frozen, "quantizer", frozen))
    if not isinstance(q.obj, Quantizer) or q.obj.is_block or not isinstance(q.obj.granularity, PerTensor):
        raise FmtlabError(f"static activation scales need an fmtlab per-tensor quantizer, got {q.name!r}")
    if not str(rule).split("(")[0].strip().lower() in STATIC_RULES:
        raise FmtlabError(f"static calibration rule must be one of {STATIC_RULES} (percentile(P) allowed), "
                          f"got {rule!r}")
    x_calib = np.ascontiguousarray(x_calib, dtype=np.float32)
    if x_calib.size == 0 or not np.any(x_calib):
        raise FmtlabError(f"static calibration of {q.name!r} got no nonzero calibration data")
    qc = dataclasses.replace(q.obj, scale_rule=parse_scale_rule(rule))
    s, z = qc.compute_scales(x_calib)
    s0 = float(np.asarray(s).reshape(-1)[0])
    z0 = None if z is None else int(np.asarray(z).reshape(-1)[0])
    frozen = dataclasses.replace(q.obj, scale_rule=Static(s0, z0))
    return QuantFn(f"{q.name}[static {rule}: scale={s0:.6g}]", frozen.fake_quantize, frozen)
