"""Parameter tuples and constants of the fast element kernels (no numba: importable for free).

The numba modules (``_mf_cores``, ``_int_table_cores``, ``_kernel_dispatch``, ``_layout_kernels``,
``_block_kernels``; facade ``_fast_kernels``) read these; ``kernel_plans`` fills them per format.
A parameter tuple's *type* selects the family's rounding cores at numba compile time.
"""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple

__all__ = ["NEAREST_EVEN", "NEAREST_AWAY", "TOWARD_ZERO", "STOCHASTIC", "ABS32", "INF32", "ABS64",
           "INF64", "MAN64", "MAN32", "CHUNK", "SPEC", "MF", "MFX", "MF1", "IN", "TB", "TBD", "SMALL",
           "TBS", "TBS32", "TBD32", "TBL", "FLOOR", "CEIL", "EVEN", "RCEIL", "CORE_MODULES",
           "core_digest", "check_core_digest"]

NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = 0, 1, 2, 3  # = rounding.ROUNDING_ID

ABS32 = 0x7FFFFFFF
INF32 = 0x7F800000
ABS64 = 0x7FFFFFFFFFFFFFFF
INF64 = 0x7FF0000000000000
MAN64 = 0x000FFFFFFFFFFFFF
MAN32 = 0x007FFFFF
CHUNK = 8192  # elements per parallel task in row layouts

# Parameter tuples hold scalars only (a tuple holding arrays costs reference counting on every
# element and stops vectorization); tables travel as the separate arrays T (family table, 2-D
# float64) and V (the value of every code, float64). SPEC = the table kernel's specials, as fields:
# codes of NaN input, Inf input, overflow, saturation, zero and negative zero (-1 where none; see
# base.Format.special_codes); the *_n fields are for negative inputs.
SPEC = ["nan_p", "nan_n", "inf_p", "inf_n", "ovf_p", "ovf_n", "sat_p", "sat_n", "zero", "nzero"]
MF = namedtuple("MF", [
    "mode", "m", "emin32", "emin64", "ftz", "maxmag", "signbit", "sub32", "sub64", "subthr", *SPEC,
    "ovf32_pos", "ovf32_neg", "inf32_pos", "inf32_neg", "nan32_pos", "nan32_neg", "negzero",
    "nan_raise"])
MF.__doc__ = """Minifloat parameters. emin32/emin64: biased float32/float64 exponent of min_normal;
maxmag: largest finite magnitude code; sub32/sub64: 2**(emin - m) (value of subnormal code 1);
subthr: codes below it take the subnormal product (1 << m; 0 when emin32 = 1, where the normal
pattern formula also gives float32's subnormal patterns and sub32 would be a slow subnormal operand);
*32_pos/neg: float32 patterns of the overflow (for this mode), Inf-input and NaN-input results."""
MFX = namedtuple("MFX", MF._fields)
MFX.__doc__ = """Minifloats whose float32 fast path does not apply (min_normal below 2**-126 or max
at or above 2**128): float32 inputs go through the float64 core."""
MF1 = namedtuple("MF1", MF._fields)
MF1.__doc__ = """Minifloats with float32's exponent range (emin32 = 1, e.g. bf16): the target's
subnormals sit on float32's own subnormal grid, so one rounding of the float32 pattern at bit
23 - m serves every finite input (``mf1_fq32``)."""
IN = namedtuple("IN", ["mode", "lo32", "hi32", "lo64", "hi64", "mask", *SPEC, "nan32", "nan64",
                       "nan_raise"])
IN.__doc__ = """INT parameters: lo/hi = most negative / largest value; mask = 2**bits - 1;
nan32/nan64 = value of the NaN-input code (0.0 with nan='zero', NaN while raising)."""
TB = namedtuple("TB", ["mode", "kind", "K", "ndenorm", "inv_log2b", "kmax", "signbit", "negzero",
                       *SPEC, "nan64", "nan_raise"])
TB.__doc__ = """Sign-symmetric table parameters; the table T is [4, K+2]: T[0] = mags, ascending
magnitudes (mags[0] = 0, mags[K] = max, mags[K+1] = the virtual value above); T[1][j] = ub[j],
the format's float64 rounding boundary between mags[j] and mags[j+1] (+inf at K+1); T[2][j] = tie
flag (1.0 = even); T[3][j] = lb[j] = ub[j-1] (-inf at 0). kind 0 = dINT (ndenorm levels below 1,
then 1, 2, ...), 1 = log (mags[j] = b**-(kmax+1-j))."""
TBD = namedtuple("TBD", TB._fields + ("th0", "th1", "th2", "v1", "v2", "strict", "vmax"))
TBD.__doc__ = """dINT with at most 2 denormal levels (float32 fast path). th_i: the threshold a must
pass to reach level i+1 (rounding bounds for RNE/RNA, the levels themselves for TZ; +inf where
unused; th_ndenorm is the threshold into 1.0); strict: '>' (RNE: ties below 1 go down) or '>='.
v1, v2: the denormal levels; vmax: the largest integer level."""
SMALL = 8  # thresholds of the small-table path (formats with K + 1 <= 8: log2..log4, dint4)
TBS = namedtuple("TBS", TB._fields + tuple(f"{c}{i}" for i in range(SMALL) for c in "tul"))
TBS.__doc__ = """Sign-symmetric table with at most 8 rounding thresholds (float32 fast path without
gathers). Step i: a passes threshold t_i (a > t_i, or a == t_i when u_i) -> the value l_i.
Nearest modes: t_i = ub[i] and u_i = 'a tie at ub[i] goes up'; TOWARD_ZERO: t_i = mags[i+1],
u_i = 1. l_i = mags[i+1], except that the virtual level above max is max itself (saturation);
unused steps have t_i = +inf."""
TBS32 = namedtuple("TBS32", TB._fields + tuple(f"{c}{i}" for i in range(SMALL) for c in "tul")
                   + ("nan32",))
TBS32.__doc__ = """TBS whose levels are float32 numbers: the whole path runs in float32. A threshold t
that float32 cannot hold becomes the largest float32 below it with a strict test (for a float32
a: a > t <=> a > down32(t), and a == t cannot happen)."""
TBD32 = namedtuple("TBD32", TB._fields + ("th0", "th1", "th2", "u0", "u1", "u2", "v1", "v2",
                                          "vmax", "nan32"))
TBD32.__doc__ = """TBD in float32 (levels float32 numbers; thresholds as in TBS32, u_i: '>=' test)."""
TBL = namedtuple("TBL", TB._fields + ("off",))
TBL.__doc__ = """log-base-b whose estimate is within one index (float32 fast path); off: 1.5 for
nearest modes (log-domain nearest index), 1.0 for TOWARD_ZERO (floor index)."""

FLOOR, CEIL, EVEN, RCEIL = 0, 1, 2, 3  # shared-exponent rules (mx.py documents them)

# Modules whose code the cached (cache=True) kernels compile in. numba's cache only checks the
# file that defines a cached kernel, so each such file records the digest of these sources and
# refuses to load when they changed (``check_core_digest``): edit a core, then update the digest.
CORE_MODULES = ("_fast_bits", "_kernel_params", "_mf_cores", "_int_table_cores", "_kernel_dispatch")


def core_digest() -> str:
    """sha256 (first 16 hex digits) of the sources of CORE_MODULES, in that order."""
    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in CORE_MODULES:
        with open(os.path.join(here, name + ".py"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def check_core_digest(recorded: str, module: str) -> None:
    """Raise ImportError if the core sources changed since ``module`` recorded their digest (its
    numba cache could then hold machine code built from the old cores)."""
    now = core_digest()
    if now != recorded:
        raise ImportError(f"the numba kernel cores changed (digest {now}, {module} records "
                          f"{recorded}): set CORE_DIGEST = \"{now}\" in fmtlab/formats/{module} so "
                          "that its cached kernels recompile")
