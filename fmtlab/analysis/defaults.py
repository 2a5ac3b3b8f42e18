"""The report's default config lists. :data:`DEFAULT_CONFIGS` is defined in
:mod:`fmtlab.explore.defaults` (``fmtlab explore`` seeds its first trials with it)."""

from fmtlab.explore.defaults import DEFAULT_CONFIGS

__all__ = ["DEFAULT_CONFIGS", "DEFAULT_PPL_CONFIGS", "GRID_FORMATS"]

#: configs whose perplexity is measured by default
DEFAULT_PPL_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_hadamard",
                       "w4a8_int_channel", "w4a8_dint_channel", "fp8_e4m3", "mxfp8", "mxfp4", "w4a8_log4")
#: element formats drawn over the worst layer's activations (format_grids.png)
GRID_FORMATS = ("int8", "int4", "dint4", "log4", "fp8_e4m3", "fp4_e2m1")
