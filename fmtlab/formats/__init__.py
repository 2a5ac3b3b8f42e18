"""Element formats: exact encode/decode classes, rounding conventions and the format registry.

This subpackage depends on nothing else in fmtlab (and never imports torch).
"""

from fmtlab.formats.base import Format
from fmtlab.formats.blockfmt import BlockFormat, ScaleFormat, SharedExpRule, get_block_format
from fmtlab.formats.dint import DInt
from fmtlab.formats.e8m0 import E8M0
from fmtlab.formats.integer import IntFormat
from fmtlab.formats.logfmt import LogFormat
from fmtlab.formats.minifloat import MiniFloat
from fmtlab.formats.lookup import LookupFormat
from fmtlab.formats.registry import get_format, list_formats, register_format, unregister_format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding
from fmtlab.formats.special import Special, SpecialRule, register_special_rule
from fmtlab.formats.scaling import (
    MSE, AbsMax, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken,
    SharedExp, Static,
)
from fmtlab.formats.quantizer import QTensor, Quantizer, QuantReport
from fmtlab.formats.quantspec import QuantSpec
from fmtlab.formats.presets import get_quantizer, list_quantizers, parse_quantizer

__all__ = [
    "Format", "IntFormat", "DInt", "LogFormat", "MiniFloat", "E8M0",
    "get_format", "list_formats", "Rounding", "Overflow", "NanInput",
    "LookupFormat", "register_format", "unregister_format",
    "Special", "SpecialRule", "register_special_rule",
    "BlockFormat", "ScaleFormat", "SharedExpRule", "get_block_format",
    # scaling layer (quantizers)
    "Quantizer", "QTensor", "QuantReport", "QuantSpec", "get_quantizer", "list_quantizers",
    "parse_quantizer",
    "PerTensor", "PerChannel", "PerToken", "PerGroup", "PerBlock",
    "AbsMax", "Percentile", "MSE", "Static", "MinMax", "SharedExp",
]
