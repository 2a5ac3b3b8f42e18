"""``fmtlab vectors NAME --out DIR [--rounding MODE] [--seed S] [--n N] [--scale-rule RULE]``: golden conformance vectors.

NAME is any format (``fp8_e4m3``, ``binary8p3se``, ``e3m4_ieee``) or quantizer (``mxfp4``,
``nvfp4``); see :mod:`fmtlab.formats.vectors` for what the files hold. Bad input (an unknown
name, a rounding mode that does not exist, a negative seed) is one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from fmtlab.formats.rounding import Rounding
from fmtlab.formats.vectors import write_vectors


def cmd_vectors(args: argparse.Namespace) -> int:
    paths = write_vectors(args.name, args.out, Rounding.parse(args.rounding), args.seed, args.n,
                          args.scale_rule)
    for p in paths:
        sys.stdout.write(f"{p}\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fmtlab vectors`` to the fmtlab command."""
    p = subparsers.add_parser(
        "vectors", help="write golden conformance vectors (CSV, JSON, $readmemh hex) of a format",
        description="Write conformance vectors of a format or block quantizer into DIR: decode of "
        "every code, encode of every value, every rounding boundary and its float32 neighbours, the "
        "overflow/underflow thresholds, specials and N seeded random inputs; block quantizers add "
        "whole blocks with their scale codes (blocks on both sides of every scale-code boundary).")
    p.add_argument("name", metavar="NAME", help="a format (fp8_e4m3, binary8p3se, ...) or quantizer "
                   "(mxfp4, nvfp4, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--rounding", default="nearest_even",
                   choices=[r.value for r in Rounding], help="rounding mode (default nearest_even)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--n", type=int, default=1000, help="number of random inputs (default 1000)")
    p.add_argument("--scale-rule", default=None, metavar="RULE",
                   help="override a block quantizer's scale rule (four_over_six, neuron, ceil, ...); "
                   "files are then named NAME_<rule>.*")
    p.set_defaults(func=cmd_vectors)
