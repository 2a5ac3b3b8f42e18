"""``fmtlab explore``: search a design space for the Pareto front of accuracy against MAC cost."""

from __future__ import annotations

from fmtlab.explore.defaults import COST_CHOICES, DEFAULT_LAYERS

__all__ = ["register", "cmd_explore"]


def cmd_explore(args) -> int:
    from fmtlab.explore.run import run_explore  # lazy: replay (numba) stays out of `fmtlab --help`

    s = run_explore(args.space, args.out, trace=args.trace, calib=args.calib, trials=args.trials,
                    workers=args.workers, scheduler=args.scheduler, method=args.method, seed=args.seed,
                    population=args.population, batch=args.batch, layers=args.layers,
                    max_tokens=args.max_tokens, seq_len=args.seq_len, n_sequences=args.sequences,
                    quiet=args.quiet, report_first=not args.no_report_configs, perplexity=args.perplexity,
                    cost=args.cost)
    print(f"explore: {s['measured']} points measured ({s['configs_replayed_this_run']} replayed this run), "
          f"front of {s['front_size']} in {s['seconds']:.0f} s -> {s['paths']['pareto.csv']}")
    print(f"{'accuracy':>10} {'cost':>10}  config")
    for f in s["front"]:
        print(f"{f['accuracy']:>10.2f} {f['cost']:>10.4g}  {f['config']}"
              + (f"   [report: {f['report_config']}]" if f.get("report_config") else ""))
    for r in s.get("perplexity", []):
        print(f"  ppl {r['ppl']:>9.3f}  {r['config']}")
    if s["comparison_lines"]:
        print("report Pareto configs:")
        for line in s["comparison_lines"]:
            print("  " + line)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explore", help="search a format design space for the Pareto front of accuracy against MAC cost",
        description="Replay a trace through the points of a design space (TOML; see fmtlab/explore/space.py "
                    "and the shipped example) and keep the Pareto front of replay accuracy against MAC cost. "
                    "Resumable: rerun the same command after an interrupt.")
    p.add_argument("--space", default="example", help="space TOML file, or 'example' (the shipped one)")
    p.add_argument("--trace", help="evaluation trace (default: record a small one from the embedded model)")
    p.add_argument("--calib", help="calibration trace for static scales / fitted transforms")
    p.add_argument("--trials", type=int, default=64, help="points to measure (default 64)")
    p.add_argument("--workers", type=int, default=2,
                   help="LocalCluster worker processes (default 2; 1 = in this process, no Dask)")
    p.add_argument("--scheduler", help="address (tcp://host:8786) or scheduler file of a running Dask cluster")
    p.add_argument("--method", default="auto", choices=("auto", "exhaustive", "nsga2", "tpe"),
                   help="auto: exhaustive if the space has <= --trials replay configs, else nsga2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--population", type=int, default=16, help="NSGA-II population = trials per batch (default 16)")
    p.add_argument("--batch", type=int, default=8, help="configs per unit of work (default 8)")
    p.add_argument("--layers", help="regular expression selecting Linear layers by name (without --trace: "
                   f"the layers recorded; default {DEFAULT_LAYERS!r}, six of SmolLM2's 30 blocks; '' = all)")
    p.add_argument("--max-tokens", type=int, help="replay only the first N token rows")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per recorded sequence (default 64)")
    p.add_argument("--sequences", type=int, default=2, help="recorded sequences per split (default 2)")
    p.add_argument("--perplexity", type=int, default=0, metavar="N",
                   help="also measure perplexity of the front's configs on N held-out sequences of 128 tokens "
                        "(front_ppl.csv; default 0 = off)")
    p.add_argument("--no-report-configs", action="store_true",
                   help="do not measure the report's configs first (by default they are the first trials)")
    p.add_argument("--cost", choices=tuple(COST_CHOICES),
                   help="cost objective (overrides the space's): MAC area / energy per MAC, stored bits, or "
                        "energy_per_token[_b64] (uJ per decoded token of the trace's model at batch 1 / 64, "
                        "fmtlab.hw.inference_cost)")
    p.add_argument("--out", default="out/explore", help="output folder (default out/explore)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_explore)
