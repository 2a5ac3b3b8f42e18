"""``fmtlab explore``: search a design space for the Pareto front of accuracy against MAC cost."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from fmtlab.errors import FmtlabError

#: --cost choices -> the space's cost objective column
COST_CHOICES = {"area_um2": "area_um2", "area_ge": "area_ge", "energy_pj": "energy_pj", "bits": "bits",
                "energy_per_token": "energy_per_token_uj", "energy_per_token_b64": "energy_per_token_b64_uj"}

__all__ = ["register", "run_explore", "record_default_traces", "DEFAULT_LAYERS"]

#: Linear layers of the embedded SmolLM2 (30 blocks) recorded when --trace is omitted: six blocks,
#: evenly spaced. Replay time is dominated by quantizing weights, so the layer count sets the run
#: time; --layers '' records all 210 layers (about 5x longer per config).
DEFAULT_LAYERS = r"\.layers\.(0|6|12|18|24|29)\."


def _log(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(f"[explore] {msg}", file=sys.stderr, flush=True)
    return log


def record_default_traces(out: str, seq_len: int, n_sequences: int, layers: str | None, log) -> tuple[str, str]:
    """(eval trace, calib trace) of the embedded model under ``out``/traces, recorded if missing
    (reused when the manifest matches seq_len and n_sequences)."""
    from fmtlab.models.loading import load_default_model
    from fmtlab.models.record import record
    from fmtlab.sim.data import default_texts
    from fmtlab.sim.trace import open_trace

    paths = {s: os.path.join(out, "traces", s) for s in ("eval", "calib")}
    model = tok = None
    for split, path in paths.items():
        try:
            m = open_trace(path, verify=False).manifest
            if m.get("seq_len") == seq_len and m.get("n_sequences") == n_sequences \
                    and (m.get("text") or {}).get("split") == split and m.get("explore_layers") == layers:
                log(f"reusing {split} trace {path}")
                continue
        except Exception:  # noqa: BLE001 - missing or foreign: record it
            pass
        if model is None:
            log("loading the embedded model (first load converts and caches it)")
            model, tok = load_default_model("smollm2")
        log(f"recording {n_sequences} x {seq_len} tokens of the {split} texts -> {path}")
        record(model, tok, default_texts(split), out=path, seq_len=seq_len, n_sequences=n_sequences,
               layers=layers, residual=False, overwrite=True, progress=False,
               text_info={"source": "wiki", "split": split})
        _stamp(path, layers)
    return paths["eval"], paths["calib"]


def _stamp(path: str, layers: str | None) -> None:
    from fmtlab.sim.trace import annotate_trace

    annotate_trace(path, {"explore_layers": layers})


def _needs_calib(space) -> str | None:
    from fmtlab.sim.transforms import get_transform

    if any(c != "dynamic" for c in space.act_calib):
        return "static activation scales (act_calib)"
    for t in space.transforms:
        if t != "none" and get_transform(t).fits_data:
            return f"the fitted transform {t}"
    return None


def run_explore(space_path: str, out: str, *, trace: str | None = None, calib: str | None = None,
                trials: int = 64, workers: int | None = 2, scheduler: str | None = None, method: str = "auto",
                seed: int = 0, population: int = 16, batch: int = 8, layers: str | None = None,
                max_tokens: int | None = None, seq_len: int = 64, n_sequences: int = 2,
                quiet: bool = False, processes: bool = True, report_first: bool = True,
                perplexity: int = 0, cost: str | None = None) -> dict[str, Any]:
    """The whole job (see the module doc of :mod:`fmtlab.explore.search`); returns the summary."""
    from fmtlab.sim.executor import make_executor
    from fmtlab.explore.results import comparison_lines, write_outputs
    from fmtlab.explore.search import Evaluator, search
    from fmtlab.explore.space import load_space
    from fmtlab.safe_io import locked_dir

    log = _log(quiet)
    space = load_space(space_path)
    if cost is not None:
        space = dataclasses.replace(space, objectives=(space.objectives[0], COST_CHOICES[cost]))
    if trials < 1:
        raise FmtlabError(f"--trials must be >= 1, got {trials}")
    if trace is None and calib is not None:
        raise FmtlabError("--calib needs --trace (without --trace both splits are recorded)")
    need = _needs_calib(space)
    if trace is not None and calib is None and need:
        raise FmtlabError(f"space {space.name!r} uses {need}: give --calib CALIB_TRACE (a trace of the "
                          "calibration texts; scores come from --trace only)")
    for p, what in ((trace, "--trace"), (calib, "--calib")):
        if p is not None and not os.path.isdir(p):
            raise FmtlabError(f"{what} {p} is not a trace directory")
    t0 = time.perf_counter()
    with locked_dir(out):
        if trace is None:
            rec_layers = DEFAULT_LAYERS if layers is None else (layers or None)
            trace, calib = record_default_traces(out, seq_len, n_sequences, rec_layers, log)
            layers = None
        t_rec = time.perf_counter() - t0
        with make_executor(scheduler, workers, processes=processes) as ex:
            log(f"executor: {ex.description}")
            ev = Evaluator(trace, calib, ex, layers=layers, max_tokens=max_tokens, batch=batch,
                           cache_path=os.path.join(out, "metrics.jsonl"), progress=not quiet)
            res = search(space, ev, trials=trials, method=method, seed=seed, out=out, population=population,
                         report_first=report_first, log=log)
        res.info.update(trace=os.path.abspath(trace), calib=calib and os.path.abspath(calib),
                        seconds=round(time.perf_counter() - t0, 1), record_seconds=round(t_rec, 1),
                        configs_replayed_this_run=ev.evaluations)
        summary = write_outputs(res, space, out)
        if perplexity:
            summary["perplexity"] = _front_ppl(summary, trace, calib, perplexity, log, out)
    summary["comparison_lines"] = comparison_lines(summary["report_comparison"])
    return summary


def _front_ppl(summary, trace, calib, n_sequences, log, out) -> list[dict[str, Any]]:
    """Perplexity of the front's configs with the trace's model (front_perplexity); front_ppl.csv."""
    from fmtlab.explore.results import front_perplexity
    from fmtlab.safe_io import atomic_write_text
    from fmtlab.models.loading import load_model
    from fmtlab.sim.replay import rows_to_csv
    from fmtlab.sim.trace import open_trace

    name = (open_trace(trace, verify=False).manifest.get("model") or {}).get("name") or "smollm2"
    log(f"perplexity of {len(summary['front'])} front configs + fp32 ({n_sequences} sequences, model {name})")
    try:
        model, tok = load_model("smollm2" if "smollm2" in name.lower() else name)
    except Exception as exc:  # noqa: BLE001 - the trace's model may not be available here
        raise FmtlabError(f"--perplexity needs the trace's model {name!r}: {exc}") from None
    if calib and not _all_layers(calib, model):  # fitted transforms need every layer's calibration input
        calib = _record_full_calib(model, tok, calib, os.path.join(out, "traces", "calib_all"), log)
    rows = front_perplexity(summary["front"], model, tok, calib=open_trace(calib, verify=False) if calib else None,
                            n_sequences=n_sequences)
    atomic_write_text(os.path.join(out, "front_ppl.csv"), rows_to_csv(rows))
    return rows


def _all_layers(calib: str, model) -> bool:
    import torch

    from fmtlab.sim.trace import open_trace

    n = sum(1 for _, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    return len(open_trace(calib, verify=False).layers) >= n - 1  # the output head is not recorded


def _record_full_calib(model, tok, calib: str, path: str, log) -> str:
    """A calibration trace of every Linear layer, same texts and shape as ``calib`` (for perplexity)."""
    from fmtlab.sim.data import default_texts
    from fmtlab.models.record import record
    from fmtlab.sim.trace import open_trace

    m = open_trace(calib, verify=False).manifest
    log(f"recording a calibration trace of every layer for perplexity -> {path}")
    record(model, tok, default_texts("calib"), out=path, seq_len=m["seq_len"], n_sequences=m["n_sequences"],
           residual=False, overwrite=True, progress=False, text_info={"source": "wiki", "split": "calib"})
    return path


def cmd_explore(args) -> int:
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
