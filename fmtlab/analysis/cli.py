"""`fmtlab report`: the main job (see fmtlab.analysis.report)."""

from __future__ import annotations

import argparse

from fmtlab.analysis.defaults import REPORT_CONFIGS, REPORT_PPL_CONFIGS
from fmtlab.analysis.methods.section import parse_methods, register_cli
from fmtlab.errors import FmtlabError
from fmtlab.models.loading import EMBEDDED_MODELS


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="record, replay, price and plot: a format-evaluation report",
        description="From a model and text to a report folder (report.md, report.html, CSV/JSON tables, PNG "
                    "plots). With no arguments: the embedded SmolLM2-135M model and the shipped Wikipedia text.")
    p.add_argument("--out", default="fmtlab-report", help="output folder (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help=f"embedded model name ({', '.join(EMBEDDED_MODELS)}) or a local checkpoint directory / "
                        ".gguf file; an encoder (minilm, mpnet) is scored by sentence-embedding agreement "
                        "instead of perplexity")
    p.add_argument("--configs", type=_csv, default=REPORT_CONFIGS,
                   help="comma-separated replay configs: presets (see `fmtlab replay --list`) or "
                        "'name:w=SPEC;a=SPEC;t=TRANSFORM'; a suffix '+cushion' / '+fptquant' (options: "
                        "'+fptquant(steps=50)') measures the config behind that model variant (default: %(default)s)")
    p.add_argument("--seq-lens", type=_ints, default=(128,), help="calibration sequence lengths (default: 128)")
    p.add_argument("--sequences", type=int, default=4, help="calibration sequences per length (default: 4)")
    p.add_argument("--layers", default=None, help="regular expression selecting Linear layers by name")
    p.add_argument("--trace", default=None, help="reuse this (evaluation) trace instead of recording")
    p.add_argument("--calib-trace", default=None,
                   help="calibration trace for static scales and fitted transforms (default: record one "
                        "from the calibration texts)")
    p.add_argument("--no-perplexity", action="store_true", help="skip the end-to-end perplexity check")
    p.add_argument("--ppl-configs", type=_csv, default=REPORT_PPL_CONFIGS,
                   help="configs whose perplexity is measured (default: %(default)s)")
    p.add_argument("--ppl-seq-len", type=int, default=256, help="perplexity sequence length (default: 256)")
    p.add_argument("--ppl-sequences", type=int, default=8, help="perplexity sequences (default: 8)")
    p.add_argument("--area-budget", default="int8 x int8",
                   help="MAC unit whose area bounds the 'best config' finding (default: '%(default)s')")
    p.add_argument("--max-tokens", type=int, default=None, help="replay only the first N token rows")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of trace shards")
    p.add_argument("--methods", default="none",
                   help="'Methods from the papers' claims to run: all, none or comma-separated keys "
                        "(`fmtlab methods --list`; default: none)")
    p.add_argument("--workers", type=int, default=None,
                   help="replay threads; with --scheduler local: Dask worker processes (default 2)")
    p.add_argument("--scheduler", default=None,
                   help="run replay on Dask: 'local' (a LocalCluster) or a running cluster's address")
    p.add_argument("--explore", default=None, metavar="SPACE",
                   help="add a design-space exploration section (space TOML, or 'example')")
    p.add_argument("--explore-trials", type=int, default=32, help="trials of --explore (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run)

    register_cli(subparsers)


def _run(args) -> int:
    # lazy: the report pulls in numba (replay, the datapath); `fmtlab --help` imports this module
    from fmtlab.analysis.report import ReportOptions, run_report
    from fmtlab.models.record import compile_layers

    if args.layers:
        compile_layers(args.layers, "--layers")
    if args.sequences < 1 or args.ppl_sequences < 1 or args.ppl_seq_len < 2:
        raise FmtlabError("--sequences, --ppl-sequences must be >= 1 and --ppl-seq-len >= 2")
    opts = ReportOptions(out=args.out, model=args.model, configs=args.configs, seq_lens=args.seq_lens,
                         n_sequences=args.sequences, layers=args.layers, trace=args.trace, calib_trace=args.calib_trace,
                         perplexity=not args.no_perplexity, ppl_configs=args.ppl_configs,
                         ppl_seq_len=args.ppl_seq_len, ppl_sequences=args.ppl_sequences,
                         area_budget=args.area_budget, max_tokens=args.max_tokens, progress=not args.quiet,
                         verify=not args.no_verify, methods=parse_methods(args.methods), workers=args.workers,
                         scheduler=args.scheduler, explore=args.explore, explore_trials=args.explore_trials)
    summary = run_report(opts)
    print(f"report: {summary['report_html']}  (markdown: {summary['report_md']})")
    print("findings:")
    for i, f in enumerate(summary["findings"][:3], 1):
        print(f"  {i}. {f.replace('**', '')}")
    return 0
