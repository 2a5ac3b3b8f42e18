"""Quantizer specs of the plug-in: what ``quantize_model``, ``fake_quantize`` and the PT2E / torchao
integrations accept as a weight or activation quantizer, resolved to a torch quantizer."""

from __future__ import annotations

from typing import Any, Callable

from fmtlab.errors import FmtlabError
from fmtlab.formats import (
    Format, PerChannel, PerTensor, PerToken, QuantSpec, Quantizer, get_format, parse_quantizer,
)
from fmtlab.pytorch.quantizers import TorchQuantizer

__all__ = ["resolve", "spec_name", "as_torch_quantizer", "default_quantizer"]


def as_torch_quantizer(spec: Any) -> TorchQuantizer:
    """A TorchQuantizer from itself, a numpy Quantizer or a preset name."""
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, (Quantizer, str)):
        return TorchQuantizer(spec)
    raise FmtlabError(f"cannot use {spec!r} as a quantizer (pass a Quantizer, TorchQuantizer or preset name)")


def default_quantizer(fmt: Format, role: str) -> TorchQuantizer:
    """The quantizer a bare format gets in ``quantize_model``: absmax, per output channel for
    weights ([out, in] rows), per token for (dynamic) activations, per tensor for
    ``role="static_activations"``."""
    g, tag = {"weights": (PerChannel(0), "per_channel"),
              "static_activations": (PerTensor(), "per_tensor")}.get(role, (PerToken(), "per_token"))
    return TorchQuantizer(Quantizer(fmt, g, name=f"{fmt.name}_{tag}"))


def resolve(spec: Any, role: str = "weights") -> Callable | None:
    """A torch quantizer ``q(x, grad=...)`` for a spec, or None for no quantization.

    spec: None / "none" / "fp32"; a TorchQuantizer; a numpy Quantizer; a quantizer name or
    QuantSpec (the one resolver, :func:`fmtlab.formats.parse_quantizer`: "mxfp4", "nvfp4",
    "int8_per_channel", "int4_g128", ..., with options as ``"int8_per_token(pow2=yes)"``; PEG and
    fitted-log names raise, pointing to their own plug-in entry points); a format name or
    Format (absmax per output channel for weights, per token for activations, see
    :func:`default_quantizer`); or any callable ``q(x, grad="ste") -> tensor`` used as is.
    """
    if spec is None:
        return None
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, Quantizer):
        return TorchQuantizer(spec)
    if isinstance(spec, Format):
        return default_quantizer(spec, role)
    if isinstance(spec, (str, QuantSpec)):
        try:
            qs = parse_quantizer(spec)
        except FmtlabError:
            if not isinstance(spec, str) or "(" in spec:
                raise
            return default_quantizer(get_format(spec), role)  # a bare format name
        if qs.identity:
            return None
        if qs.method != "scaled":
            raise FmtlabError(f"{spec!r} is a {qs.method} quantizer: in quantize_model use "
                              + ("fmtlab.pytorch.peg.quantize_model_peg" if qs.method == "peg"
                                 else "fmtlab.pytorch.logfit.torch_log_fit"))
        base = None if not isinstance(spec, str) or "(" in spec else spec.strip().lower()
        return TorchQuantizer(qs.build(name=base))
    if callable(spec):
        return spec
    raise FmtlabError(f"a quantizer spec must be None, a name, a Format, a Quantizer or a callable; got {spec!r}")


def spec_name(q: Any) -> str:
    """A display name of a resolved quantizer (its ``name``, a function's ``__name__``, or repr)."""
    if q is None:
        return "none"
    return getattr(q, "name", None) or getattr(q, "__name__", None) or repr(q)
