"""The standard MAC units of the hardware table (and of the synthesis cross-check)."""

from __future__ import annotations

from fmtlab.hw.mac import make_unit

#: (weight, activation, accumulator) of every unit `fmtlab hw` prints by default
STANDARD_UNITS: tuple[tuple[str, str, str], ...] = (
    ("int4", "int4", "int32"),
    ("int4", "int8", "int32"),
    ("dint4", "int8", "int32"),
    ("int8", "int8", "int32"),
    ("log4", "int8", "int32"),
    ("log4", "log4", "int32"),
    ("fp4_e2m1", "fp4_e2m1", "fp32"),
    ("fp4_e2m1", "fp4_e2m1", "kulisch"),
    ("fp8_e4m3", "fp8_e4m3", "fp32"),
    ("fp8_e4m3", "fp8_e4m3", "kulisch"),
    ("fp8_e5m2", "fp8_e5m2", "fp32"),
    ("fp8_e5m2", "fp8_e5m2", "kulisch"),
    ("mxfp8", "mxfp8", "fp32"),
    ("mxfp4", "mxfp4", "fp32"),
    ("bf16", "bf16", "fp32"),
    ("fp16", "fp16", "fp32"),
)

#: the default baseline of the ratios
BASELINE: tuple[str, str, str] = ("int8", "int8", "int32")


def standard_units():
    """The :class:`~fmtlab.hw.mac.MacUnit` of every standard unit."""
    return [make_unit(w, a, acc) for w, a, acc in STANDARD_UNITS]
