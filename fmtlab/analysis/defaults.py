"""The report's default config lists (shared by `fmtlab report` and `fmtlab explore`, which
includes the report's configs among its first trials).
"""

#: configs replayed by default (names of fmtlab.sim.replay.PRESETS)
DEFAULT_CONFIGS = (
    "fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_smoothquant", "w8a8_hadamard",
    "w8a8_int_tensor_nosink", "w4a8_int_channel", "w4a8_dint_channel", "w4a8_dint_aqas", "w4a8_log4",
    "fp8_e4m3", "mxfp8", "mxfp4", "nvfp4",
)
#: configs whose perplexity is measured by default
DEFAULT_PPL_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_hadamard",
                       "w4a8_int_channel", "w4a8_dint_channel", "fp8_e4m3", "mxfp8", "mxfp4", "w4a8_log4")
GRID_FORMATS = ("int8", "int4", "dint4", "log4", "fp8_e4m3", "fp4_e2m1")
