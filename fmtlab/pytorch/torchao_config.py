"""torchao integration: ``torchao.quantization.quantize_(model, FmtlabConfig(...))``.

:class:`FmtlabConfig` is a torchao ``AOBaseConfig`` whose module handler (registered with
``register_quantize_module_handler``) rewires each module that ``quantize_``'s ``filter_fn``
selects exactly as :func:`fmtlab.pytorch.quantize_model` rewires that layer: the handler *is*
``quantize_model`` applied to the one module (``inplace=True``, no skip list), so the result is
a :class:`~fmtlab.pytorch.QuantLinear` with the same weight / activation quantizers, and the
model computes bit-identical outputs.

Layer selection is ``quantize_``'s: its default ``filter_fn`` picks every ``nn.Linear``,
``lm_head`` included (torchao's convention), whereas ``quantize_model`` skips the output head by
default. :func:`fmtlab_filter` gives a ``filter_fn`` that selects what ``quantize_model`` does
(Linear and GPT-2 Conv1D, ``skip`` patterns, the output head, and already fake-quantized layers,
which are then re-quantized instead of wrapped twice). With torchao's default filter a second
``quantize_`` call on a rewired model would wrap the inner Linear again; use
:func:`fmtlab_filter` for that.

Per-layer configs: torchao's ``FqnToConfig({"re:<module regex>": FmtlabConfig(...), ...})``
(module names; keys must name Linear modules only) plays the role of ``quantize_model``'s
``overrides``.

torchao is optional: importing this module raises ImportError (naming the package) without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from torch import nn

try:
    from torchao.core.config import AOBaseConfig
    from torchao.quantization.transform_module import register_quantize_module_handler
except ImportError as exc:  # pragma: no cover - exercised only without torchao
    raise ImportError("fmtlab.pytorch.torchao_config needs torchao (pip install torchao)") from exc

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.activations import ActivationScales, StaticActivation
from fmtlab.pytorch.autograd import check_grad
from fmtlab.pytorch.model import QuantLinear, linear_kind, matches_name, output_head, quantize_model
from fmtlab.pytorch.specs import resolve

__all__ = ["FmtlabConfig", "fmtlab_filter"]


@dataclasses.dataclass(frozen=True)
class FmtlabConfig(AOBaseConfig):
    """W/A fake-quant of fmtlab formats as a torchao workflow config.

    weights / activations: specs as :func:`fmtlab.pytorch.quantize_model` takes them (None, a
    quantizer preset such as ``"mxfp4"`` / ``"fp8_e4m3_per_token"``, a format name, a Format or
    Quantizer). grad: ``"ste"`` or ``"clipped"``. activation_scales: ``"dynamic"`` (per sequence,
    default) or ``"static"`` (calibrate afterwards with :func:`fmtlab.pytorch.calibrate`).
    Frozen; the specs are checked here, so a bad name fails at construction (FmtlabError).
    """

    weights: Any = None
    activations: Any = None
    grad: str = "ste"
    activation_scales: "ActivationScales | str" = ActivationScales.DYNAMIC

    def __post_init__(self) -> None:
        check_grad(self.grad)
        object.__setattr__(self, "activation_scales", ActivationScales.parse(self.activation_scales))
        role = "static_activations" if self.activation_scales is ActivationScales.STATIC else "activations"
        resolve(self.weights, "weights")
        aq = resolve(self.activations, role)
        if aq is not None and self.activation_scales is ActivationScales.STATIC:
            StaticActivation(aq, 1, "<FmtlabConfig>")  # fails now if aq cannot be static


@register_quantize_module_handler(FmtlabConfig)
def _fmtlab_module_handler(module: nn.Module, config: FmtlabConfig) -> nn.Module:
    """torchao's per-module transform: ``quantize_model`` on this one module. (No
    ``parameter_name`` keyword: torchao then refuses parameter-level FqnToConfig keys such as
    ``"layer.weight"``, since the config quantizes a layer's weight *and* its input.)"""
    if not isinstance(module, QuantLinear) and linear_kind(module) is None:
        raise FmtlabError(f"FmtlabConfig rewires nn.Linear / Conv1D (or QuantLinear) modules; the "
                          f"filter_fn selected a {type(module).__name__}")
    new, _summary = quantize_model(module, config.weights, config.activations, skip=(), skip_head=False,
                                   grad=config.grad, activation_scales=config.activation_scales,
                                   inplace=True)
    return new


def fmtlab_filter(model: nn.Module, skip: Iterable[Any] | None = ("lm_head",),
                  skip_head: bool = True) -> Callable[[nn.Module, str], bool]:
    """A ``quantize_`` ``filter_fn`` selecting the layers ``quantize_model(model, skip=...,
    skip_head=...)`` rewires: Linear / Conv1D modules and existing QuantLinears (re-quantized),
    minus ``skip`` patterns (fnmatch / ``"re:"`` as in ``quantize_model``) and, with
    ``skip_head``, the module ``model.get_output_embeddings()`` returns.
    Build it from the model you then pass to ``quantize_`` (the head is found by identity)."""
    head = output_head(model) if skip_head else None
    patterns = list(skip or ())

    def filter_fn(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, QuantLinear) and linear_kind(module) is None:
            return False
        inner = module.inner if isinstance(module, QuantLinear) else module
        if head is not None and inner is head:
            return False
        return not any(matches_name(fqn, p) for p in patterns)

    return filter_fn
