"""fmtlab: a bit-accurate lab for the number formats that run LLMs, and the hardware that computes with them."""

__version__ = "0.1.0"
