"""Lookup formats: any finite, strictly increasing set of values, codes in value order.

``LookupFormat(values, name=...)`` holds n = 2 .. 65536 values; bits = ceil(log2 n) (at least 1);
code i is the i-th smallest value; codes n .. 2**bits - 1 are unused (decode to NaN, never
produced). No NaN, no Inf, no -0 (a -0.0 value is read as +0).
Rounding (the generic table kernel of ``base.py``): round to the nearest value; the boundary
between adjacent values L < U is the float64 number fl(L/2 + U/2) (the exact midpoint whenever
L and U are float32 numbers, as nf4's and iq4nl's are); a tie goes, under NEAREST_EVEN, to the
even code, under NEAREST_AWAY, to the larger magnitude; TOWARD_ZERO and STOCHASTIC as everywhere.
The grid continues one step past each end (max + (max - second largest), min - (second smallest
- min), codes n and -1): choosing such a virtual value is an overflow, which saturates (the
only policy: there is no Inf or NaN). NaN inputs raise FormatError unless ``nan="zero"`` (which
needs 0 among the values).

Built in (``register_builtin_lookups`` runs at import of ``fmtlab.formats.registry``):
- ``nf4``: QLoRA's NormalFloat4 (Dettmers et al., "QLoRA: Efficient Finetuning of Quantized
  LLMs", 2023), the 16 values of bitsandbytes' NF4 table (csrc/kernels.cu), in [-1, 1].
- ``iq4nl``: ggml's IQ4_NL non-linear 4-bit codebook (llama.cpp, ggml/src/ggml-common.h, table
  ``kvalues_iq4nl``): the integers -127 .. 113 below; a per-block scale multiplies them there.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, register_handler

__all__ = ["LookupFormat", "NF4_VALUES", "IQ4NL_VALUES", "MAX_VALUES"]

MAX_VALUES = 1 << 16

#: bitsandbytes' NF4 table (csrc/kernels.cu; QLoRA, Dettmers et al. 2023), code order
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)

#: ggml's IQ4_NL codebook (llama.cpp ggml/src/ggml-common.h, kvalues_iq4nl), code order
IQ4NL_VALUES = (-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0)

_NAME_RE = re.compile(r"[a-z][a-z0-9_.]*")


def _check_values(values, name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)):
        raise FormatError(f"lookup format {name!r}: values must be a sequence of numbers, got a string")
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"lookup format {name!r}: values must be real numbers, got {values!r}") from None
    if a.ndim != 1:
        raise FormatError(f"lookup format {name!r}: values must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise FormatError(f"lookup format {name!r}: values are empty (give 2 .. {MAX_VALUES} values)")
    if a.size < 2:
        raise FormatError(f"lookup format {name!r}: needs at least 2 values, got {a.size}")
    if a.size > MAX_VALUES:
        raise FormatError(f"lookup format {name!r}: too many values ({a.size} > {MAX_VALUES})")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        raise FormatError(f"lookup format {name!r}: values must be finite; value {i} is {float(a[i])!r} "
                          f"({'NaN' if np.isnan(a[i]) else 'Inf'})")
    a = a + 0.0  # -0.0 -> +0.0
    d = np.diff(a)
    if np.any(d == 0):
        i = int(np.flatnonzero(d == 0)[0])
        raise FormatError(f"lookup format {name!r}: duplicate value {float(a[i])!r} at positions {i} and {i + 1}")
    if np.any(d < 0):
        i = int(np.flatnonzero(d < 0)[0])
        raise FormatError(f"lookup format {name!r}: values must be sorted ascending; value {i + 1} "
                          f"({float(a[i + 1])!r}) is below value {i} ({float(a[i])!r})")
    return tuple(float(v) for v in a)


@dataclasses.dataclass(frozen=True, init=False)
class LookupFormat(Format):
    """A format whose codes index a sorted table of values (see the module docstring).

    ``LookupFormat(values, name="my4")``: values any sequence of 2 .. 65536 finite, strictly
    increasing reals; name lowercase (letters, digits, '_', '.'), starting with a letter.
    """

    levels: tuple[float, ...]
    label: str

    family = "lookup"

    def __init__(self, values, name: str) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise FormatError(f"lookup format name must be lowercase letters, digits, '_' or '.', "
                              f"starting with a letter; got name={name!r}")
        object.__setattr__(self, "levels", _check_values(values, name))
        object.__setattr__(self, "label", name)

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.levels))))

    @property
    def name(self) -> str:
        return self.label

    def _build_values(self) -> np.ndarray:
        v = np.full(1 << self.bits, np.nan)
        v[:len(self.levels)] = self.levels
        return v

    def _virtual_above(self) -> tuple[float, bool]:
        lv = self.levels
        return lv[-1] + (lv[-1] - lv[-2]), len(lv) % 2 == 0  # code n

    def _virtual_below(self) -> tuple[float, bool]:
        lv = self.levels
        return lv[0] - (lv[1] - lv[0]), False  # code -1 is odd

    def describe(self) -> str:
        return (f"{self.name}: lookup table of {len(self.levels)} values in {self.bits} bits, "
                f"[{self.min:g}, {self.max:g}], no Inf, no NaN, no -0")


def oracle_rule(fmt: LookupFormat, vals: list[float], codes: list[int]):
    """Oracle facts: ties to the even code; virtual ends continue the end spacings, with codes
    n (above) and -1 (below, odd)."""
    from fmtlab.formats.oracle import OracleRule

    even = tuple(c % 2 == 0 for c in codes)
    hi = vals[-1] + (vals[-1] - vals[-2])
    lo = vals[0] - (vals[1] - vals[0])
    return OracleRule(even, lo, False, hi, (codes[-1] + 1) % 2 == 0)


def strategy(max_bits: int):
    """Random lookup formats of 2 .. 2**min(max_bits, 6) sorted distinct float32 values
    (hypothesis is imported only when drawing is asked for)."""
    from hypothesis import strategies as st

    if max_bits < 1:
        return None
    n_max = 1 << min(max_bits, 6)
    vals = st.lists(st.floats(-1e6, 1e6, width=32, allow_subnormal=False), min_size=2,
                    max_size=n_max, unique=True)
    return vals.filter(lambda v: len({x + 0.0 for x in v}) == len(v)).map(
        lambda v: LookupFormat(sorted(v), name=f"lut{len(v)}"))


def cli_layout(fmt: LookupFormat) -> str:
    n = len(fmt.levels)
    unused = (1 << fmt.bits) - n
    return (f"lookup table: code i = i-th smallest of {n} values in [{fmt.min:g}, {fmt.max:g}]"
            + (f"; codes {n}..{(1 << fmt.bits) - 1} unused" if unused else "") + "; no Inf, no NaN, no -0")


register_handler(Subsystem.ORACLE, LookupFormat.family, oracle_rule)
register_handler(Subsystem.STRATEGY, LookupFormat.family, strategy)
register_handler(Subsystem.CLI, LookupFormat.family, cli_layout)
