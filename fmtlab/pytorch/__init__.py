"""fmtlab.pytorch: any fmtlab format or quantizer as a PyTorch fake-quantizer.

Everything here is built from torch ops (CPU and CUDA, autograd-friendly) and held bit-identical
to the numpy/numba path of ``fmtlab.formats`` by the tests. Every format works (the exact torch
table path, :mod:`fmtlab.pytorch.encoding`); a family's ``Subsystem.TORCH`` handler
(:class:`fmtlab.pytorch.cores.TorchCore`) only makes it faster:

- :func:`encode`, :func:`decode`, :func:`quantize` - element formats on tensors;
- :func:`fake_quantize` - the functional entry point (format or quantizer, STE gradient);
- :class:`TorchQuantizer` - the torch twin of ``fmtlab.formats.Quantizer`` (codes and scales);
- :class:`FormatFakeQuantize` - a ``torch.ao.quantization`` fake-quantize module for QConfigs,
  and :func:`convert_qat` to freeze a QAT model;
- :func:`quantize_model` - rewire a model's Linear / Conv1D layers to W/A fake-quant;
- :func:`calibrate` - observe and freeze the static activation scales of a model rewired with
  ``quantize_model(..., activation_scales=ActivationScales.STATIC)`` (dynamic scales, the
  default, are computed per sequence);
- :func:`evaluate_perplexity` - perplexity of a causal LM with a progress bar;
- :class:`FmtlabConfig` / :func:`fmtlab_filter` - the same rewiring through torchao's
  ``quantize_`` (needs torchao; imported on first use), and :mod:`fmtlab.pytorch.pt2e` for the
  PT2E ``prepare_pt2e`` / ``convert_pt2e`` flow.
"""

import importlib.util

from fmtlab.pytorch.activations import ActivationScales, StaticActivation
from fmtlab.pytorch.calibrate import CalibrationResult, calibrate
from fmtlab.pytorch.elementwise import decode, encode, quantize
from fmtlab.pytorch.fake_quantize import FormatFakeQuantize
from fmtlab.pytorch.functional import fake_quantize
from fmtlab.pytorch.model import LayerConfig, QuantLinear, QuantizeSummary, quantize_model
from fmtlab.pytorch.perplexity import PerplexityResult, evaluate_perplexity
from fmtlab.pytorch.qat import convert_qat
from fmtlab.pytorch.quantizers import TorchQTensor, TorchQuantizer

__all__ = [
    "encode", "decode", "quantize", "fake_quantize", "FormatFakeQuantize", "convert_qat",
    "quantize_model", "LayerConfig", "QuantLinear", "QuantizeSummary", "evaluate_perplexity",
    "PerplexityResult", "TorchQuantizer", "TorchQTensor", "ActivationScales", "StaticActivation",
    "calibrate", "CalibrationResult",
]

_TORCHAO = {"FmtlabConfig", "fmtlab_filter"}
if importlib.util.find_spec("torchao") is not None:  # star-import them only where they import
    __all__ += sorted(_TORCHAO)


def __getattr__(name: str):
    """torchao is optional: its integration is imported on first use."""
    if name in _TORCHAO:
        from fmtlab.pytorch import torchao_config  # lazy: torchao is an optional dependency

        return getattr(torchao_config, name)
    raise AttributeError(f"module 'fmtlab.pytorch' has no attribute {name!r}")
