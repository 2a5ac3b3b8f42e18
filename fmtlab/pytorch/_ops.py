"""The element and quantizer fake-quants as registered torch custom ops
(``torch.ops.fmtlab.quantize``, ``torch.ops.fmtlab.quantizer_fake_quant``).

Why: ``torch.compile`` then sees one opaque op with a known output (same shape and dtype as x)
instead of tracing the table lookups and caches of ``elementwise`` (graph breaks, long compile),
and the compiled model runs the very same eager kernel, so fake-quant stays bit-exact under
compile. Deterministic roundings only (stochastic rounding takes a numpy seed; it runs eagerly).
The format travels by name (``get_format(str(fmt)) == fmt``); a quantizer by a key into a
registry of live TorchQuantizers (weak references; the compiled caller keeps its quantizer
alive). The quantizer op is what makes MX / NVFP4 compile: their block-scale code (bit views,
int64 exponent arithmetic, the tensor scale's host-side branches) crashed inductor's C++ codegen
and raised data-dependent guards when traced.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch

from fmtlab.formats import Format, Rounding, get_format
from fmtlab.pytorch.elementwise import quantize

__all__ = ["quantize_op", "quantizer_op", "fake_quant_values"]


_FORMATS: dict[str, Format] = {}
_ROUND_TRIPS: dict[Format, bool] = {}


def _format(name: str) -> Format:
    f = _FORMATS.get(name)
    if f is None:
        f = _FORMATS[name] = get_format(name)
    return f


def _round_trips(fmt: Format) -> bool:
    ok = _ROUND_TRIPS.get(fmt)
    if ok is None:
        try:
            ok = _format(fmt.name) == fmt
        except Exception:  # noqa: BLE001 - a name the registry cannot parse
            ok = False
        _ROUND_TRIPS[fmt] = ok
    return ok


@torch.library.custom_op("fmtlab::quantize", mutates_args=())
def _quantize(x: torch.Tensor, fmt: str, rounding: str, overflow: str, nan: str) -> torch.Tensor:
    return quantize(x, _format(fmt), rounding, None if overflow == "default" else overflow, nan=nan)


@_quantize.register_fake
def _(x, fmt, rounding, overflow, nan):
    # the eager op returns a new contiguous tensor of x's shape
    return x.new_empty(x.shape, dtype=x.dtype if x.is_floating_point() else torch.float64)


def quantize_op(x: torch.Tensor, fmt: Format, rounding, overflow, nan) -> torch.Tensor:
    """``elementwise.quantize(x, fmt, rounding, overflow, nan=nan)`` through the custom op
    (directly where the format does not round-trip through its name). Enums or strings."""
    if not _round_trips(fmt):
        return quantize(x, fmt, rounding, overflow, nan=nan)
    r = getattr(rounding, "value", rounding)
    o = "default" if overflow is None else getattr(overflow, "value", overflow)
    n = getattr(nan, "value", nan)
    return _quantize(x, fmt.name, str(r), str(o), str(n))


def fake_quant_values(x: torch.Tensor, fmt: Format, rounding, overflow, *, seed=None, draws=None,
                      nan="raise", method: str = "auto") -> torch.Tensor:
    """``elementwise.quantize`` routed through the registered custom op where possible
    (deterministic rounding, default method), so that ``torch.compile`` treats it as one opaque
    exact op."""
    mode = Rounding.parse(rounding)
    if mode is Rounding.STOCHASTIC or method != "auto" or seed is not None or draws is not None:
        return quantize(x, fmt, mode, overflow, seed=seed, draws=draws, nan=nan, method=method)
    return quantize_op(x, fmt, mode, overflow, nan)


_QUANTIZERS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_KEY_OF: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_KEYS = itertools.count()


def _quantizer_key(tq: Any) -> str:
    key = _KEY_OF.get(tq)
    if key is None or _QUANTIZERS.get(key) is not tq:
        key = f"tq{next(_KEYS)}"
        _KEY_OF[tq] = key
        _QUANTIZERS[key] = tq
    return key


@torch.library.custom_op("fmtlab::quantizer_fake_quant", mutates_args=())
def _quantizer_fq(x: torch.Tensor, key: str, need_mask: bool, scales: torch.Tensor | None,
                  zero_points: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    tq = _QUANTIZERS.get(key)
    if tq is None:
        raise RuntimeError(f"fmtlab quantizer {key!r} is gone (compiled after its TorchQuantizer died)")
    out, mask = tq.fake_quantize_with_mask(x, need_mask=need_mask, scales=scales, zero_points=zero_points)
    if mask is None:
        mask = torch.zeros(0, dtype=torch.bool, device=x.device)
    return out.clone() if out.data_ptr() == x.data_ptr() else out, mask


@_quantizer_fq.register_fake
def _(x, key, need_mask, scales, zero_points):
    out = x.new_empty(x.shape, dtype=x.dtype if x.is_floating_point() else torch.float64)
    mask = x.new_empty(x.shape if need_mask else (0,), dtype=torch.bool)
    return out, mask


def quantizer_op(tq: Any, x: torch.Tensor, need_mask: bool, scales: torch.Tensor | None = None,
                 zero_points: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tq.fake_quantize_with_mask(x, ...)`` (deterministic rounding, no seed/draws) as one
    opaque op: (values, in-range mask or None)."""
    out, mask = _quantizer_fq(x, _quantizer_key(tq), need_mask, scales, zero_points)
    return out, (mask if need_mask else None)
