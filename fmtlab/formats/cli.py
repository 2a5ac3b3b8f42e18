"""``fmtlab formats``: list the element formats, or print one format's code table.

    fmtlab formats [list] [NAME ...] [--json]   name, bits, max, smallest positive, Inf/NaN/-0,
                                                default overflow, one-line layout
    fmtlab formats show NAME [--json]           every code in binary and hex with its value

NAME is anything ``get_format`` parses (``fp8_e4m3``, ``e3m4_ieee``, ``log5_b1.5``, ...); an
unknown name is a FormatError, which the dispatcher prints on stderr with exit status 2.
JSON values are numbers where finite, else null, with the exact value in ``value_hex``
(``float.hex``) and a readable ``repr`` ("nan", "inf", "-0.0", ...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any


from fmtlab.formats import Format, get_format, list_formats
from fmtlab.formats.capabilities import Subsystem, get_handler


# ---- what to say about a format -------------------------------------------------------------

def layout(fmt: Format) -> str:
    """One line: the bit layout and the special-value convention (the family's CLI handler)."""
    return get_handler(Subsystem.CLI, fmt, "register a CLI handler (fmt) -> one-line layout "
                       "string in the family's module")(fmt)


def facts(fmt: Format) -> dict[str, Any]:
    """The finfo-like facts of a format as plain JSON-able values."""
    return {
        "name": fmt.name, "family": fmt.family, "bits": fmt.bits,
        "max": fmt.max, "min": fmt.min, "min_normal": fmt.min_normal,
        "smallest_positive": fmt.smallest_subnormal, "eps": fmt.eps,
        "has_inf": fmt.has_inf, "has_nan": fmt.has_nan, "has_negative_zero": fmt.has_negative_zero,
        "signed": fmt.signed, "default_overflow": fmt.default_overflow.value, "layout": layout(fmt),
    }


def binary(fmt: Format, code: int) -> str:
    """The code's bits, with '.' between the format's fields (minifloat: sign, exponent, mantissa)."""
    s = format(code, f"0{fmt.bits}b")
    parts, i = [], 0
    for w in fmt.bit_fields:
        parts.append(s[i:i + w])
        i += w
    return ".".join(parts)


def code_kind(fmt: Format, code: int, value: float) -> str:
    """A short label for notable codes (zero, -0, NaN, Inf, max, subnormal, unused)."""
    if math.isnan(value):
        return "NaN" if code in fmt.nan_codes else "unused"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "+0"
    if code == fmt.max_code():
        return "max"
    if fmt.signed and code == fmt.max_code(negative=True):
        return "min"
    if abs(value) < fmt.min_normal:
        return "subnormal"
    return ""


def _json_value(v: float) -> dict[str, Any]:
    finite = math.isfinite(v)
    return {"value": v if finite else None, "value_hex": float(v).hex() if finite else None, "repr": repr(float(v))}


# ---- commands ----------------------------------------------------------------------------------

def _fmt_num(v: float) -> str:
    return f"{v:.6g}"


def _emit(text: str) -> None:
    """Write to stdout; a closed pipe (``fmtlab formats show fp16 | head``) ends quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush is silent


def cmd_list(args: argparse.Namespace) -> int:
    names = args.names or list_formats()
    fmts = [get_format(n) for n in names]
    if args.json:
        _emit(json.dumps([facts(f) for f in fmts], indent=1) + "\n")
        return 0
    yes = {True: "yes", False: "no"}
    rows = [("name", "bits", "max", "min>0", "Inf", "NaN", "-0", "overflow", "layout")]
    for f in fmts:
        rows.append((f.name, str(f.bits), _fmt_num(f.max), _fmt_num(f.smallest_subnormal), yes[f.has_inf],
                     yes[f.has_nan], yes[f.has_negative_zero], f.default_overflow.value, layout(f)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    _emit("".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] + "\n" for r in rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    fmt = get_format(args.name)
    values = fmt.values().tolist()
    hexw = (fmt.bits + 3) // 4
    if args.json:
        codes = [{"code": c, "bin": format(c, f"0{fmt.bits}b"), "hex": f"0x{c:0{hexw}X}",
                  **_json_value(v), "kind": code_kind(fmt, c, v)} for c, v in enumerate(values)]
        _emit(json.dumps({**facts(fmt), "codes": codes}, indent=1) + "\n")
        return 0
    binw = max(len(binary(fmt, 0)), len("binary"))
    out = [fmt.describe(), f"layout: {layout(fmt)}; default overflow: {fmt.default_overflow.value}",
           f"{'code':>6}  {'binary':<{binw}}  {'hex':<{hexw + 2}}  {'value':<24}  kind"]
    for c, v in enumerate(values):
        out.append(f"{c:>6}  {binary(fmt, c):<{binw}}  0x{c:0{hexw}X}  {repr(float(v)):<24}  "
                   f"{code_kind(fmt, c, v)}".rstrip())
    _emit("\n".join(out) + "\n")
    return 0


#: block and tile quantizers that parse through the grammar beside the standard presets: the issue-26
#: integer blocks, scale rules and 2-D tiles (any ``<block>_<R>x<C>`` / ``<format>_b<R>x<C>[_ue8m0]`` parses)
GRAMMAR_EXAMPLES = ("mxint6", "mxint4", "nvint4", "mxfp4_e1m2", "mxfp4_midmax", "mxfp4_neuron", "nvfp4_16x16",
                    "fp8_e4m3_b128x128", "fp8_e4m3_b128x128_ue8m0", "fp8_e4m3_g128")


def cmd_quantizers(args: argparse.Namespace) -> int:
    """The quantizer presets (element format, granularity, scale format and rule), then examples of
    names the grammar parses; ``--json``: name, canonical name and description of each."""
    from fmtlab.formats.presets import get_quantizer, list_quantizers

    names = list(dict.fromkeys(args.names or (list_quantizers() + list(GRAMMAR_EXAMPLES))))
    rows = [(n, get_quantizer(n)) for n in names]
    if args.json:
        _emit(json.dumps([{"name": n, "canonical": str(q), "describe": q.describe()} for n, q in rows], indent=1)
              + "\n")
        return 0
    width = max(len(n) for n, _ in rows)
    _emit("".join(f"{n.ljust(width)}  {q.describe().split(': ', 1)[-1]}\n" for n, q in rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fmtlab formats`` (and its ``list`` / ``show`` subcommands) to the fmtlab command."""
    p = subparsers.add_parser("formats", help="list the element formats or show one format's code table",
                              description="List the element formats (default), or print one format's "
                              "code table with 'show NAME'. NAME is any name get_format parses: "
                              "fp8_e4m3, int4_sym, dint4, log4_b1.5, e3m4_ieee, ...")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list, names=[])
    sub = p.add_subparsers(dest="formats_command", metavar="{list,show,quantizers}")
    pl = sub.add_parser("list", help="name, bits, range and special values of each format (default)")
    pl.add_argument("names", nargs="*", metavar="NAME", help="formats to list (default: the standard set)")
    pl.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    pl.set_defaults(func=cmd_list)
    ps = sub.add_parser("show", help="every code of one format in binary and hex, with its value")
    ps.add_argument("name", metavar="NAME", help="a format name, e.g. fp8_e4m3, int4, log4, e3m4_ieee")
    ps.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    ps.set_defaults(func=cmd_show)
    pq = sub.add_parser("quantizers", help="block, group and per-tensor quantizers by name (MX, NVFP4, MixFP4, "
                        "MXINT, NVINT4, scale rules, 2-D tiles): elements, granularity, scales, rule")
    pq.add_argument("names", nargs="*", metavar="NAME", help="quantizer names (default: presets and grammar examples)")
    pq.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    pq.set_defaults(func=cmd_quantizers)


