"""Hypothesis strategies for property tests of element formats (yours and fmtlab's).

Small composable strategies in hypothesis' own style::

    from hypothesis import given
    from fmtlab.formats import strategies as fst

    @given(fst.formats(families=["minifloat"]), fst.roundings(stochastic=False), st.data())
    def test_idempotent(fmt, rounding, data):
        x = data.draw(fst.float_inputs(fmt))
        ...

What is here:
- ``formats(families=..., max_bits=...)``: named formats and random members of each family;
- ``codes(fmt)``, ``canonical_codes(fmt)``, ``values(fmt)``: what a format holds;
- ``midpoints(fmt)``, ``boundary_floats(fmt, width)``, ``float_inputs(fmt, width)``,
  ``input_arrays(fmt, width)``: inputs that hit what rounding gets wrong: every value, every
  midpoint between adjacent values (the overflow threshold beyond ``max`` included), both
  ``width``-bit neighbours of each, the underflow region, subnormals of the input type, +/-0,
  +/-Inf, NaN, and ordinary floats around the format's range;
- ``roundings()``, ``overflows(fmt)``, ``seeds()``;
- ``boundary_points(fmt, dtype)``: the same boundary inputs as one sorted numpy array, for
  exhaustive tests and bulk comparisons without hypothesis.

Requires hypothesis (a [dev] dependency); ``fmtlab.formats`` itself never imports this module.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import Subsystem, get_handler, handled_families
from fmtlab.formats.dint import DInt
from fmtlab.formats.e8m0 import E8M0
from fmtlab.formats.integer import IntFormat
from fmtlab.formats.logfmt import LogFormat
from fmtlab.formats.minifloat import MiniFloat
from fmtlab.formats.special import SpecialRule, get_special_rule, special_rule_names
from fmtlab.formats.oracle import oracle_table
from fmtlab.formats.registry import get_format, list_formats
from fmtlab.formats.rounding import Overflow, Rounding

__all__ = [
    "FAMILIES", "formats", "named_formats", "minifloats", "int_formats", "dint_formats",
    "log_formats", "codes", "canonical_codes", "values", "midpoints", "boundary_floats",
    "float_inputs", "input_arrays", "roundings", "overflows", "seeds", "boundary_points",
    "bulk_inputs", "registered_families", "int_family", "dint_family", "log_family", "minifloat_family",
    "e8m0_family",
]

#: the built-in families (``families()`` also lists families registered later)
FAMILIES = ("int", "dint", "log", "minifloat", "e8m0")


def registered_families() -> tuple[str, ...]:
    """Every family with a registered STRATEGY handler (built-in ones first); ``families=None``
    in the strategies below means the built-in FAMILIES, others are drawn when named."""
    extra = [f for f in handled_families(Subsystem.STRATEGY) if f not in FAMILIES]
    return FAMILIES + tuple(extra)
_WIDTH_DTYPE = {16: np.float16, 32: np.float32, 64: np.float64}


def _check_families(families: Iterable[str] | None) -> tuple[str, ...]:
    known = registered_families()
    if families is None:
        return FAMILIES
    if isinstance(families, str):
        families = (families,)
    fams = tuple(families)
    bad = [f for f in fams if f not in known]
    if bad or not fams:
        raise ValueError(f"families must be a non-empty subset of {known}, got {fams!r}")
    return fams


def _check_bits(max_bits: int, low: int = 2) -> None:
    if not isinstance(max_bits, int) or not low <= max_bits <= 16:
        raise ValueError(f"max_bits must be an int in {low}..16, got {max_bits=!r}")


def named_formats(*, families: Iterable[str] | None = None, max_bits: int = 16) -> st.SearchStrategy[Format]:
    """The registry's standard formats (``list_formats()``) of the given families and sizes."""
    fams = _check_families(families)
    _check_bits(max_bits)
    fmts = [f for f in (get_format(n) for n in list_formats()) if f.family in fams and f.bits <= max_bits]
    if not fmts:
        raise ValueError(f"no standard format of families {fams} has at most {max_bits} bits")
    return st.sampled_from(fmts)


def _minifloat_layouts(max_bits: int, specials: Sequence[SpecialRule]) -> list[tuple[SpecialRule, int, int]]:
    out = []
    for rule in specials:
        for e in range(1, 9):
            for m in range(0, 11):
                if 1 + e + m > max_bits:
                    continue
                try:
                    rule.check(e, m)
                except FormatError:
                    continue
                out.append((rule, e, m))
    return out


@st.composite
def minifloats(draw, *, max_bits: int = 16, specials: "Sequence[str | SpecialRule] | None" = None,
               vary_bias: bool = True, flush_subnormals: bool = True) -> MiniFloat:
    """Random ``MiniFloat(exp_bits, man_bits, bias, special, subnormals)`` of at most max_bits
    bits; the bias is the default or, with ``vary_bias``, up to 3 away from it. ``specials``:
    rules or rule names (default: every registered rule, ``special_rule_names()``)."""
    _check_bits(max_bits, 2)
    names = special_rule_names() if specials is None else tuple(specials)
    try:
        rules = [get_special_rule(x) for x in names]
    except FormatError as exc:
        raise ValueError(f"specials must be among {special_rule_names()}, got {names!r}") from exc
    layouts = _minifloat_layouts(max_bits, rules)
    if not layouts:
        raise ValueError(f"no minifloat with specials {names} fits in {max_bits} bits")
    rule, e, m = draw(st.sampled_from(layouts))
    bias = None
    if vary_bias and draw(st.booleans()):
        bias = rule.default_bias(e) + draw(st.integers(-3, 3))
    sub = draw(st.booleans()) if flush_subnormals else True
    return MiniFloat(e, m, bias=bias, special=rule, subnormals=sub)


@st.composite
def int_formats(draw, *, max_bits: int = 16) -> IntFormat:
    """Random INTn: signed, narrow (symmetric) or unsigned, 2..max_bits bits."""
    _check_bits(max_bits, 2)
    bits = draw(st.integers(2, max_bits))
    kind = draw(st.sampled_from(["signed", "narrow", "unsigned"]))
    return IntFormat(bits, unsigned=kind == "unsigned", narrow=kind == "narrow")


_DYADIC_LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


@st.composite
def dint_formats(draw, *, max_bits: int = 16) -> DInt:
    """Random dINT: 3..max_bits bits, 0..3 denormal levels in (0, 1), optional -0 code."""
    _check_bits(max_bits, 3)
    bits = draw(st.integers(3, max_bits))
    level = st.one_of(st.sampled_from(_DYADIC_LEVELS),
                      st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
    n = draw(st.integers(0, min(3, (1 << (bits - 1)) - 2)))
    levels = tuple(sorted(set(draw(st.lists(level, min_size=n, max_size=n)))))
    return DInt(bits, denormals=levels, negative_zero=draw(st.booleans()))


@st.composite
def log_formats(draw, *, max_bits: int = 16) -> LogFormat:
    """Random log-base-b format: base in (1, 16], bits limited so the levels stay normal floats,
    either rounding domain, optional explicit underflow threshold and -0 code."""
    _check_bits(max_bits, 2)
    base = draw(st.one_of(st.sampled_from([2.0, math.sqrt(2.0), 2.0 ** 0.25, 1.5, 4.0]),
                          st.floats(1.01, 16.0)))
    # levels b**-k for k <= 2**(bits-1) - 2 must stay above sqrt(float64's smallest normal)
    kmax_ok = int(500 * math.log(2.0) / math.log(base))
    bits_hi = max(2, min(max_bits, int(math.log2(kmax_ok + 2)) + 1))
    bits = draw(st.integers(2, bits_hi))
    domain = draw(st.sampled_from(["log", "linear"]))
    nz = draw(st.booleans())
    probe = LogFormat(bits, base=base)
    under = None
    if draw(st.booleans()):
        under = probe.smallest_level * draw(st.floats(0.05, 1.0))
    try:
        return LogFormat(bits, base=base, domain=domain, underflow=under, negative_zero=nz)
    except FormatError:  # pragma: no cover - rounding at the edge of the threshold
        return LogFormat(bits, base=base, domain=domain, negative_zero=nz)


def formats(*, families: Iterable[str] | None = None, max_bits: int = 16,
            generic: bool = True) -> st.SearchStrategy[Format]:
    """Formats of the given families (default all): the named standard ones and, with
    ``generic=True``, random members of each family with at most ``max_bits`` bits."""
    fams = _check_families(families)
    _check_bits(max_bits)
    parts: list[st.SearchStrategy[Format]] = []
    named = [f for f in (get_format(n) for n in list_formats()) if f.family in fams and f.bits <= max_bits]
    if named:
        parts.append(st.sampled_from(named))
    if generic:
        for f in fams:
            s = get_handler(Subsystem.STRATEGY, f, "register a STRATEGY handler "
                            "(max_bits) -> hypothesis strategy | None in the family's module")(max_bits)
            if s is not None:
                parts.append(s)
    if not parts:
        raise ValueError(f"no format of families {fams} has at most {max_bits} bits")
    return st.one_of(parts)


# ---- STRATEGY handlers of the built-in families: (max_bits) -> strategy | None ------------

def int_family(max_bits: int):
    return int_formats(max_bits=max_bits)


def dint_family(max_bits: int):
    return dint_formats(max_bits=max_bits) if max_bits >= 3 else None


def log_family(max_bits: int):
    return log_formats(max_bits=max_bits)


def minifloat_family(max_bits: int):
    return minifloats(max_bits=max_bits)


def e8m0_family(max_bits: int):
    return st.just(E8M0()) if max_bits >= 8 else None


# ---- what a format holds ---------------------------------------------------------------------

@lru_cache(maxsize=64)
def _canonical_list(fmt: Format) -> tuple[int, ...]:
    return tuple(int(c) for c in fmt.canonical_codes)


@lru_cache(maxsize=64)
def _value_list(fmt: Format) -> tuple[float, ...]:
    v = fmt.values()
    return tuple(float(x) for x in v[np.isfinite(v)])


@lru_cache(maxsize=16)  # a 16-bit format's list is ~10 MB
def _boundary_list(fmt: Format, dtype_str: str) -> tuple[float, ...]:
    return tuple(_boundary_points(fmt, dtype_str).tolist())


@lru_cache(maxsize=32)
def _sampled(kind: str, fmt: Format, dtype_str: str = "") -> st.SearchStrategy:
    """Cached sampled_from strategies (hypothesis scans the sequence on construction, which
    costs ~0.1 s for the 400k boundary points of a 16-bit format)."""
    seq = {"canonical": lambda: _canonical_list(fmt), "values": lambda: _value_list(fmt),
           "midpoints": lambda: _midpoints(fmt),
           "boundary": lambda: _boundary_list(fmt, dtype_str)}[kind]()
    return st.sampled_from(seq)


def codes(fmt: Format) -> st.SearchStrategy[int]:
    """Any code 0 .. 2**bits - 1 (NaN, Inf and unused codes included)."""
    return st.integers(0, (1 << fmt.bits) - 1)


def canonical_codes(fmt: Format) -> st.SearchStrategy[int]:
    """Codes that encode can produce from finite inputs (one per value, plus -0)."""
    return _sampled("canonical", fmt)


def values(fmt: Format) -> st.SearchStrategy[float]:
    """Every finite value of the format (as a Python float; -0.0 where the format has it)."""
    return _sampled("values", fmt)


@lru_cache(maxsize=64)
def _midpoints(fmt: Format) -> tuple[float, ...]:
    """float64 rounding boundaries between adjacent table values (virtual ends included): the
    arithmetic midpoint, for log-domain formats also the geometric mean."""
    t = oracle_table(fmt)
    lo = np.array(t.vals[:-1])
    hi = np.array(t.vals[1:])
    mids = [lo / 2 + hi / 2]
    if t.rule.log_domain:
        same = (lo * hi) > 0
        mids.append((np.sign(hi) * np.sqrt(np.abs(lo * hi)))[same])
    if t.rule.zero_threshold is not None:
        mids.append(np.array([t.rule.zero_threshold, -t.rule.zero_threshold]))
    m = np.unique(np.concatenate(mids))
    return tuple(float(x) for x in m[np.isfinite(m)])


def midpoints(fmt: Format) -> st.SearchStrategy[float]:
    """Rounding boundaries between adjacent values (float64; see ``boundary_points``)."""
    return _sampled("midpoints", fmt)


def _dtype_of(width_or_dtype) -> np.dtype:
    if isinstance(width_or_dtype, int) and not isinstance(width_or_dtype, bool):
        if width_or_dtype not in _WIDTH_DTYPE:
            raise ValueError(f"width must be 16, 32 or 64, got width={width_or_dtype!r}")
        return np.dtype(_WIDTH_DTYPE[width_or_dtype])
    dt = np.dtype(width_or_dtype)
    if dt not in (np.float16, np.float32, np.float64):
        raise ValueError(f"dtype must be float16, float32 or float64, got {dt}")
    return dt


@lru_cache(maxsize=32)  # a 16-bit format's array is ~3 MB
def _boundary_points(fmt: Format, dtype_str: str) -> np.ndarray:
    dt = np.dtype(dtype_str)
    v = fmt.values()
    fin = v[np.isfinite(v)]
    t = oracle_table(fmt)
    mids = np.array(_midpoints(fmt))
    anchors = np.concatenate([fin, mids, [t.vals[0], t.vals[-1]]])
    smallest = fmt.smallest_subnormal
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        a = anchors.astype(dt)
        a = a[np.isfinite(a)]
        up = np.nextafter(a, dt.type(np.inf))
        down = np.nextafter(a, dt.type(-np.inf))
        fi = np.finfo(dt)
        extra = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, fi.max, -fi.max,
                          fi.smallest_subnormal, -fi.smallest_subnormal, fi.smallest_normal,
                          -fi.smallest_normal, smallest / 4, -smallest / 4, smallest / 2 * 0.75,
                          fmt.max * 4, -fmt.max * 4, fmt.min * 4, -fmt.min * 4], dtype=dt)
        pts = np.concatenate([a, up, down, extra])
    out = np.unique(pts[~np.isnan(pts) & (pts != 0)])  # sorted (unique would merge +0 and -0)
    neg = out[out < 0]
    out = np.concatenate([neg, np.array([-0.0, 0.0], dtype=dt), out[out > 0],
                          np.array([np.nan, -np.nan], dtype=dt)])
    out.setflags(write=False)
    return out


def boundary_points(fmt: Format, dtype=np.float32) -> np.ndarray:
    """Sorted array (``dtype``) of every finite value of ``fmt``, every rounding boundary
    between adjacent values (the overflow threshold beyond max and the underflow threshold
    included), both ``dtype`` neighbours of each, the lower and upper virtual values, +/-0,
    +/-Inf, the extreme and subnormal numbers of ``dtype``, and +/-NaN (last). Read-only."""
    return _boundary_points(fmt, _dtype_of(dtype).str)


def boundary_floats(fmt: Format, width: int = 32) -> st.SearchStrategy[float]:
    """One of ``boundary_points(fmt, width)`` (values, midpoints and their neighbours)."""
    return _sampled("boundary", fmt, _dtype_of(width).str)


def float_inputs(fmt: Format, width: int = 32, *, allow_nan: bool = True,
                 allow_infinity: bool = True) -> st.SearchStrategy[float]:
    """Inputs for ``fmt``: boundary floats (mostly), floats around the format's range, and any
    float of the given width. Values are exactly representable at ``width`` bits."""
    dt = _dtype_of(width)
    fi = np.finfo(dt)
    with np.errstate(over="ignore"):
        rng_max = float(dt.type(min(max(abs(fmt.max), abs(fmt.min)) * 4, float(fi.max))))
    parts = [boundary_floats(fmt, width)]
    parts.append(st.floats(-rng_max, rng_max, width=width))
    parts.append(st.floats(allow_nan=allow_nan, allow_infinity=allow_infinity, width=width))
    s = st.one_of(parts)
    if not allow_nan:
        s = s.filter(lambda x: not math.isnan(x))
    if not allow_infinity:
        s = s.filter(lambda x: not math.isinf(x))
    return s


def input_arrays(fmt: Format, width: int = 32, *, max_side: int = 16, max_dims: int = 2,
                 allow_nan: bool = True) -> st.SearchStrategy[np.ndarray]:
    """numpy arrays (dtype float{width}, 0..max_dims dims) whose elements are ``float_inputs``."""
    dt = _dtype_of(width)
    return hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side),
                      elements=float_inputs(fmt, width, allow_nan=allow_nan))


# ---- conventions -----------------------------------------------------------------------------

def roundings(*, stochastic: bool = True) -> st.SearchStrategy[Rounding]:
    """Rounding modes (all, or the deterministic ones with ``stochastic=False``)."""
    modes = [r for r in Rounding if stochastic or r is not Rounding.STOCHASTIC]
    return st.sampled_from(modes)


def overflows(fmt: Format, *, default: bool = True) -> st.SearchStrategy[Overflow | None]:
    """The overflow policies ``fmt`` supports (and None, its default, with ``default=True``)."""
    opts: list[Overflow | None] = [Overflow.SATURATE]
    if fmt.has_inf:
        opts.append(Overflow.INF)
    if fmt.has_nan:
        opts.append(Overflow.NAN)
    if default:
        opts.append(None)
    return st.sampled_from(opts)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for stochastic rounding (explicit, never a global RNG)."""
    return st.integers(0, 2 ** 32 - 1)


def bulk_inputs(fmt: Format, n: int = 1_000_000, *, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """At least ``n`` inputs (``dtype``, shuffled) for bulk comparisons with peer libraries:
    ``boundary_points(fmt, dtype)`` (values, midpoints and both neighbours of each, the
    under/overflow thresholds, +/-0, +/-Inf, +/-NaN), the value of every float16 and bfloat16
    code (all 2 x 65536 bit patterns, NaNs and subnormals included), and then random inputs:
    uniformly random bit patterns of ``dtype`` (every exponent, NaN and Inf included) and
    log-uniform magnitudes of both signs from a quarter of the smallest positive value to four
    times ``max``. Deterministic for a given seed."""
    dt = _dtype_of(dtype)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n=!r}")
    rng = np.random.default_rng(seed)
    all16 = np.arange(1 << 16, dtype=np.uint32)
    fp16 = all16.astype(np.uint16).view(np.float16).astype(np.float32)
    bf16 = (all16 << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        parts = [boundary_points(fmt, dt), fp16.astype(dt), bf16.astype(dt)]
    have = sum(p.size for p in parts)
    rest = max(0, n - have)
    n_bits = rest // 2
    if dt == np.float64:
        bits = rng.integers(0, 2 ** 64, size=n_bits, dtype=np.uint64).view(np.float64)
    elif dt == np.float32:
        bits = rng.integers(0, 2 ** 32, size=n_bits, dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        bits = rng.integers(0, 2 ** 16, size=n_bits, dtype=np.uint32).astype(np.uint16).view(np.float16)
    lo = math.log(max(fmt.smallest_positive / 4, 1e-300))
    hi = math.log(max(abs(fmt.max), abs(fmt.min)) * 4)
    mag = np.exp(rng.uniform(lo, hi, size=rest - n_bits))
    with np.errstate(over="ignore", under="ignore"):
        logu = (mag * rng.choice([-1.0, 1.0], size=mag.size)).astype(dt)
    out = np.concatenate(parts + [bits, logu])
    rng.shuffle(out)
    return out
