"""Quantizer specs of the papers' methods that are not plain presets (issue 12).

``get_method_quantizer(name, **overrides)`` returns the quantizer object for

* ``<format>_peg<K>[_noperm]`` - PEG activation groups (:mod:`fmtlab.formats.peg`), e.g. ``int8_peg6``;
* ``log<N>_fitb_per_tensor|per_channel[_grid]`` - log weights with a fitted base
  (:mod:`fmtlab.formats.logfit`), e.g. ``log4_fitb_per_channel``;

or None when ``name`` is neither (the caller then tries the ordinary presets).
"""

from __future__ import annotations

from typing import Any

from fmtlab.formats.logfit import FittedLogQuantizer, parse_logfit_name
from fmtlab.formats.peg import PegQuantizer, parse_peg_name

__all__ = ["get_method_quantizer", "is_method_name"]


def is_method_name(name: str) -> bool:
    """Whether ``name`` is a PEG or fitted-base log quantizer name."""
    return isinstance(name, str) and (parse_peg_name(name) is not None
                                      or parse_logfit_name(name) is not None)


def get_method_quantizer(name: str, **overrides: Any):
    """The PEG or fitted-base log quantizer named ``name``, or None for any other name."""
    if not isinstance(name, str):
        return None
    if parse_peg_name(name) is not None:
        return PegQuantizer.from_name(name, **overrides)
    if parse_logfit_name(name) is not None:
        return FittedLogQuantizer.from_name(name, **overrides)
    return None
