"""Defaults of ``fmtlab explore``: the layers it records, and the default config list of ``fmtlab
report``, which explore also seeds its first trials with (so the explore front is compared against
the report's own configs). That list lives here, on the lowest layer that uses it;
:mod:`fmtlab.analysis.defaults` re-exports it beside the report-only lists.
"""

#: configs replayed by default (names of fmtlab.sim.replay.PRESETS)
DEFAULT_CONFIGS = (
    "fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_smoothquant", "w8a8_hadamard",
    "w8a8_int_tensor_nosink", "w4a8_int_channel", "w4a8_dint_channel", "w4a8_dint_aqas", "w4a8_log4",
    "fp8_e4m3", "mxfp8", "mxfp4", "nvfp4",
)

#: Linear layers of the embedded SmolLM2 (30 blocks) recorded when ``fmtlab explore`` has no --trace:
#: six blocks, evenly spaced. Replay time is dominated by quantizing weights, so the layer count sets
#: the run time; --layers '' records all 210 layers (about 5x longer per config).
DEFAULT_LAYERS = r"\.layers\.(0|6|12|18|24|29)\."

#: ``fmtlab explore --cost`` choices -> the space's cost objective column
COST_CHOICES = {"area_um2": "area_um2", "area_ge": "area_ge", "energy_pj": "energy_pj", "bits": "bits",
                "energy_per_token": "energy_per_token_uj", "energy_per_token_b64": "energy_per_token_b64_uj"}
