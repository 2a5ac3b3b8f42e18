"""Peer libraries as references where they are right, and their version quirks detected at run time.

fmtlab is held to the exact oracle (``fmtlab.formats.oracle``). A peer (ml_dtypes, torch) is a
bit-exact reference wherever it agrees with the oracle. Where a peer *version* is known to round
differently, the probes below find out at run time which behaviour the installed version has, so
the tests neither assert a peer's bug as truth nor break when the peer fixes it:

- ``ml_dtypes_double_rounds()``: ml_dtypes <= 0.6 cast float64 inputs through float32 (two
  roundings); 0.7 rounds once, as fmtlab and the oracle do. Probe: 1.0625 + 2**-30 in
  float8_e4m3fn (once: 0x39; via float32 the tie 1.0625 goes to the even 0x38).
- ``ml_dtypes_e8m0_subnormal_rule()``: ml_dtypes <= 0.6 encoded every 2**-127 < x < 2**-126 to
  code 1 (2**-126); 0.7 rounds to the nearest power of two there too (the oracle's rule). Probe:
  1.2 * 2**-127 (nearest: code 0). ``torch_e8m0_subnormal_rule()`` probes torch's
  float8_e8m0fnu cast the same way (torch 2.13 still has the "above_half" rule).
"""

from __future__ import annotations

import functools
import warnings

import ml_dtypes
import numpy as np


@functools.lru_cache(maxsize=None)
def ml_dtypes_double_rounds() -> bool:
    """True if the installed ml_dtypes rounds float64 inputs through float32 (ml_dtypes <= 0.6)."""
    code = int(np.array([1.0625 + 2.0 ** -30]).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)[0])
    if code not in (0x38, 0x39):
        raise AssertionError(f"ml_dtypes {ml_dtypes.__version__}: unexpected probe code {code:#x}")
    return code == 0x38


E8M0_PROBE = 1.2 * 2.0 ** -127  # nearest power of two: 2**-127 (code 0); "above_half": code 1


def _e8m0_rule(code: int, who: str) -> str:
    if code not in (0, 1):
        raise AssertionError(f"{who}: unexpected E8M0 probe code {code}")
    return "nearest" if code == 0 else "above_half"


@functools.lru_cache(maxsize=None)
def ml_dtypes_e8m0_subnormal_rule() -> str:
    """"nearest" (ml_dtypes >= 0.7, the oracle's rule) or "above_half" (<= 0.6: every
    2**-127 < x < 2**-126 gives code 1) for float32 subnormal inputs to float8_e8m0fnu."""
    x = np.array([E8M0_PROBE], np.float32)
    return _e8m0_rule(int(x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)[0]),
                      f"ml_dtypes {ml_dtypes.__version__}")


@functools.lru_cache(maxsize=None)
def torch_e8m0_subnormal_rule() -> str:
    """The same probe for torch's float8_e8m0fnu cast."""
    import torch

    x = torch.tensor([E8M0_PROBE], dtype=torch.float32)
    return _e8m0_rule(int(x.to(torch.float8_e8m0fnu).view(torch.uint8)[0]), f"torch {torch.__version__}")


def note_quirk(what: str, n: int, total: int, peer: str | None = None) -> None:
    """Record (as a warning in pytest's summary) that the peer deviated from the oracle."""
    if n:
        peer = peer or f"ml_dtypes {ml_dtypes.__version__}"
        warnings.warn(f"{peer}: {what} on {n} of {total} inputs; fmtlab follows the exact oracle "
                      "there (checked)", stacklevel=2)


def e8m0_quirk_mask(x: np.ndarray, rule: str | None = None) -> np.ndarray:
    """Inputs where a peer's E8M0 rule (default: the installed ml_dtypes') may differ from the
    oracle's (none for the "nearest" rule): 2**-127 < x < 2**-126, where the "above_half" rule
    always gives code 1."""
    rule = ml_dtypes_e8m0_subnormal_rule() if rule is None else rule
    if rule == "nearest":
        return np.zeros(np.shape(x), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (x > 2.0 ** -127) & (x < 2.0 ** -126)
