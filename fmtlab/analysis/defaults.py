"""The report's default config lists. :data:`DEFAULT_CONFIGS` is defined in
:mod:`fmtlab.explore.defaults` (``fmtlab explore`` seeds its first trials with it)."""

from fmtlab.explore.defaults import DEFAULT_CONFIGS

__all__ = ["DEFAULT_CONFIGS", "DEFAULT_PPL_CONFIGS", "GPTQ_PPL_CONFIGS", "REPORT_PPL_CONFIGS", "GPTQ_CONFIGS",
           "REPORT_CONFIGS", "GRID_FORMATS"]

#: configs whose perplexity is measured by default
DEFAULT_PPL_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_hadamard",
                       "w4a8_int_channel", "w4a8_dint_channel", "fp8_e4m3", "mxfp8", "mxfp4", "w4a8_log4")
#: the 4-bit perplexity configs again with GPTQ weights (issue 20: RTN and GPTQ rows side by side;
#: ``+gptq`` fits the config's own weight quantizer on the calibration texts, fmtlab.methods.weight_fit_variant)
GPTQ_PPL_CONFIGS = tuple(f"{c}+gptq" for c in ("w4a8_int_channel", "w4a8_dint_channel", "mxfp4", "w4a8_log4"))
#: what `fmtlab report` measures perplexity of by default
REPORT_PPL_CONFIGS = DEFAULT_PPL_CONFIGS + GPTQ_PPL_CONFIGS
#: the 4-bit replay configs again with GPTQ weights: replayed on the plain model's traces with the
#: fitted weights as their weight quantizer (fmtlab.methods.gptq.FittedWeights; the fit is the
#: perplexity side's, cached), so their layer-output SQNR sits beside the RTN rows on the same inputs
GPTQ_CONFIGS = GPTQ_PPL_CONFIGS
#: what `fmtlab report` replays by default
REPORT_CONFIGS = DEFAULT_CONFIGS + GPTQ_CONFIGS
#: element formats drawn over the worst layer's activations (format_grids.png)
GRID_FORMATS = ("int8", "int4", "dint4", "log4", "fp8_e4m3", "fp4_e2m1")
