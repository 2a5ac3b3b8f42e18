"""`fmtlab report`: from a model and text to a format-evaluation report with plots.

Pipeline (each step prints its progress on stderr):
1. load the model (default: the embedded SmolLM2-135M, offline) and the texts;
2. record, per sequence length, a calibration trace (the "calib" texts) and an evaluation trace (the
   disjoint "eval" texts), or reuse ones already in the output folder / given;
3. replay every config through the evaluation trace, static scales and fitted transforms fitted on
   the calibration trace (layer errors, underflow, clipping, output SQNR, per-sequence sums);
4. price every config with the MAC-unit cost model (fmtlab.hw);
5. optionally measure perplexity for the end-to-end configs on eval windows (fmtlab.sim.perplexity,
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
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmtlab.analysis.studies import accumulation_study, hw_operand, price_config  # noqa: F401 - re-exported
from fmtlab.errors import FmtlabError

#: configs replayed by default (names of fmtlab.sim.replay.PRESETS)
DEFAULT_CONFIGS = (
    "fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_smoothquant", "w8a8_hadamard",
    "w8a8_int_tensor_nosink", "w4a8_int_channel", "w4a8_dint_channel", "w4a8_dint_aqas", "w4a8_log4",
    "fp8_e4m3", "mxfp8", "mxfp4", "nvfp4",
)
#: configs whose perplexity is measured by default
DEFAULT_PPL_CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w8a8_llm_int8", "w8a8_hadamard",
                       "w4a8_int_channel", "w4a8_dint_channel", "fp8_e4m3", "mxfp8", "mxfp4", "w4a8_log4")
GRID_FORMATS = ("int8", "int4", "dint4", "log4", "fp8_e4m3", "fp4_e2m1")


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


class _Steps:
    """Prints numbered steps with elapsed time on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- helpers

def _layer_label(row: dict[str, Any]) -> str:
    blk = row.get("block")
    op = str(row.get("layer_type") or row.get("tensor") or row.get("op"))
    op = op.rsplit(".", 1)[-1]  # "self_attn.q_proj" -> "q_proj"
    return f"b{blk}.{op}" if blk is not None else op


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from fmtlab.sim.perplexity import ranks

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 3 or np.std(ra) == 0 or np.std(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


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
    from fmtlab.sim.models import load_default_model, load_model
    from fmtlab.sim.outliers import massive_activations
    from fmtlab.sim.record import record
    from fmtlab.sim.replay import replay
    from fmtlab.sim.replay_engine import needs_calibration, resolve_config
    from fmtlab.sim.trace import open_trace
    from fmtlab.sim.models import model_name

    step = _Steps(opts.progress)
    t_start = time.perf_counter()
    (out / "plots").mkdir(exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    from fmtlab.analysis.methods.cushion_configs import CushionRun, any_cushion, cushion_config, is_cushion

    cfgs = [cushion_config(c) for c in opts.configs]  # "<config>+cushion": behind a CushionCache prefix
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
        or any_cushion(opts.configs, opts.ppl_configs if opts.perplexity else ())
    if need_model:
        step(f"loading model {opts.model or 'SmolLM2-135M-Instruct (embedded default)'}")
        model, tok = load_default_model() if opts.model is None else load_model(opts.model)
        mname = mname or model_name(model)
        from fmtlab.sim.record import check_seq_len

        for L in list(opts.seq_lens) + ([opts.ppl_seq_len] if opts.perplexity else []):
            check_seq_len(model, L)  # before any recording or scoring
    timed("load model", t0)
    # the perplexity check fits static scales on every Linear layer: its calibration trace holds all
    ppl_cal = opts.perplexity and any(needs_calibration(resolve_config(cushion_config(c))) for c in opts.ppl_configs)
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
    cushion = None
    from fmtlab.explore.executor import make_executor

    with make_executor(opts.scheduler, opts.workers) if opts.scheduler else contextlib.nullcontext() as ex:
        for tr in traces:
            t0 = time.perf_counter()
            L = tr.manifest.get("seq_len")
            step(f"replaying {len(cfgs)} configs through {len(tr.layers)} layers (seq_len {L})")
            kw = dict(kinds=("linear", "residual"), max_tokens=opts.max_tokens, workers=opts.workers,
                      progress=opts.progress, label=f"seq{L}", executor=ex)
            plain, cush = [c for c in cfgs if not is_cushion(c.name)], [c for c in cfgs if is_cushion(c.name)]
            res = replay(tr, plain, calib=calibs[len(results)], **kw) if plain else None
            if cush:
                cushion = cushion or CushionRun(model, tok, step, opts.progress)
                more = cushion.replay(cush, trace_dir / f"seq{L}_cushion", trace_dir / f"calib_seq{L}_cushion", L,
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
            "area_vs_budget": p["area_ge"] / budget.area_ge_per_mac if _finite(p["area_ge"]) else math.nan,
            "hw_note": p["hw_note"],
        })
    write_csv(summary_rows, out / "tables" / "configs.csv")
    timed("hardware", t0)

    # 5. perplexity ----------------------------------------------------------------------
    ppl_rows: list[dict[str, Any]] = []
    if opts.perplexity and opts.ppl_configs:
        t0 = time.perf_counter()
        from fmtlab.sim.perplexity import perplexity_table

        step(f"perplexity of {len(opts.ppl_configs)} configs on held-out text "
             f"({opts.ppl_sequences} x {opts.ppl_seq_len} tokens)")
        from fmtlab.sim.perplexity import eval_windows

        ids = eval_windows(tok, opts.ppl_seq_len, opts.ppl_sequences)
        names = [c for c in opts.ppl_configs if not is_cushion(c)]
        ppl_rows = perplexity_table(model, tok, names, ids=ids, progress=opts.progress, calib=calibs[0]) if names else []
        if any_cushion(opts.ppl_configs):
            cushion = cushion or CushionRun(model, tok, step, opts.progress)
            L0 = calibs[0].manifest.get("seq_len")
            ppl_rows += cushion.perplexity_rows([c for c in opts.ppl_configs if is_cushion(c)], ids,
                                                trace_dir / f"calib_seq{L0}_cushion", L0, opts.n_sequences,
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
    heat_rows = [dict(r, layer=_layer_label(r)) for r in lin_rows if r["config"] != "fp32"]
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
                 if _finite(s["area_um2"]) and _finite(s.get("pooled_out_sqnr_db"))]
    if trade_pts:
        figs["tradeoff"] = plots.plot_tradeoff(trade_pts, P / "tradeoff.png")
    if any(_finite(r["rel_error"]) for r in acc_rows):
        figs["accumulation"] = plots.plot_accumulation([r for r in acc_rows if _finite(r["rel_error"])],
                                                       P / "accumulation.png")
    timed("plots", t0)

    # findings ----------------------------------------------------------------------------
    findings = _findings(summary_rows, massive, budget, opts.area_budget, ppl_rows, main_res)
    timings["total"] = round(time.perf_counter() - t_start, 1)

    # document ----------------------------------------------------------------------------
    doc = _document(opts, mname, traces, results, summary_rows, ppl_rows, acc_rows, massive, figs, findings,
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
    from fmtlab.analysis.tables import atomic_write_text

    mpath = path / "manifest.json"
    m = json.loads(mpath.read_text())
    m["report"] = {"layers": layers}
    atomic_write_text(mpath, json.dumps(m, indent=1))


def _findings(rows, massive, budget, budget_name, ppl_rows, res=None) -> list[str]:
    from fmtlab.analysis.protocol import comparisons, sqnr_text

    out: list[str] = []
    priced = [r for r in rows if _finite(r["area_ge"]) and _finite(r.get("pooled_out_sqnr_db"))]
    under = [r for r in priced if r["area_ge"] <= budget.area_ge_per_mac * (1 + 1e-9)]
    if under:
        best = max(under, key=lambda r: r["pooled_out_sqnr_db"])
        cheapest = min(under, key=lambda r: r["area_ge"])
        caveat = " (its transform's overhead is not priced)" if best.get("transform") else ""
        by_ppl = [r for r in under if _finite(r.get("perplexity"))]
        if by_ppl:
            bp = min(by_ppl, key=lambda r: r["perplexity"])
            from fmtlab.analysis.protocol import with_ci

            out.append(f"Best measured perplexity within the area of one {budget_name} MAC: **{bp['config']}** "
                       f"(perplexity {with_ci(bp['perplexity'], bp.get('ppl_lo'), bp.get('ppl_hi'))}, layer-output "
                       f"SQNR {sqnr_text(bp)}, {bp['area_um2']:.0f} um^2/MAC). Layer-output SQNR alone would pick "
                       f"{best['config']} ({sqnr_text(best)}): averaged layer SQNR can hide one destroyed layer.")
        out.append(f"Best layer-output SQNR within the area of one {budget_name} MAC ({budget.area_um2_per_mac:.0f} um^2 at "
                   f"45 nm): **{best['config']}**, pooled layer-output SQNR {sqnr_text(best)} at "
                   f"{best['area_um2']:.0f} um^2 and {best['energy_pj']:.3f} pJ/MAC{caveat}; the cheapest, "
                   f"{cheapest['config']}, reaches {sqnr_text(cheapest)} at "
                   f"{cheapest['area_um2']:.0f} um^2.")
    if massive:
        top = max(massive, key=lambda r: r["ratio"])
        toks = sorted({r["token"] for r in massive})
        chans = sorted({r["channel"] for r in massive})
        out.append(f"Massive activations: {len(massive)} residual values >= 100x the median; the largest is "
                   f"{top['value']:.0f} ({top['ratio']:.0f}x the median) at block {top['layer']}, token position "
                   f"{top['token']}, channel {top['channel']}; they sit at token positions {toks[:6]} and "
                   f"channels {chans[:6]}.")
    byname = {r["config"]: r for r in rows}
    a, b = byname.get("w4a8_int_channel"), byname.get("w4a8_dint_channel")
    if a and b and _finite(a.get("pooled_out_sqnr_db")) and _finite(b.get("pooled_out_sqnr_db")):
        da = b["pooled_out_sqnr_db"] - a["pooled_out_sqnr_db"]
        area = (b["area_ge"] / a["area_ge"]) if _finite(a["area_ge"]) and _finite(b["area_ge"]) else math.nan
        out.append(f"W4A8 dINT4 vs INT4 (per-channel weights): {da:+.2f} dB pooled layer-output SQNR for "
                   f"{100 * (area - 1):+.0f}% MAC area; weight underflow {a['w_underflow_rate']:.3f} -> "
                   f"{b['w_underflow_rate']:.3f} (SmolLM2's weights were Q4_1 in the GGUF, so 4-bit weight "
                   "error is understated: see the note below).")
    if ppl_rows:
        base = next((r["ppl"] for r in ppl_rows if r["config"] == "fp32"), None)
        worst = max(ppl_rows, key=lambda r: r["ppl"] if _finite(r["ppl"]) else math.inf)
        if base:
            from fmtlab.analysis.protocol import with_ci

            b = next(r for r in ppl_rows if r["config"] == "fp32")
            out.append(f"Perplexity: FP32 {with_ci(base, b.get('ppl_lo'), b.get('ppl_hi'))}; the worst config, "
                       f"{worst['config']}, reaches {with_ci(worst['ppl'], worst.get('ppl_lo'), worst.get('ppl_hi'))}.")
    if res is not None:
        out.extend(comparisons(res, ppl_rows))
    return out


def _document(opts, mname, traces, results, rows, ppl_rows, acc_rows, massive, figs, findings, worst_layer,
              timings, out: Path, methods=()):
    from fmtlab import __version__
    from fmtlab.analysis.document import Document

    from fmtlab.analysis.protocol import PROTOCOL, with_ci

    d = Document(f"fmtlab format-evaluation report: {mname}")
    tr0 = traces[0]
    m = tr0.manifest
    split = (m.get("text") or {}).get("split", "unknown")
    d.paragraph(f"fmtlab {__version__}. Model `{mname}`; scored (evaluation) trace: {m.get('n_sequences', opts.n_sequences)} "
                f"sequences of {m.get('seq_len')} tokens of the `{split}` texts ({m.get('n_tokens')} tokens, {len(tr0.layers)} "
                f"Linear layers recorded); static scales and fitted transforms come from a calibration trace of the "
                f"disjoint `calib` texts. Run time {timings['total']:.0f} s. Tables are in `tables/` (CSV and "
                "JSON), plots in `plots/`.")
    d.heading("Measurement protocol")
    d.bullets(list(PROTOCOL) + ["Intervals: seeded (seed 0, 1000 resamples) percentile bootstrap over the "
                                f"{m.get('n_sequences', opts.n_sequences)} evaluation sequences (perplexity: over its "
                                f"{opts.ppl_sequences} windows); with few sequences they are wide and approximate."])
    d.heading("Headline findings")
    d.bullets(findings or ["(no findings: too few priced configs)"])
    d.heading("Configs: accuracy against hardware cost")
    d.paragraph("Pooled output SQNR = -10 log10(mean over layers of noise/signal energy of Q(X) Q(W) against "
                "X W). Underflow = share of nonzero inputs quantized to 0; clip = share beyond the format's "
                "range after scaling. Area and energy are per MAC at 45 nm, 0.9 V (fmtlab.hw; ratios to the "
                f"{opts.area_budget} unit in `area_vs_budget`).")
    shown = []
    for r in rows:
        v = dict(r)
        v["sqnr_ci"] = with_ci(r["pooled_out_sqnr_db"], r.get("pooled_out_sqnr_lo"), r.get("pooled_out_sqnr_hi"))
        v["underflow_ci"] = with_ci(r["a_underflow_rate"], r.get("a_underflow_lo"), r.get("a_underflow_hi"), 4)
        v["ppl_ci"] = with_ci(r.get("perplexity"), r.get("ppl_lo"), r.get("ppl_hi"))
        shown.append(v)
    cols = ["config", "weights", "activations", "transform", "act_scales", "sqnr_ci", "min_out_sqnr_db",
            "underflow_ci", "a_clip_rate", "w_underflow_rate", "area_um2", "energy_pj", "area_vs_budget"]
    if ppl_rows:
        cols.append("ppl_ci")
    d.table(shown, cols, headers={"sqnr_ci": "out SQNR [dB] (95% CI)", "min_out_sqnr_db": "min layer SQNR [dB]",
                                  "underflow_ci": "act underflow (95% CI)", "ppl_ci": "perplexity (95% CI)",
                                  "act_scales": "act scales", "a_clip_rate": "act clip",
                                  "w_underflow_rate": "weight underflow", "area_um2": "area [um^2/MAC]",
                                  "energy_pj": "energy [pJ/MAC]", "area_vs_budget": "area / budget"})
    notes = [f"{r['config']}: {r['hw_note']}" for r in rows if r.get("hw_note")]
    if notes:
        d.bullets(notes)
    d.paragraph("Caveat: SmolLM2-135M ships as a Q4_1 GGUF, so its weights already lie on a 4-bit grid per "
                "block of 32; weight-quantization error measured on it understates what a full-precision "
                "checkpoint would show. Use `--model` with a full-precision checkpoint for weight studies.")
    if "tradeoff" in figs:
        d.image("plots/tradeoff.png", "Pooled layer-output SQNR against MAC area and energy per config; "
                "red: Pareto front (no other config is both cheaper and more accurate).")
    if ppl_rows:
        d.heading("End-to-end perplexity")
        d.paragraph(f"W/A fake quantization of every Linear layer (lm_head kept), {opts.ppl_sequences} held-out "
                    f"sequences of {opts.ppl_seq_len} tokens of the `eval` texts; each sequence is quantized on its "
                    "own (batch-independent), static scales and fitted transforms come from the calibration trace.")
        d.table([dict(r, ppl_ci=with_ci(r["ppl"], r.get("ppl_lo"), r.get("ppl_hi"))) for r in ppl_rows],
                ["config", "ppl_ci", "nll", "tokens", "seconds"], headers={"ppl_ci": "perplexity (95% CI)"})
        byname = {r["config"]: r for r in rows}
        both = [(r["ppl"], byname[r["config"]]["pooled_out_sqnr_db"]) for r in ppl_rows
                if r["config"] in byname and _finite(byname[r["config"]].get("pooled_out_sqnr_db"))
                and _finite(r["ppl"])]
        if len(both) >= 3:
            rho = _spearman([-p for p, _ in both], [s for _, s in both])
            d.paragraph(f"Rank agreement between layer-output SQNR and perplexity (Spearman, higher SQNR should "
                        f"mean lower perplexity): {rho:.2f} over {len(both)} quantized configs.")
    d.heading("Where underflow and clipping happen")
    d.image("plots/format_grids.png", f"Representable magnitudes of each format (blue lines, scaled per tensor "
            f"to max|x|) over the histogram of |x| of the input of {worst_layer}, the layer with the largest "
            "max/median ratio; red band: magnitudes that underflow to zero.")
    d.image("plots/heatmap_output_sqnr.png", "Layer output SQNR per layer (columns, model order) and config (rows).")
    d.image("plots/heatmap_underflow.png", "Activation underflow rate per layer and config (log10 colour scale).")
    d.image("plots/heatmap_clipping.png", "Activation clipping rate per layer and config (log10 colour scale; "
            "white: no clipping).")
    if "outliers" in figs:
        d.heading("Outliers and massive activations")
        d.image("plots/outliers.png", "Left: max |x| of the residual stream per block and channel. Right: the "
                "largest values relative to the median magnitude, with their token position and channel.")
        d.table(sorted(massive, key=lambda r: -r["ratio"])[:12],
                ["layer", "token", "token_str", "channel", "value", "ratio"])
    if len(results) > 1:
        d.heading("Calibration sequence length")
        cmp_rows = []
        for res in results:
            for r in res.by_model:
                if r["kind"] == "linear":
                    cmp_rows.append({"seq_len": r.get("trace"), "config": r["config"],
                                     "pooled_out_sqnr_db": r.get("pooled_out_sqnr_db"),
                                     "a_clip_rate": r.get("mean_a_clip_rate"),
                                     "a_underflow_rate": r.get("mean_a_underflow_rate")})
        d.table(cmp_rows)
    d.heading("Accumulator width")
    d.paragraph(f"Bit-accurate dot products on the input and weights of {worst_layer} (16 tokens x 256 output "
                "rows): relative L2 error against the exact dot product, and the share of dot products that "
                "overflowed.")
    if "accumulation" in figs:
        d.image("plots/accumulation.png", "Relative dot-product error against accumulator width.")
    d.table(acc_rows, ["config", "accumulator", "acc_bits", "rel_error", "overflow_rate", "note"])
    if methods:
        from fmtlab.analysis.methods.section import add_section

        add_section(d, methods)
    d.heading("Run")
    d.table([{"step": k, "seconds": v} for k, v in timings.items()])
    d.code("fmtlab report " + " ".join(_argv_echo(opts)))
    return d


def _argv_echo(opts: ReportOptions) -> list[str]:
    a = [f"--out {opts.out}"]
    if opts.model:
        a.append(f"--model {opts.model}")
    if opts.configs != DEFAULT_CONFIGS:
        a.append("--configs " + ",".join(opts.configs))
    if opts.seq_lens != (128,):
        a.append("--seq-lens " + ",".join(map(str, opts.seq_lens)))
    if opts.n_sequences != 4:
        a.append(f"--sequences {opts.n_sequences}")
    if opts.layers:
        a.append(f"--layers '{opts.layers}'")
    if not opts.perplexity:
        a.append("--no-perplexity")
    if opts.methods:
        a.append("--methods " + ",".join(opts.methods))
    return a
