"""Format registry: names parse both ways (``get_format(str(fmt)) == fmt``).

Grammar (case-insensitive):
  int{2..16} | int{n}_sym | uint{n}              two's complement / narrow / unsigned
  dint{n}[_d{level}_{level}...][_nz]             dINT with denormal levels (default 0.5)
  log{n}[_b{base}][_lin][_u{threshold}][_nz]     log-base-b (default base 2, log-domain rounding)
  e{E}m{M}_{rule}[_b{bias}][_ftz]                any minifloat; rule: ieee|fn|fnuz|fin or any
                                                 name registered with register_special_rule
  binary{K}p{P}{s|u}{e|f}, p3109_k{K}p{P}{s|u}{e|f}  IEEE P3109 (p3109.py)
  named: fp8_e4m3, fp8_e5m2, fp8_e4m3fnuz, fp8_e5m2fnuz, fp6_e3m2, fp6_e2m3, fp4_e2m1, e8m0,
         fp16, bf16 (aliases: fp8_e4m3fn, e4m3, e5m2, float16, bfloat16, mxfp4_e2m1 ...)
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.dint import DInt
from fmtlab.formats.e8m0 import E8M0
from fmtlab.formats.hifloat8 import HiFloat8
from fmtlab.formats.integer import IntFormat
from fmtlab.formats.logfmt import LogFormat
from fmtlab.formats.lookup import IQ4NL_VALUES, NF4_VALUES, LookupFormat
from fmtlab.formats.minifloat import MiniFloat
from fmtlab.formats.names import Grammar
from fmtlab.formats.p3109 import BINARY8_NAMES as P3109_NAMES
from fmtlab.formats.p3109 import NAME_RE as _P3109_RE
from fmtlab.formats.p3109 import parse_name as _p3109
from fmtlab.formats.special import get_special_rule, on_rules_changed, special_rule_names

_NAMED: dict[str, Callable[[], Format]] = {
    # OCP 8-bit Floating Point Specification (OFP8) v1.0: E4M3 (bias 7, no Inf, NaN S.1111.111,
    # max 448) and E5M2 (IEEE-like, bias 15, max 57344).
    "fp8_e4m3": lambda: MiniFloat(4, 3, special="fn", label="fp8_e4m3"),
    "fp8_e5m2": lambda: MiniFloat(5, 2, special="ieee", label="fp8_e5m2"),
    # Graphcore/AMD "fnuz": bias + 1, no Inf, no -0, 0x80 is NaN (max 240 and 57344).
    "fp8_e4m3fnuz": lambda: MiniFloat(4, 3, special="fnuz", label="fp8_e4m3fnuz"),
    "fp8_e5m2fnuz": lambda: MiniFloat(5, 2, special="fnuz", label="fp8_e5m2fnuz"),
    # OCP Microscaling v1.0 element formats: all codes finite (max 28, 7.5, 6).
    "fp6_e3m2": lambda: MiniFloat(3, 2, special="fin", label="fp6_e3m2"),
    "fp6_e2m3": lambda: MiniFloat(2, 3, special="fin", label="fp6_e2m3"),
    "fp4_e2m1": lambda: MiniFloat(2, 1, special="fin", label="fp4_e2m1"),
    # E1M2 (the second element of MixFP4, arXiv 2605.31035), as en_dtypes' float4_e1m2: one
    # exponent bit, bias 1, all codes finite: +/-{0, 0.25, 0.5, ..., 1.75}.
    "fp4_e1m2": lambda: MiniFloat(1, 2, bias=1, special="fin", label="fp4_e1m2"),
    # Ascend HiFloat8 (arXiv 2409.16626; hifloat8.py)
    "hifloat8": HiFloat8,
    "e8m0": E8M0,
    # IEEE 754 binary16 and bfloat16.
    "fp16": lambda: MiniFloat(5, 10, special="ieee", label="fp16"),
    "bf16": lambda: MiniFloat(8, 7, special="ieee", label="bf16"),
    "dint4": lambda: DInt(4),
    "dint8": lambda: DInt(8),
    # lookup formats (sources in lookup.py): QLoRA NormalFloat4, ggml IQ4_NL
    "nf4": lambda: LookupFormat(NF4_VALUES, name="nf4"),
    "iq4nl": lambda: LookupFormat(IQ4NL_VALUES, name="iq4nl"),
}

_ALIASES = {
    "fp8_e4m3fn": "fp8_e4m3", "e4m3": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "float8_e4m3fnuz": "fp8_e4m3fnuz", "float8_e5m2fnuz": "fp8_e5m2fnuz",
    "fp6_e3m2fn": "fp6_e3m2", "fp6_e2m3fn": "fp6_e2m3", "fp4_e2m1fn": "fp4_e2m1",
    "fp4": "fp4_e2m1", "e2m1": "fp4_e2m1", "e1m2": "fp4_e1m2", "hif8": "hifloat8", "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16", "e8m0fnu": "e8m0", "float8_e8m0fnu": "e8m0",
}

_FLOAT = r"([0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)"
_INT_RE = re.compile(r"(u?)int(\d+)(_sym)?")
_DINT_RE = re.compile(r"dint(\d+)((?:_d(?:" + _FLOAT + r"(?:_" + _FLOAT + r")*)?)?)(_nz)?")
_LOG_RE = re.compile(r"log(\d+)(?:_b" + _FLOAT + r")?(_lin)?(?:_u" + _FLOAT + r")?(_nz)?")
_MF_RE = re.compile(r"e(\d+)m(\d+)_([a-z][a-z0-9]*?)(?:_b(-?\d+))?(_ftz)?")

#: the formats `list_formats()` shows (generic families accept many more names)
STANDARD_NAMES = (
    "int2", "int3", "int4", "int8", "int16", "uint4", "uint8", "int4_sym", "int8_sym",
    "dint4", "dint8", "log4", "log4_b1.4142135623730951", "log8",
    "fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1",
    "fp4_e1m2", "hifloat8", "e8m0", "fp16", "bf16", "nf4", "iq4nl",
) + P3109_NAMES

#: formats registered with register_format (name -> format)
_USER: dict[str, Format] = {}


def get_format(name: "str | Format") -> Format:
    """The format called ``name`` (see the module docstring for the grammar).

    A Format passes through unchanged. Raises FormatError naming the problem for an unknown name.
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise TypeError(f"format name must be a str or Format, got {type(name).__name__}")
    key = name.strip().lower()
    user = _USER.get(key)
    return user if user is not None else _parse(key)


def register_format(fmt: Format, *, replace: bool = False) -> Format:
    """Make ``fmt`` known by its name: afterwards ``get_format(fmt.name)`` returns it, so
    quantizer specs ("<name>_g32"), replay configs, ``fmtlab.pytorch.fake_quantize(x, "<name>")``
    and ``fmtlab.hw.mac_cost("<name>", ...)`` resolve it. A name that is already a format
    (built-in, parsed, or registered) raises FormatError unless ``replace=True`` (built-in and
    grammar names can never be replaced). Returns ``fmt``."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format takes a Format, got {type(fmt).__name__}")
    key = fmt.name.strip().lower()
    if key != fmt.name:
        raise FormatError(f"format names are lowercase without spaces; got {fmt.name!r}")
    try:
        builtin = _parse(key)
    except FormatError:
        builtin = None
    if builtin is not None:
        raise FormatError(f"{key!r} is already a built-in format name ({builtin.describe()}); "
                          "pick another name")
    old = _USER.get(key)
    if old is not None and old != fmt and not replace:
        raise FormatError(f"a different format named {key!r} is already registered (pass replace=True)")
    _USER[key] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Forget a format registered with register_format (unknown names are ignored)."""
    _USER.pop(str(name).strip().lower(), None)


def registered_formats() -> list[str]:
    """Names of the formats registered with register_format, in registration order."""
    return list(_USER)


def _int(m: re.Match, name: str) -> Format:
    unsigned, bits, sym = m.group(1) == "u", int(m.group(2)), bool(m.group(3))
    if unsigned and sym:
        raise FormatError(f"{name!r}: unsigned INT formats have no _sym variant")
    return IntFormat(bits, unsigned=unsigned, narrow=sym)


def _dint(m: re.Match, name: str) -> Format:
    levels = (0.5,)
    if m.group(2):
        body = m.group(2)[2:]  # "_d" alone: no denormal levels
        levels = tuple(float(v) for v in body.split("_")) if body else ()
    return DInt(int(m.group(1)), denormals=levels, negative_zero=bool(m.group(5)))


def _log(m: re.Match, name: str) -> Format:
    base = float(m.group(2)) if m.group(2) else 2.0
    under = float(m.group(4)) if m.group(4) else None
    return LogFormat(int(m.group(1)), base=base, domain="linear" if m.group(3) else "log",
                     underflow=under, negative_zero=bool(m.group(5)))


def _minifloat(m: re.Match, name: str) -> Format:
    try:
        special = get_special_rule(m.group(3))
    except FormatError as exc:
        raise FormatError(f"unknown format {name!r}: {exc}") from None
    bias = int(m.group(4)) if m.group(4) is not None else None
    return MiniFloat(int(m.group(1)), int(m.group(2)), bias=bias, special=special,
                     subnormals=not m.group(5))


GRAMMAR: Grammar[Format] = Grammar("format", FormatError)
for _n, _f in _NAMED.items():
    GRAMMAR.exact(_n, _f)
for _a, _t in _ALIASES.items():
    GRAMMAR.alias(_a, _t)
GRAMMAR.kind("int", _INT_RE, "the families intN, uintN, intN_sym", _int)
GRAMMAR.kind("dint", _DINT_RE, "dintN", _dint)
GRAMMAR.kind("log", _LOG_RE, "logN_bBASE", _log)
GRAMMAR.kind("p3109", _P3109_RE, "binaryKpP{s|u}{e|f} (IEEE P3109)", _p3109)
GRAMMAR.kind("minifloat", _MF_RE, lambda: f"eEmM_{'|'.join(special_rule_names())}", _minifloat)


@functools.lru_cache(maxsize=512)
def _parse(key: str) -> Format:
    """Formats are immutable values, so one instance per name is shared (its tables are built once)."""
    return GRAMMAR.resolve(key, known=STANDARD_NAMES)


on_rules_changed(_parse.cache_clear)


def builtin_name(fmt: "str | Format") -> str:
    """The built-in name of a format equal to ``fmt`` (``e4m3_fn`` -> ``fp8_e4m3``, ``e5m10_ieee``
    -> ``fp16``), else the format's own name. Equality is the formats' value equality (labels
    aside)."""
    f = get_format(fmt)
    for name in _NAMED:
        g = _parse(name)
        if type(g) is type(f) and g == f:
            return name
    return f.name


def list_formats() -> list[str]:
    """Names of the standard formats (each parses with get_format)."""
    return list(STANDARD_NAMES)
