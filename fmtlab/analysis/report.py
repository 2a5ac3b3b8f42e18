"""`fmtlab report`: from a model and text to a format-evaluation report with plots.

Pipeline (each step prints its progress on stderr):
1. load the model (default: the embedded SmolLM2-135M, offline) and the texts;
2. record, per sequence length, a calibration trace (the "calib" texts) and an evaluation trace (the
   disjoint "eval" texts), or reuse ones already in the output folder / given;
3. replay every config through the evaluation trace, static scales and fitted transforms fitted on
   the calibration trace (layer errors, underflow, clipping, output SQNR, per-sequence sums);
4. price every config with the MAC-unit cost model (fmtlab.hw);
5. optionally measure perplexity for the end-to-end configs on eval windows (fmtlab.models.perplexity,
   calibrated on the calibration trace);
6. measure accumulation error against accumulator width on a real layer (bit-accurate datapath);
7. write ``report.md``, ``report.html``, CSV/JSON tables and PNG plots into the output folder.

The protocol (fmtlab.analysis.protocol.PROTOCOL) is stated in the report; headline metrics carry
seeded 95% bootstrap intervals over sequences and comparisons a paired-bootstrap interval.

Pricing notes: a config is priced by the MAC unit of its (weight, activation) element formats;
MX block quantizers by the MX block-dot unit; NVFP4 by an MX FP4 unit with block 16 (its E4M3
block-scale multiply is not modelled); per-channel/per-token scale multiplies (once per output,
not per MAC) and transform overheads (e.g. LLM.int8()'s FP16 outlier path) are not priced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmtlab.analysis.defaults import DEFAULT_CONFIGS, DEFAULT_PPL_CONFIGS, GRID_FORMATS  # noqa: F401 - re-exported
from fmtlab.analysis.studies import accumulation_study, hw_operand, price_config  # noqa: F401 - re-exported
from fmtlab.analysis.report_text import build_document, finite, headline_findings, layer_label
from fmtlab.errors import FmtlabError



@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What `fmtlab report` does. Defaults reproduce the README's main job."""

    out: str = "fmtlab-report"
    model: str | None = None  # None: the embedded default; else an embedded name or a local directory
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    seq_lens: tuple[int, ...] = (128,)
    n_sequences: int = 4
    layers: str | None = None  # regular expression over layer names
    trace: str | None = None  # reuse this (evaluation) trace instead of recording (its seq_len is used)
    calib_trace: str | None = None  # calibration trace for static scales / fitted transforms
    perplexity: bool = True
    ppl_configs: tuple[str, ...] = DEFAULT_PPL_CONFIGS
    ppl_seq_len: int = 256
    ppl_sequences: int = 8
    area_budget: str = "int8 x int8"  # "best config under the area of this MAC unit"
    max_tokens: int | None = None
    workers: int | None = None
    scheduler: str | None = None  # Dask: "local" (LocalCluster of `workers` processes) or an address
    explore: str | None = None  # a design-space TOML (or "example"): add an explore section
    explore_trials: int = 32
    progress: bool = True
    verify: bool = True  # check trace shards' SHA-256 on open (--no-verify: False)
    methods: tuple[str, ...] = ()  # claim keys of fmtlab.analysis.methods ("Methods from the papers")

    def __post_init__(self) -> None:
        if not self.configs:
            raise FmtlabError("report needs at least one config")
        if any(int(s) < 2 for s in self.seq_lens) or not self.seq_lens:
            raise FmtlabError(f"sequence lengths must be >= 2, got {self.seq_lens}")
        if self.n_sequences < 1:
            raise FmtlabError(f"n_sequences must be >= 1, got {self.n_sequences}")
        if self.explore:  # a bad space fails before any work
            from fmtlab.explore.space import load_space

            load_space(self.explore)
        if len(self.area_budget.split(" x ")) != 2:
            raise FmtlabError(f"area_budget must read 'WEIGHT x ACTIVATION', got {self.area_budget!r}")
        check_report_options(self)


def check_report_options(opts: "ReportOptions") -> None:
    """The checks of ``opts`` that need other packages, made before any trace is opened or recorded:
    the area budget is a priceable MAC unit, counts are >= 1, the model and traces exist."""
    from fmtlab.hw import mac_cost
    from fmtlab.models.loading import check_model_arg

    bw, ba = (s.strip() for s in opts.area_budget.split(" x "))
    try:
        mac_cost(bw, ba)
    except (FmtlabError, ValueError, KeyError) as exc:
        raise FmtlabError(f"area_budget {opts.area_budget!r} is not a MAC unit the cost model prices: {exc}") from None
    for name in ("max_tokens", "workers", "explore_trials", "ppl_sequences"):
        v = getattr(opts, name)
        if v is not None and v < 1:
            raise FmtlabError(f"{name} must be >= 1, got {v}")
    if opts.model is not None:
        check_model_arg(opts.model)
    for name in ("trace", "calib_trace"):
        p = getattr(opts, name)
        if p is not None and not os.path.isdir(p):
            raise FmtlabError(f"{name} {p} is not a trace directory")


class _Steps:
    """Prints numbered steps with elapsed time on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- helpers

def _reuse_trace(path: Path, model_name: str, seq_len: int, n_sequences: int, layers: str | None,
                 split: str = "eval", verify: bool = True):
    """The trace at ``path`` if it was recorded with these settings (and text split) and is
    intact, else None."""
    from fmtlab.sim.trace import open_trace

    if not (path / "manifest.json").exists():
        return None
    try:
        tr = open_trace(str(path), verify=verify)
    except Exception:  # noqa: BLE001 - a broken trace is re-recorded
        return None
    m = tr.manifest
    want = {"model": model_name, "seq_len": seq_len, "n_sequences": n_sequences, "layers": layers, "split": split}
    got = {"model": (m.get("model") or {}).get("name"), "seq_len": m.get("seq_len"),
           "n_sequences": m.get("n_sequences"), "layers": (m.get("report") or {}).get("layers"),
           "split": (m.get("text") or {}).get("split")}
    return tr if got == want else None


# -------------------------------------------------------------------------------------- main

def run_report(opts: ReportOptions) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary dict (paths, headline findings, timings).

    The output folder is locked for the run (a second run on it fails at once); tables, plots and
    report.md/html are built in a staging folder and moved into place together at the end, so an
    interrupted or failed run leaves the previous report intact. Traces go to ``<out>/traces``.
    """
    from fmtlab.safe_io import staged_dir

    with staged_dir(opts.out, quiet=not opts.progress) as stage:
        return _run_report(opts, stage)


def _run_report(opts: ReportOptions, out: Path) -> dict[str, Any]:
    """The pipeline, writing tables/plots/report files under ``out`` (the staging folder)."""
    from fmtlab.analysis import plots, protocol
    from fmtlab.analysis.tables import write_csv, write_json
    from fmtlab.sim.data import default_texts
    from fmtlab.models.loading import load_default_model, load_model
    from fmtlab.sim.outliers import massive_activations
    from fmtlab.models.record import record
    from fmtlab.sim.replay import replay
    from fmtlab.sim.replay_engine import needs_calibration, resolve_config
    from fmtlab.sim.trace import open_trace
    from fmtlab.models.loading import model_name

    step = _Steps(opts.progress)
    t_start = time.perf_counter()
    (out / "plots").mkdir(exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    from fmtlab.analysis.methods.cushion_configs import CushionRun, any_cushion, is_cushion
    from fmtlab.analysis.methods.fptquant_configs import FPTQuantRun, any_fptquant, is_fptquant, method_config

    # "<config>+cushion": behind a CushionCache prefix; "<config>+fptquant": on the FPTQuant-merged model
    cfgs = [method_config(c) for c in opts.configs]
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    # 1-2. model and traces ---------------------------------------------------------------
    traces, calibs = [], []
    model = tok = None
    mname = None
    t0 = time.perf_counter()
    if opts.trace:
        step(f"using the trace {opts.trace}")
        traces.append(open_trace(opts.trace, verify=opts.verify))
        mname = (traces[0].manifest.get("model") or {}).get("name")
        if opts.calib_trace:
            calibs.append(open_trace(opts.calib_trace, verify=opts.verify))
    need_model = not opts.trace or opts.perplexity or not opts.calib_trace or bool(opts.methods) \
        or any_cushion(opts.configs, opts.ppl_configs if opts.perplexity else ()) \
        or any_fptquant(opts.configs, opts.ppl_configs if opts.perplexity else ())
    if need_model:
        step(f"loading model {opts.model or 'SmolLM2-135M-Instruct (embedded default)'}")
        model, tok = load_default_model() if opts.model is None else load_model(opts.model)
        mname = mname or model_name(model)
        from fmtlab.models.record import check_seq_len

        for L in list(opts.seq_lens) + ([opts.ppl_seq_len] if opts.perplexity else []):
            check_seq_len(model, L)  # before any recording or scoring
    timed("load model", t0)
    # the perplexity check fits static scales on every Linear layer: its calibration trace holds all
    ppl_cal = opts.perplexity and any(needs_calibration(resolve_config(method_config(c))) for c in opts.ppl_configs)
    cal_layers = None if ppl_cal else opts.layers
    trace_dir = Path(opts.out) / "traces"  # kept across runs for reuse (not staged)

    def get_trace(path: Path, split: str, L: int, layers: str | None):
        tr = _reuse_trace(path, mname, L, opts.n_sequences, layers, split, opts.verify)
        if tr is not None:
            step(f"reusing trace {path} ({tr.nbytes / 2**20:.0f} MiB)")
            return tr
        step(f"recording {opts.n_sequences} x {L} tokens of the {split} texts into {path}")
        record(model, tok, default_texts(split), out=str(path), seq_len=L, n_sequences=opts.n_sequences,
               layers=layers, residual=True, overwrite=True, progress=opts.progress,
               text_info={"source": "wiki", "split": split})
        _stamp_report_layers(path, layers)
        return open_trace(str(path), verify=False)  # just written

    lens = [t.manifest.get("seq_len") for t in traces] if opts.trace else list(opts.seq_lens)
    for L in lens:
        t0 = time.perf_counter()
        if not opts.trace:
            traces.append(get_trace(trace_dir / f"seq{L}", "eval", L, opts.layers))
        if not calibs or not opts.trace:
            calibs.append(get_trace(trace_dir / f"calib_seq{L}", "calib", L, cal_layers))
        timed(f"record seq{L}", t0)

    # 3. replay --------------------------------------------------------------------------
    results = []
    cushion = fpt = None
    from fmtlab.sim.executor import make_executor

    with make_executor(opts.scheduler, opts.workers) if opts.scheduler else contextlib.nullcontext() as ex:
        for tr in traces:
            t0 = time.perf_counter()
            L = tr.manifest.get("seq_len")
            step(f"replaying {len(cfgs)} configs through {len(tr.layers)} layers (seq_len {L})")
            kw = dict(kinds=("linear", "residual"), max_tokens=opts.max_tokens, workers=opts.workers,
                      progress=opts.progress, label=f"seq{L}", executor=ex)
            plain = [c for c in cfgs if not is_cushion(c.name) and not is_fptquant(c.name)]
            cush, fptq = [c for c in cfgs if is_cushion(c.name)], [c for c in cfgs if is_fptquant(c.name)]
            res = replay(tr, plain, calib=calibs[len(results)], **kw) if plain else None
            if cush:
                cushion = cushion or CushionRun(model, tok, step, opts.progress)
                more = cushion.replay(cush, trace_dir / f"seq{L}_cushion", trace_dir / f"calib_seq{L}_cushion", L,
                                      opts.n_sequences, opts.layers, cal_layers, **kw)
                res = more if res is None else res + more
            if fptq:
                fpt = fpt or FPTQuantRun(model, tok, step, opts.progress)
                more = fpt.replay(fptq, trace_dir / f"seq{L}_fptquant", trace_dir / f"calib_seq{L}_fptquant", L,
                                  opts.n_sequences, opts.layers, cal_layers, **kw)
                res = more if res is None else res + more
            res.write(str(out / "tables"), stem=f"replay_seq{L}")
            results.append(res)
            timed(f"replay seq{L}", t0)
    main_res = results[0]
    lin_rows = [r for r in main_res.rows if r["kind"] == "linear"]
    if not lin_rows:
        raise FmtlabError("the trace holds no Linear layer inputs to replay")
    by_model = {r["config"]: r for r in main_res.by_model if r["kind"] == "linear"}

    # 4. hardware ------------------------------------------------------------------------
    t0 = time.perf_counter()
    step("pricing every config with the MAC-unit cost model")
    prices = [price_config(c) for c in cfgs]
    from fmtlab.hw import mac_cost

    bw, ba = (s.strip() for s in opts.area_budget.split(" x "))
    budget = mac_cost(bw, ba)
    summary_rows = []
    for c, p in zip(cfgs, prices):
        m = by_model.get(c.name, {})
        summary_rows.append({
            "config": c.name, "weights": c.weight or "fp32", "activations": c.act or "fp32",
            "transform": c.transform or "",
            "act_scales": ("fp32" if c.act is None else f"static ({c.act_calib}, calib)" if c.act_calib
                           else "dynamic, per sequence")
                          + ("; transform fitted on calib" if needs_calibration(resolve_config(c))
                             and not c.act_calib else ""),
            "pooled_out_sqnr_db": m.get("pooled_out_sqnr_db"), "min_out_sqnr_db": m.get("min_out_sqnr_db"),
            "a_underflow_rate": m.get("mean_a_underflow_rate"), "a_clip_rate": m.get("mean_a_clip_rate"),
            "w_underflow_rate": m.get("mean_w_underflow_rate"),
            "mac_unit": p["mac_unit"], "area_um2": p["area_um2"], "area_ge": p["area_ge"], "energy_pj": p["energy_pj"],
            "area_vs_budget": p["area_ge"] / budget.area_ge_per_mac if finite(p["area_ge"]) else math.nan,
            "hw_note": p["hw_note"],
        })
    write_csv(summary_rows, out / "tables" / "configs.csv")
    timed("hardware", t0)

    # 5. perplexity ----------------------------------------------------------------------
    ppl_rows: list[dict[str, Any]] = []
    if opts.perplexity and opts.ppl_configs:
        t0 = time.perf_counter()
        from fmtlab.models.perplexity import perplexity_table

        step(f"perplexity of {len(opts.ppl_configs)} configs on held-out text "
             f"({opts.ppl_sequences} x {opts.ppl_seq_len} tokens)")
        from fmtlab.models.perplexity import eval_windows

        ids = eval_windows(tok, opts.ppl_seq_len, opts.ppl_sequences)
        names = [c for c in opts.ppl_configs if not is_cushion(c) and not is_fptquant(c)]
        ppl_rows = perplexity_table(model, tok, names, ids=ids, progress=opts.progress, calib=calibs[0]) if names else []
        if any_cushion(opts.ppl_configs):
            cushion = cushion or CushionRun(model, tok, step, opts.progress)
            L0 = calibs[0].manifest.get("seq_len")
            ppl_rows += cushion.perplexity_rows([c for c in opts.ppl_configs if is_cushion(c)], ids,
                                                trace_dir / f"calib_seq{L0}_cushion", L0, opts.n_sequences,
                                                cal_layers, opts.progress)
        if any_fptquant(opts.ppl_configs):
            fpt = fpt or FPTQuantRun(model, tok, step, opts.progress)
            L0 = calibs[0].manifest.get("seq_len")
            ppl_rows += fpt.perplexity_rows([c for c in opts.ppl_configs if is_fptquant(c)], ids,
                                            trace_dir / f"calib_seq{L0}_fptquant", L0, opts.n_sequences,
                                            cal_layers, opts.progress)
        for r in ppl_rows:
            r.pop("description", None)
        protocol.add_intervals([], main_res, ppl_rows)
        write_csv(ppl_rows, out / "tables" / "perplexity.csv",
                  ["config", "ppl", "ppl_lo", "ppl_hi", "nll", "tokens", "seconds"])
        write_csv([{"config": r["config"], "sequence": i, "nll_sum": n, "tokens": t} for r in ppl_rows
                   for i, (n, t) in enumerate(zip(r["seq_nll"], r["seq_tokens"]))],
                  out / "tables" / "perplexity_per_sequence.csv")
        ppl_by = {r["config"]: r["ppl"] for r in ppl_rows}
        for s in summary_rows:
            s["perplexity"] = ppl_by.get(s["config"])
        timed("perplexity", t0)
    protocol.add_intervals(summary_rows, main_res, ppl_rows)
    write_csv(summary_rows, out / "tables" / "configs.csv")

    methods = []  # "Methods from the papers" (fmtlab.analysis.methods.section)
    if opts.methods:
        t0 = time.perf_counter()
        from fmtlab.analysis.methods.section import run_for_report

        methods = run_for_report(opts, model, tok, step)
        timed("method claims", t0)

    # 6. accumulation study ---------------------------------------------------------------
    t0 = time.perf_counter()
    tr0 = traces[0]
    # the layer whose input has the largest max/median ratio: where accumulators are stressed most
    worst = max(lin_rows, key=lambda r: r.get("in_max_over_median") or 0)
    meta = tr0.layers[worst["tensor"]]
    step(f"accumulation error vs accumulator width on {worst['tensor']}")
    x_worst = tr0.tensor(meta["input"])
    x_worst = x_worst.reshape(-1, x_worst.shape[-1])
    acc_rows = accumulation_study(x_worst, tr0.tensor(meta["weight"]))
    write_csv(acc_rows, out / "tables" / "accumulation.csv")
    timed("accumulation", t0)

    # 7. plots ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    step("rendering plots")
    P = out / "plots"
    heat_rows = [dict(r, layer=layer_label(r)) for r in lin_rows if r["config"] != "fp32"]
    figs = {}
    figs["grids"] = plots.plot_format_grids(GRID_FORMATS, x_worst, P / "format_grids.png",
                                            layer_name=f"input of {worst['tensor']}")
    figs["sqnr"] = plots.plot_layer_heatmap(heat_rows, "out_sqnr_db", P / "heatmap_output_sqnr.png",
                                            "Layer output SQNR of Q(X) Q(W) vs X W per layer and config", "dB",
                                            cmap="viridis")
    figs["underflow"] = plots.plot_layer_heatmap(heat_rows, "a_underflow_rate", P / "heatmap_underflow.png",
                                                 "Activation underflow: share of nonzero inputs quantized to 0",
                                                 "fraction", cmap="magma", log=True)
    figs["clip"] = plots.plot_layer_heatmap(heat_rows, "a_clip_rate", P / "heatmap_clipping.png",
                                            "Activation clipping: share of inputs beyond the format's range",
                                            "fraction", cmap="magma", log=True)
    res_acts = [(n, i) for n, i in tr0.activations.items() if i["kind"] == "residual"]
    massive = []
    if res_acts:
        massive = massive_activations(tr0, min_ratio=100.0)
        mx = []
        names = []
        for n, info in res_acts:
            a = tr0.tensor(info["tensor"])
            mx.append(np.abs(a.reshape(-1, a.shape[-1])).max(axis=0))
            names.append(f"block {info.get('block')}")
        uniq: dict[tuple, dict[str, Any]] = {}
        for r in massive:  # one bar per (layer, token position, channel): the largest over sequences
            k = (r["layer"], r["token"], r["channel"])
            if k not in uniq or r["ratio"] > uniq[k]["ratio"]:
                uniq[k] = r
        figs["outliers"] = plots.plot_outliers(np.stack(mx), names, list(uniq.values()), P / "outliers.png",
                                               title=f"Residual-stream outliers of {mname}")
        write_csv(massive, out / "tables" / "massive_activations.csv")
    trade_pts = [dict(s, output_sqnr_db=s["pooled_out_sqnr_db"]) for s in summary_rows
                 if finite(s["area_um2"]) and finite(s.get("pooled_out_sqnr_db"))]
    if trade_pts:
        figs["tradeoff"] = plots.plot_tradeoff(trade_pts, P / "tradeoff.png")
    if any(finite(r["rel_error"]) for r in acc_rows):
        figs["accumulation"] = plots.plot_accumulation([r for r in acc_rows if finite(r["rel_error"])],
                                                       P / "accumulation.png")
    timed("plots", t0)

    # findings ----------------------------------------------------------------------------
    findings = headline_findings(summary_rows, massive, budget, opts.area_budget, ppl_rows, main_res)
    if fpt is not None and fpt.seconds is not None:
        timings["fptquant fit + merge"] = round(fpt.seconds, 1)
    timings["total"] = round(time.perf_counter() - t_start, 1)

    # document ----------------------------------------------------------------------------
    doc = build_document(opts, mname, traces, results, summary_rows, ppl_rows, acc_rows, massive, figs, findings,
                    worst["tensor"], timings, out, methods)
    if opts.explore:  # design-space search on the same traces (fmtlab.explore.report_section)
        from fmtlab.explore.report_section import add_explore_section

        add_explore_section(doc, opts, traces[0].path, calibs[0].path, out, step)
    md, html = doc.write(out)
    final = Path(opts.out)  # where the staged files land
    summary = {"report_md": str(final / md.name), "report_html": str(final / html.name), "findings": findings, "timings_s": timings,
               "model": mname, "configs": [c.name for c in cfgs]}
    from fmtlab.analysis.methods.section import result_rows

    write_json({"summary": summary, "configs": summary_rows, "perplexity": ppl_rows, "accumulation": acc_rows,
                "massive_activations": massive, "methods": result_rows(methods)}, out / "tables" / "report.json")
    step(f"done in {timings['total']:.0f} s")
    return summary


def _stamp_report_layers(path: Path, layers: str | None) -> None:
    """Record the report's layer filter in the manifest so a later run can tell whether to reuse."""
    from fmtlab.sim.trace import annotate_trace

    annotate_trace(path, {"report": {"layers": layers}})
