"""The ``fmtlab explore`` job: record the traces when none is given, search the space, write the
outputs, and optionally measure the front's perplexity (see :mod:`fmtlab.explore.search`)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.explore.defaults import COST_CHOICES, DEFAULT_LAYERS
from fmtlab.explore.results import comparison_lines, front_perplexity, write_outputs
from fmtlab.explore.search import Evaluator, search
from fmtlab.explore.space import load_space
from fmtlab.models.loading import load_default_model, load_model
from fmtlab.models.record import record
from fmtlab.safe_io import atomic_write_text, locked_dir
from fmtlab.sim.data import default_texts
from fmtlab.sim.executor import make_executor
from fmtlab.sim.replay import rows_to_csv
from fmtlab.sim.trace import annotate_trace, open_trace
from fmtlab.sim.transforms import get_transform

__all__ = ["run_explore", "record_default_traces"]


def _log(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(f"[explore] {msg}", file=sys.stderr, flush=True)
    return log


def record_default_traces(out: str, seq_len: int, n_sequences: int, layers: str | None, log) -> tuple[str, str]:
    """(eval trace, calib trace) of the embedded model under ``out``/traces, recorded if missing
    (reused when the manifest matches seq_len and n_sequences)."""
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
    annotate_trace(path, {"explore_layers": layers})  # re-signs the manifest (its digest)


def _needs_calib(space) -> str | None:
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
    import torch  # lazy: torch, only with --perplexity

    n = sum(1 for _, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    return len(open_trace(calib, verify=False).layers) >= n - 1  # the output head is not recorded


def _record_full_calib(model, tok, calib: str, path: str, log) -> str:
    """A calibration trace of every Linear layer, same texts and shape as ``calib`` (for perplexity)."""
    m = open_trace(calib, verify=False).manifest
    log(f"recording a calibration trace of every layer for perplexity -> {path}")
    record(model, tok, default_texts("calib"), out=path, seq_len=m["seq_len"], n_sequences=m["n_sequences"],
           residual=False, overwrite=True, progress=False, text_info={"source": "wiki", "split": "calib"})
    return path
