"""Finish a ``torch.ao.quantization.prepare_qat`` flow that uses :class:`FormatFakeQuantize`.

torch's own ``convert`` maps QAT modules to integer kernels (qint8/quint8 only), which cannot
hold an arbitrary fmtlab format. :func:`convert_qat` instead freezes the simulation: every QAT
module with a ``weight_fake_quant`` becomes its float module (``to_float()``) whose weight *is*
the fake-quantized weight (values on the format grid times the learned static scales), and every
fmtlab fake-quantizer stops observing (scales frozen). Activation fake-quantizers stay in place,
so the converted model computes exactly what the QAT model computes in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fmtlab.pytorch.fake_quantize import FormatFakeQuantize

__all__ = ["convert_qat"]


def _output_hook(module: nn.Module, inputs, output):
    return module.activation_post_process(output)


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert_qat(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Freeze a QAT model prepared with FormatFakeQuantize (see module docstring).

    Returns the converted model (a deep copy unless ``inplace``). Modules without
    ``weight_fake_quant`` are left as they are (their observers are disabled).
    """
    if not inplace:
        model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, FormatFakeQuantize):
            m.disable_observer()
    swaps = [(name, m) for name, m in model.named_modules()
             if hasattr(m, "weight_fake_quant") and hasattr(m, "to_float")]
    for name, m in swaps:
        with torch.no_grad():
            wq = m.weight_fake_quant(m.weight)
        new = m.to_float()
        new.weight = nn.Parameter(wq.detach().clone(), requires_grad=m.weight.requires_grad)
        app = getattr(m, "activation_post_process", None)
        if app is not None:
            new.activation_post_process = app
            new.register_forward_hook(_output_hook)
        new.train(m.training)
        if name:
            _set_child(model, name, new)
        else:
            model = new
    return model
