"""The element-format contract shared by every family (INT, dINT, log-base-b, minifloat, E8M0).

A format is an immutable value. Subclasses state their code layout through a handful of
primitives (``_build_values``, ``_is_even``, the virtual values beyond each end, the special
codes); everything else (finfo-like facts, the sorted grid, the reference oracle and the generic
numba kernel) is derived here once.

Numeric convention (all families):
- ``encode`` rounds the exact value of each input (float32 inputs are widened to float64, which is
  exact; float64 inputs are rounded once from float64, never through float32).
- Rounding follows :class:`Rounding`; a result beyond the largest finite value (or below the most
  negative one) is an *overflow* resolved by :class:`Overflow` (``TOWARD_ZERO`` saturates, as
  IEEE 754 round-toward-zero does).
- ``-0.0`` and negative inputs that round to zero give the negative-zero code where the format
  has one, else the +0 code.
- NaN inputs give the format's NaN code (sign kept where the format has signed NaNs); a format
  without NaN raises :class:`FormatError` unless ``nan=NanInput.ZERO`` is passed.
- Codes are unsigned integers holding the format's bit pattern in the low ``bits`` bits.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property
from typing import ClassVar, NamedTuple

import numpy as np

from fmtlab.errors import FormatError
from fmtlab.formats.rounding import NanInput, Overflow, Rounding, ROUNDING_ID

SeedLike = "int | np.random.Generator | None"


class Grid(NamedTuple):
    """The sorted finite grid extended by one virtual value at each end.

    vals[0] and vals[-1] are virtual (choosing one means overflow); codes there are -1 / -2.
    bounds[i] is the rounding boundary between vals[i] and vals[i+1]; even[i] the tie flag.
    """

    vals: np.ndarray  # float64, strictly increasing
    codes: np.ndarray  # int64
    bounds: np.ndarray  # float64, len(vals) - 1
    even: np.ndarray  # bool


def code_dtype(bits: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ``bits``-bit codes."""
    if bits <= 8:
        return np.dtype(np.uint8)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def make_rng(seed: "int | np.random.Generator | None") -> np.random.Generator:
    """A Generator from an int seed or a Generator; None is refused (no hidden global RNG)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("stochastic rounding needs an explicit seed= (int or numpy Generator)")
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or numpy.random.Generator, got {type(seed).__name__}")


@dataclasses.dataclass(frozen=True)
class Format:
    """Base of all element formats. Subclasses are frozen dataclasses holding their parameters."""

    family: ClassVar[str] = "abstract"

    # ---- primitives each family provides -------------------------------------------------
    @property
    def bits(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def name(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_values(self) -> np.ndarray:
        """float64 value of every code 0 .. 2**bits - 1 (NaN for NaN and unused codes)."""
        raise NotImplementedError

    def _is_even(self, codes: np.ndarray) -> np.ndarray:
        """Tie flag of finite codes for NEAREST_EVEN (default: code LSB is 0)."""
        return (codes & 1) == 0

    def _virtual_above(self) -> tuple[float, bool]:
        """(value, even) of the next value above ``max`` if the range went on."""
        raise NotImplementedError

    def _virtual_below(self) -> tuple[float, bool]:
        """(value, even) of the next value below the most negative value."""
        v, e = self._virtual_above()
        return -v, e

    def _bounds(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Rounding boundary between adjacent grid values (linear midpoint by default)."""
        return lo / 2 + hi / 2

    @property
    def default_overflow(self) -> Overflow:
        """The overflow policy of the format's standard (and of ml_dtypes' casts)."""
        return Overflow.SATURATE

    def canonical_nan_code(self, negative: bool = False) -> int | None:
        """The code a NaN input becomes (None if the format has no NaN)."""
        return None

    def inf_code(self, negative: bool = False) -> int | None:
        """The code of +/-Inf (None if the format has no Inf)."""
        return None

    @property
    def negative_zero_code(self) -> int | None:
        """The code of -0 where the format has a usable negative zero."""
        return None

    def _unused_code_mask(self) -> np.ndarray:
        """bool by code: codes that decode to NaN but are not NaN codes of the format (never
        produced, e.g. int8_sym's 0x80, dINT's -0 slot, flushed subnormals). Default: every
        NaN-valued code of a format without NaN, none of a format with NaN."""
        v = self._values
        return np.isnan(v) if not self.has_nan else np.zeros(v.shape, dtype=bool)

    # ---- derived tables -------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    @cached_property
    def _values(self) -> np.ndarray:
        v = np.asarray(self._build_values(), dtype=np.float64)
        if v.shape != (1 << self.bits,):
            raise AssertionError(f"{self.name}: values table has shape {v.shape}")
        v.setflags(write=False)
        return v

    def values(self) -> np.ndarray:
        """Every value by code (float64; NaN for NaN codes and for unused codes)."""
        return self._values.copy()

    @cached_property
    def canonical_codes(self) -> np.ndarray:
        """Codes that ``encode`` can produce for finite inputs, one per distinct finite value
        (plus the negative-zero code where the format has one), ascending by code."""
        v = self._values
        finite = np.flatnonzero(np.isfinite(v))
        _, first = np.unique(v[finite], return_index=True)
        keep = set(finite[first].tolist())
        # prefer +0 for the zero value, then add -0 explicitly
        zero_codes = [int(c) for c in finite if v[c] == 0]
        if zero_codes:
            pos = [c for c in zero_codes if not np.signbit(v[c])]
            keep -= set(zero_codes)
            keep.add(pos[0] if pos else zero_codes[0])
        if self.negative_zero_code is not None:
            keep.add(self.negative_zero_code)
        return np.array(sorted(keep), dtype=np.int64)

    @cached_property
    def grid(self) -> Grid:
        v = self._values
        codes = np.array([c for c in self.canonical_codes if c != self.negative_zero_code], dtype=np.int64)
        order = np.argsort(v[codes], kind="stable")
        codes = codes[order]
        vals = v[codes]
        if np.any(np.diff(vals) <= 0):
            raise AssertionError(f"{self.name}: canonical values are not distinct")
        even = self._is_even(codes).astype(bool)
        hi_v, hi_e = self._virtual_above()
        lo_v, lo_e = self._virtual_below()
        vals = np.concatenate([[lo_v], vals, [hi_v]])
        codes = np.concatenate([[-1], codes, [-2]])
        even = np.concatenate([[lo_e], even, [hi_e]])
        bounds = self._bounds(vals[:-1], vals[1:])
        for arr in (vals, codes, bounds, even):
            arr.setflags(write=False)
        return Grid(vals, codes, bounds, even)

    # ---- special-value facts as data (both signs) -------------------------------------------
    @cached_property
    def unused_codes(self) -> frozenset[int]:
        """Codes that decode to NaN in ``values()`` but are neither NaN codes nor produced."""
        return frozenset(np.flatnonzero(self._unused_code_mask()).tolist())

    @cached_property
    def nan_codes(self) -> frozenset[int]:
        """Every code that is NaN (both signs); empty for formats without NaN."""
        v = self._values
        return frozenset(np.flatnonzero(np.isnan(v) & ~self._unused_code_mask()).tolist())

    @cached_property
    def inf_codes(self) -> frozenset[int]:
        """Every code that is +Inf or -Inf; empty for formats without Inf."""
        return frozenset(np.flatnonzero(np.isinf(self._values)).tolist())

    # ---- finfo-like facts -----------------------------------------------------------------
    @cached_property
    def max(self) -> float:
        """Largest finite value."""
        return float(self.grid.vals[-2])

    @cached_property
    def min(self) -> float:
        """Most negative finite value (0 for unsigned formats)."""
        return float(self.grid.vals[1])

    @cached_property
    def smallest_positive(self) -> float:
        """Smallest positive value (smallest nonzero magnitude if no value is positive)."""
        v = self.grid.vals[1:-1]
        pos = v[v > 0]
        return float(pos.min()) if pos.size else float(np.abs(v[v != 0]).min())

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value (families define 'normal'; default smallest positive)."""
        return self.smallest_positive

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value (subnormal where the family has subnormals)."""
        return self.smallest_positive

    @property
    def eps(self) -> float:
        """Distance from 1.0 to the next larger value of the grid (extended past max if needed)."""
        g = self.grid.vals
        i = int(np.searchsorted(g, 1.0, side="right"))
        return float(g[i] - 1.0) if 0 < i < len(g) else math.nan

    @property
    def has_inf(self) -> bool:
        return self.inf_code() is not None

    @property
    def has_nan(self) -> bool:
        return self.canonical_nan_code() is not None

    @property
    def has_negative_zero(self) -> bool:
        return self.negative_zero_code is not None

    @property
    def signed(self) -> bool:
        return self.min < 0

    @property
    def zero_code(self) -> int | None:
        z = np.flatnonzero(self.grid.vals == 0)
        return int(self.grid.codes[z[0]]) if z.size else None

    @cached_property
    def zero_input_code(self) -> int:
        """The code the input 0.0 becomes (NEAREST_EVEN): the +0 code where the format has
        zero, else the nearest value's (what ``nan="zero"`` gives a NaN input)."""
        if self.zero_code is not None:
            return self.zero_code
        z = self.encode_table(np.zeros(1), Rounding.NEAREST_EVEN, Overflow.SATURATE, NanInput.RAISE, None)
        return int(z[0])

    def max_code(self, negative: bool = False) -> int:
        """Code of the largest finite value (of the most negative one with negative=True)."""
        return int(self.grid.codes[1 if negative else -2])

    @property
    def bit_fields(self) -> tuple[int, ...]:
        """Widths of the code's fields, most significant first (minifloat: sign, E, M)."""
        return (self.bits,)

    @property
    def code_dtype(self) -> np.dtype:
        return code_dtype(self.bits)

    def describe(self) -> str:
        """One line: name, bits, range and special-value policy."""
        specials = []
        specials.append("Inf" if self.has_inf else "no Inf")
        specials.append("NaN" if self.has_nan else "no NaN")
        specials.append("-0" if self.has_negative_zero else "no -0")
        return (f"{self.name}: {self.bits} bits, max {self.max:g}, smallest positive "
                f"{self.smallest_subnormal:g}, {', '.join(specials)}")

    # ---- encode / decode ------------------------------------------------------------------
    def resolve_conventions(self, rounding: "Rounding | str", overflow: "Overflow | str | None",
                            nan: "NanInput | str") -> tuple[Rounding, Overflow, NanInput]:
        """(Rounding, Overflow, NanInput) from enums or strings; overflow None = the format's
        default. Raises FormatError for a policy the format cannot honour (overflow to Inf without Inf,
        to NaN without NaN)."""
        rounding = Rounding.parse(rounding)
        overflow = self.default_overflow if overflow is None else Overflow.parse(overflow)
        nan = NanInput.parse(nan)
        if overflow is Overflow.INF and not self.has_inf:
            raise FormatError(f"{self.name} has no Inf: overflow='inf' is impossible (use 'saturate'"
                              + (" or 'nan')" if self.has_nan else ")"))
        if overflow is Overflow.NAN and not self.has_nan:
            raise FormatError(f"{self.name} has no NaN: overflow='nan' is impossible (use 'saturate')")
        return rounding, overflow, nan

    def special_codes(self, overflow: Overflow, nan: NanInput) -> np.ndarray:
        """The specials vector of the table kernel (see ``_table_kernel._encode_one``)."""
        def ovf(neg: bool) -> int:
            if overflow is Overflow.SATURATE:
                return self.max_code(neg)
            if overflow is Overflow.INF:
                return self.inf_code(neg)
            return self.canonical_nan_code(neg)

        def nan_code(neg: bool) -> int:
            c = self.canonical_nan_code(neg)
            if c is None:
                return self.zero_input_code if nan is NanInput.ZERO else -1
            return c

        def inf_in(neg: bool) -> int:
            c = self.inf_code(neg)
            return ovf(neg) if c is None else c

        nz = self.negative_zero_code
        return np.array([nan_code(False), nan_code(True), inf_in(False), inf_in(True),
                         ovf(False), ovf(True), self.max_code(False), self.max_code(True),
                         self.zero_code if self.zero_code is not None else -1,
                         -1 if nz is None else nz], dtype=np.int64)

    @staticmethod
    def _as_float(x) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind == "c":
            raise TypeError("complex input cannot be encoded")
        if a.dtype.kind == "V" and a.dtype.names is None and a.dtype.itemsize <= 2:
            try:  # ml_dtypes' floats (bfloat16, float8_*) widen exactly to float64
                with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
                    return a.astype(np.float64)
            except (TypeError, ValueError):
                pass
        if a.dtype.kind not in "fiub":
            raise TypeError(f"cannot encode an array of dtype {a.dtype}")
        if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
            check_exact_in_float64(a)
        if a.dtype == np.float16 or a.dtype.kind in "iub":
            a = a.astype(np.float64)
        return a

    def encode(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN,
               overflow: Overflow | str | None = None, seed: "int | np.random.Generator | None" = None,
               nan: NanInput | str = NanInput.RAISE) -> np.ndarray:
        """Round ``x`` to the format and return codes (uint8/16/32, same shape as ``x``).

        rounding: see :class:`Rounding`; STOCHASTIC needs ``seed`` (int or Generator); its draws
        are ``rng.random(x.size)`` (float64, C order) and x goes up iff draw < (x-L)/(U-L).
        overflow: see :class:`Overflow`; None = the format's standard default.
        nan: for formats without NaN, what a NaN input does (default: raise FormatError).
        """
        rounding, overflow, nan = self.resolve_conventions(rounding, overflow, nan)
        a = self._as_float(x)
        rand = None
        if rounding is Rounding.STOCHASTIC:
            rand = make_rng(seed).random(a.size)
        codes = self._encode_array(a, rounding, overflow, nan, rand)
        return codes.reshape(a.shape)

    def _encode_array(self, a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                      rand: np.ndarray | None) -> np.ndarray:
        """Encode via the generic table kernel; families override with faster bit kernels."""
        return self.encode_table(a, rounding, overflow, nan, rand)

    def encode_table(self, a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                     rand: np.ndarray | None) -> np.ndarray:
        from fmtlab.formats._table_kernel import encode_table

        with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
            flat = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
        neg = np.signbit(np.ascontiguousarray(a).reshape(-1))
        out = np.empty(flat.shape, dtype=np.int64)
        g = self.grid
        r = np.zeros(1) if rand is None else np.ascontiguousarray(rand, dtype=np.float64)
        bad = encode_table(flat, neg, r, g.vals, g.codes, g.bounds, g.even.astype(np.uint8),
                           ROUNDING_ID[rounding], self.special_codes(overflow, nan), out)
        if bad:
            raise FormatError(f"{self.name} has no NaN code and the input holds {bad} NaN value(s); "
                              "clean the input or pass nan='zero'")
        return out.astype(self.code_dtype)

    def decode(self, codes, dtype=np.float64) -> np.ndarray:
        """Value of each code (float64 by default; ``dtype=np.float32`` rounds to nearest even).

        Codes must be integers in [0, 2**bits); out-of-range codes raise FormatError.
        """
        c = np.asarray(codes)
        if c.dtype.kind not in "iu":
            raise TypeError(f"codes must be an integer array, got dtype {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= (1 << self.bits)):
            raise FormatError(f"{self.name}: codes must lie in [0, {1 << self.bits}); got "
                              f"min {c.min()}, max {c.max()}")
        return self._values[c.astype(np.intp)].astype(dtype, copy=False)

    def quantize(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN,
                 overflow: Overflow | str | None = None, seed: "int | np.random.Generator | None" = None,
                 nan: NanInput | str = NanInput.RAISE) -> np.ndarray:
        """decode(encode(x)) in x's float dtype (float64 for non-float input)."""
        a = self._as_float(x)
        out_dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float64
        if a.dtype == out_dtype:  # a fused kernel may answer directly (same bits)
            r, o, n = self.resolve_conventions(rounding, overflow, nan)
            q = self._quantize_array(a, r, o, n, seed)
            if q is not None:
                return q.reshape(a.shape)
        return self.decode(self.encode(a, rounding, overflow, seed, nan), dtype=out_dtype)

    def _quantize_array(self, a: np.ndarray, rounding: Rounding, overflow: Overflow, nan: NanInput,
                        seed) -> np.ndarray | None:
        """Fused decode(encode(a)) in a's dtype (float32/float64), or None to use encode + decode.
        Families with fast kernels override this (fmtlab.formats.kernels.FastKernelRouting)."""
        return None


def check_exact_in_float64(a: np.ndarray) -> None:
    """Raise FormatError if a 64-bit integer array holds a value float64 cannot hold exactly.

    Such an integer (|v| > 2**53 and not a multiple of its float64 spacing) would be rounded twice:
    once to float64, then to the format."""
    big = a[(a > (1 << 53)) | (a < -(1 << 53))] if a.dtype.kind == "i" else a[a > (1 << 53)]
    for v in big.reshape(-1).tolist():
        if int(float(v)) != v:
            raise FormatError(f"integer input {v} is not exactly representable in float64 "
                              "(|v| > 2**53): convert it to float yourself to accept a double rounding")
