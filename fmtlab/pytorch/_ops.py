"""The element fake-quant as a registered torch custom op (``torch.ops.fmtlab.quantize``).

Why: ``torch.compile`` then sees one opaque op with a known output (same shape and dtype as x)
instead of tracing the table lookups and caches of ``elementwise`` (graph breaks, long compile),
and the compiled model runs the very same eager kernel, so fake-quant stays bit-exact under
compile. Deterministic roundings only (stochastic rounding takes a numpy seed; it runs eagerly).
The format travels by name (``get_format(str(fmt)) == fmt``).
"""

from __future__ import annotations

import torch

from fmtlab.formats import Format, get_format

__all__ = ["quantize_op"]


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
    from fmtlab.pytorch.elementwise import quantize

    return quantize(x, _format(fmt), rounding, None if overflow == "default" else overflow, nan=nan)


@_quantize.register_fake
def _(x, fmt, rounding, overflow, nan):
    # the eager op returns a new contiguous tensor of x's shape
    return x.new_empty(x.shape, dtype=x.dtype if x.is_floating_point() else torch.float64)


def quantize_op(x: torch.Tensor, fmt: Format, rounding, overflow, nan) -> torch.Tensor:
    """``elementwise.quantize(x, fmt, rounding, overflow, nan=nan)`` through the custom op
    (directly where the format does not round-trip through its name). Enums or strings."""
    if not _round_trips(fmt):
        from fmtlab.pytorch.elementwise import quantize

        return quantize(x, fmt, rounding, overflow, nan=nan)
    r = getattr(rounding, "value", rounding)
    o = "default" if overflow is None else getattr(overflow, "value", overflow)
    n = getattr(nan, "value", nan)
    return _quantize(x, fmt.name, str(r), str(o), str(n))
