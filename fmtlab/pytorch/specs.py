"""Quantizer specs of the plug-in: what ``quantize_model``, ``fake_quantize`` and the PT2E / torchao
integrations accept as a weight or activation quantizer, resolved to a torch quantizer."""

from __future__ import annotations

from typing import Any, Callable

from fmtlab.errors import FmtlabError
from fmtlab.formats import Format, PerChannel, PerTensor, PerToken, Quantizer, get_format, get_quantizer
from fmtlab.pytorch.quantizers import TorchQuantizer

__all__ = ["resolve", "spec_name", "as_torch_quantizer", "default_quantizer", "IDENTITY"]

#: spec strings that mean "no quantization"
IDENTITY = ("none", "fp32", "float32", "identity")


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

    spec: None / "none" / "fp32"; a TorchQuantizer; a numpy Quantizer; a preset name
    (``get_quantizer``: "mxfp4", "nvfp4", "int8_per_channel", "int4_g128", ..., with overrides as
    ``"int8_per_token(pow2=yes)"``); a format name or
    Format (absmax per output channel for weights, per token for activations, see
    :func:`default_quantizer`); or any callable ``q(x, grad="ste") -> tensor`` used as is.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in IDENTITY):
        return None
    if isinstance(spec, TorchQuantizer):
        return spec
    if isinstance(spec, Quantizer):
        return TorchQuantizer(spec)
    if isinstance(spec, Format):
        return default_quantizer(spec, role)
    if isinstance(spec, str):
        if "(" in spec:  # "name(key=value, ...)": preset keyword overrides, as fmtlab.sim parses them
            from fmtlab.formats.names import parse_call

            name, kwargs = parse_call(spec)
            return TorchQuantizer(get_quantizer(name, **kwargs))
        try:
            return TorchQuantizer(get_quantizer(spec))
        except FmtlabError:
            pass
        return default_quantizer(get_format(spec), role)
    if callable(spec):
        return spec
    raise FmtlabError(f"a quantizer spec must be None, a name, a Format, a Quantizer or a callable; got {spec!r}")


def spec_name(q: Any) -> str:
    """A display name of a resolved quantizer (its ``name``, a function's ``__name__``, or repr)."""
    if q is None:
        return "none"
    return getattr(q, "name", None) or getattr(q, "__name__", None) or repr(q)
