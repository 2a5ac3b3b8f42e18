"""Torch rounding cores: the ``Subsystem.TORCH`` handlers of the format capability protocol.

Every format works in torch without a handler: the exact table path of
:mod:`fmtlab.pytorch.encoding` (``torch.searchsorted`` over the format's grid, ties by the
rounding mode, the specials vector ``fmt.special_codes``) reproduces ``Format.encode_table``
bit for bit. A family *may* register a :class:`TorchCore` for ``Subsystem.TORCH`` with
``fmtlab.formats.capabilities.register_handler``; its fields are optional accelerations, each
held bit-identical to the table path by the tests, plus the one family rule the table cannot
express (``encode``: E8M0's own encode rule, which numpy applies instead of the table).

A TORCH handler is a callable ``handler(fmt) -> TorchCore | None`` (None: this format takes the
table path); a :class:`TorchCore` is such a callable itself (it returns itself), so
``register_handler(Subsystem.TORCH, "myfamily", TorchCore(...))`` is the usual registration.

Built-in cores (registered here, at ``import fmtlab.pytorch``): minifloat (arithmetic path and
torch cast twins), int (arithmetic path, fused values, zero points), e8m0 (its encode rule).
A family without a core (dINT, log, lookup, anything user-defined) takes the table path.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from fmtlab.formats import Format, Overflow, Rounding
from fmtlab.formats.capabilities import NotSupportedError, Subsystem, find_handler, register_handler
from fmtlab.pytorch import _fastpaths

__all__ = ["TorchCore", "torch_core", "required_core", "minifloat_handler", "MINIFLOAT", "INT",
           "E8M0_CORE"]


@dataclasses.dataclass(frozen=True)
class TorchCore:
    """What a family's torch handler provides (every field optional; None = not provided).

    encode: ``(x64, fmt, mode, overflow, draws) -> int32 codes`` for flat float64 ``x64``: the
        family's complete encode rule, used *instead of* the table path (only for families whose
        numpy ``encode`` is not the table algorithm, e.g. E8M0).
    eligible: ``(fmt, mode) -> bool``: whether ``fast_codes`` applies.
    fast_codes: ``(x, neg, fmt, mode, sp) -> (int32 codes, x in the work dtype)`` (both flat) for
        in-range finite inputs; the caller applies the table's range / Inf / NaN / -0 rules.
    cast_twin: ``(fmt, mode, x) -> torch.dtype | None``: a torch dtype whose cast rounds exactly
        as the table for inputs strictly inside (-max, max).
    fast_values: ``(x, fmt, mode, nan_zero) -> values``: fused decode(encode(x)) in x's dtype
        (deterministic modes, float32/float64 x; NaN checks are the caller's).
    zero_point: ``(y, fmt, mode, z, draws) -> float64 q``: rounding of y on the grid shifted by
        -z (asymmetric quantizers; the numpy Quantizer allows zero points for INT only).
    float32_product: ``fmt -> bool``: whether the family's numba kernel forms ``v * s`` in float32
        for float32 data (fake-quant may then multiply in float32: the same number; MSE's error
        sums see that rounded product). Default: the float64 product, as dequantize.
    """

    encode: Callable | None = None
    eligible: Callable[[Format, Rounding], bool] | None = None
    fast_codes: Callable | None = None
    cast_twin: Callable | None = None
    fast_values: Callable | None = None
    zero_point: Callable | None = None
    float32_product: Callable[[Format], bool] | None = None

    def __call__(self, fmt: Format) -> "TorchCore":
        """The core for ``fmt`` (the same core for every format of the family)."""
        return self


_NONE = TorchCore()


def torch_core(fmt: Format) -> TorchCore:
    """The torch core for ``fmt`` from its family's TORCH handler, or an empty core (the exact
    table path for everything) where the family has none or the handler declines ``fmt``."""
    h = find_handler(Subsystem.TORCH, fmt)
    core = None if h is None else h(fmt)
    return _NONE if core is None else core


def required_core(fmt: Format, field: str, what: str) -> Callable:
    """The ``field`` of ``fmt``'s torch core; NotSupportedError naming the family where absent."""
    f = getattr(torch_core(fmt), field, None)
    if f is None:
        raise NotSupportedError(f"{Subsystem.TORCH.value} not supported for family {fmt.family!r}: "
                                f"{what} needs a TorchCore with {field}= registered for "
                                "Subsystem.TORCH (see fmtlab.pytorch.cores)")
    return f


def _int_fast32(fmt: Format) -> bool:
    return True


def _mf_fast32(fmt: Format) -> bool:
    # the numba float32 plan (MF/MF1) exists where the exponent range fits float32's
    return (1 - fmt.bias) >= -126 and fmt.max < 2.0 ** 128


MINIFLOAT = TorchCore(eligible=_fastpaths.eligible, fast_codes=_fastpaths.encode_core,
                      cast_twin=_fastpaths.torch_twin, float32_product=_mf_fast32)


def minifloat_handler(fmt: Format) -> TorchCore | None:
    """MINIFLOAT for minifloats in the layout the bit tricks assume (``fmt.bit_layout``: every
    magnitude code up to max is finite); None sends other rules (a NaN inside the finite
    magnitudes, say) to the table path, as numpy's encode does."""
    return MINIFLOAT if getattr(fmt, "bit_layout", False) else None


INT = TorchCore(eligible=_fastpaths.eligible, fast_codes=_fastpaths.encode_core,
                fast_values=_fastpaths.int_values, zero_point=_fastpaths.int_shifted,
                float32_product=_int_fast32)


def _encode_e8m0(xf: torch.Tensor, fmt: Format, mode: Rounding, overflow: Overflow,
                 r: torch.Tensor | None) -> torch.Tensor:
    """Mirror of ``E8M0._encode_array``: nearest power of two (ties up; the float32 subnormal range
    too), inputs below 2**-127 to code 0, zero / negative / NaN / Inf to the NaN code 255."""
    ok = torch.isfinite(xf) & (xf > 0)
    xs = torch.where(ok, xf, 1.0)
    mant, exp = torch.frexp(xs)          # xs = mant * 2**exp, mant in [0.5, 1)
    m2 = 2 * mant
    e = exp - 1
    if mode is Rounding.TOWARD_ZERO:
        up = torch.zeros_like(ok)
    elif mode is Rounding.STOCHASTIC:
        up = r < (m2 - 1.0)
    else:
        up = m2 >= 1.5
    code = e + 127 + up.to(torch.int32)
    code = torch.where(code > 254, 254 if overflow is Overflow.SATURATE else 255, code)
    code = code.clamp(min=0)
    return torch.where(ok, code, 255)


E8M0_CORE = TorchCore(encode=_encode_e8m0)

# built-in families; a handler registered before this import (a user's override) is kept
for _family, _core in (("minifloat", minifloat_handler), ("int", INT), ("e8m0", E8M0_CORE)):
    if find_handler(Subsystem.TORCH, _family) is None:
        register_handler(Subsystem.TORCH, _family, _core)
