"""`fmtlab report`: from a model and text to a format-evaluation report with plots.

Pipeline (each step prints its progress on stderr):
1. load the model (default: the embedded SmolLM2-135M, offline) and the texts;
2. record, per sequence length, a calibration trace (the "calib" texts) and an evaluation trace (the
   disjoint "eval" texts), or reuse ones already in the output folder / given;
3. replay every config through the evaluation trace, static scales and fitted transforms fitted on
   the calibration trace (layer errors, underflow, clipping, output SQNR, per-sequence sums);
4. price every config with the MAC-unit cost model (fmtlab.hw);
   (configs spelled ``<config>+<variant>`` run behind a model variant, :mod:`fmtlab.methods.variants`:
   fitted once on the calibration split, with their own traces recorded behind it);
5. optionally measure perplexity for the end-to-end configs on eval windows (fmtlab.models.perplexity,
   calibrated on the calibration trace);
6. measure accumulation error against accumulator width on a real layer (bit-accurate datapath);
7. write ``report.md``, ``report.html``, CSV/JSON tables and PNG plots into the output folder.

The protocol (fmtlab.analysis.protocol.PROTOCOL) is stated in the report; headline metrics carry
seeded 95% bootstrap intervals over sequences and comparisons a paired-bootstrap interval.

Pricing: the configs table prices one MAC of each config's (weight, activation) unit (MX block
quantizers by the MX block-dot unit, NVFP4 by an FP4 block-16 unit); the energy-per-token section
(:mod:`fmtlab.analysis.cost_section`, :func:`fmtlab.hw.inference_cost`) prices the whole decoded
token: those MACs, NVFP4's E4M3 block-scale multiplies, per-output scale multiplies, the dynamic
quantizers, transform overheads (LLM.int8()'s fp16 outlier path at the measured share, Hadamard
adds, merged transforms at 0), SRAM and DRAM/HBM traffic of weights and the KV cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fmtlab.analysis import protocol
from fmtlab.analysis.defaults import DEFAULT_CONFIGS, GRID_FORMATS, REPORT_CONFIGS, REPORT_PPL_CONFIGS
from fmtlab.analysis.beyond_section import add_beyond_section
from fmtlab.analysis.cost_section import add_report_cost_section
from fmtlab.analysis.encoder_section import add_encoder_section, encoder_rows
from fmtlab.analysis.model_plan import model_params, record_plan
from fmtlab.analysis.source_grid_section import add_source_grid_section
from fmtlab.analysis.methods.section import result_rows, run_for_report
from fmtlab.analysis.report_text import build_document, finite, headline_findings, layer_label
from fmtlab.analysis.studies import accumulation_study, price_config
from fmtlab.analysis.tables import write_csv, write_json
from fmtlab.errors import FmtlabError
from fmtlab.explore.report_section import add_explore_section
from fmtlab.explore.space import load_space
from fmtlab.hw import mac_cost
from fmtlab.methods.variants import ModelVariant, VariantSession, parse_variant_config
from fmtlab.models.embeddings import is_language_model
from fmtlab.models.loading import check_model_arg
from fmtlab.safe_io import staged_dir
from fmtlab.sim.data import default_texts
from fmtlab.sim.executor import make_executor
from fmtlab.sim.outliers import massive_activations
from fmtlab.sim.replay import ReplayConfig, replay
from fmtlab.sim.replay_engine import needs_calibration, resolve_config
from fmtlab.sim.trace import annotate_trace, open_trace


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What `fmtlab report` does. Defaults reproduce the README's main job."""

    out: str = "fmtlab-report"
    model: str | None = None  # None: the embedded default; else an embedded name or a local directory
    configs: tuple[str, ...] = REPORT_CONFIGS
    seq_lens: tuple[int, ...] = (128,)
    n_sequences: int = 4
    layers: str | None = None  # regular expression over layer names
    trace: str | None = None  # reuse this (evaluation) trace instead of recording (its seq_len is used)
    calib_trace: str | None = None  # calibration trace for static scales / fitted transforms
    perplexity: bool = True
    ppl_configs: tuple[str, ...] = REPORT_PPL_CONFIGS
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
        for c in self.configs + (self.ppl_configs if self.perplexity else ()):
            parse_variant_config(c)  # a bad config or variant suffix fails before any work
        if self.explore:  # a bad space fails before any work
            load_space(self.explore)
        if len(self.area_budget.split(" x ")) != 2:
            raise FmtlabError(f"area_budget must read 'WEIGHT x ACTIVATION', got {self.area_budget!r}")
        check_report_options(self)


def check_report_options(opts: "ReportOptions") -> None:
    """The checks of ``opts`` that need other packages, made before any trace is opened or recorded:
    the area budget is a priceable MAC unit, counts are >= 1, the model and traces exist."""
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


def _reuse_trace(path: Path, model_name: str, seq_len: int, n_sequences: int, layers: str | None,
                 split: str = "eval", verify: bool = True):
    """The trace at ``path`` if it was recorded with these settings (and text split) and is
    intact, else None."""
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


def _stamp_report_layers(path: Path, layers: str | None) -> None:
    """Record the report's layer filter in the manifest so a later run can tell whether to reuse."""
    annotate_trace(path, {"report": {"layers": layers}})  # re-signs the manifest (its digest)


def _grouped(specs, variant_of) -> dict[ModelVariant | None, list]:
    """``specs`` grouped by the variant they run behind: plain ones (key None) first, then the
    variants in order of first appearance."""
    groups: dict[ModelVariant | None, list] = {None: []}
    for s in specs:
        groups.setdefault(variant_of(s), []).append(s)
    return groups


@dataclasses.dataclass
class _Run:
    """The state one report run builds up, step by step (see :func:`_run_report`)."""

    opts: ReportOptions
    out: Path  # the staging folder
    step: _Steps
    cfgs: list[ReplayConfig] = dataclasses.field(default_factory=list)  # set by use_configs
    variant_of: dict[str, ModelVariant | None] = dataclasses.field(default_factory=dict)  # config -> its variant
    t_start: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    model: Any = None
    tok: Any = None
    mname: str | None = None
    record_plan: str = "every Linear layer"  # what the traces hold (fmtlab.analysis.model_plan)
    encoder: bool = False  # a sentence encoder: embedding agreement instead of perplexity
    enc_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    enc_skipped: list[str] = dataclasses.field(default_factory=list)
    variants: VariantSession | None = None
    traces: list = dataclasses.field(default_factory=list)
    calibs: list = dataclasses.field(default_factory=list)
    cal_layers: str | None = None
    results: list = dataclasses.field(default_factory=list)
    summary_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    budget: Any = None
    ppl_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    methods: list = dataclasses.field(default_factory=list)
    acc_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    worst: dict[str, Any] | None = None
    x_worst: Any = None
    massive: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    figs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 1)

    @property
    def trace_dir(self) -> Path:
        return Path(self.opts.out) / "traces"  # kept across runs for reuse (not staged)

    @property
    def ppl_specs(self) -> tuple[str, ...]:
        return tuple(self.opts.ppl_configs) if self.opts.perplexity else ()

    def use_configs(self, configs: tuple[str, ...]) -> None:
        """Replay ``configs``: the options, the parsed configs and the variant of each."""
        self.opts = dataclasses.replace(self.opts, configs=tuple(configs))
        parsed = [parse_variant_config(c) for c in self.opts.configs]
        self.cfgs, self.variant_of = [c for c, _ in parsed], {c.name: v for c, v in parsed}

    def used_variants(self) -> list[ModelVariant]:
        """The variants the replay and perplexity configs run behind, in order of first appearance."""
        found = [self.variant_of[c.name] for c in self.cfgs]
        if not self.encoder:  # an encoder's end-to-end check skips variant configs (encoder_section)
            found += [parse_variant_config(c)[1] for c in self.ppl_specs]
        return list(dict.fromkeys(v for v in found if v is not None))

    @property
    def main_res(self):
        return self.results[0]

    @property
    def lin_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.main_res.rows if r["kind"] == "linear"]


# ------------------------------------------------------------------------------------ steps

def _load_model(run: _Run) -> None:
    """Open given traces; load the model where anything needs it (recording, perplexity, claims,
    variants) and check every sequence length against it."""
    opts = run.opts
    with run.timed("load model"):
        if opts.trace:
            run.step(f"using the trace {opts.trace}")
            run.traces.append(open_trace(opts.trace, verify=opts.verify))
            run.mname = (run.traces[0].manifest.get("model") or {}).get("name")
            if opts.calib_trace:
                run.calibs.append(open_trace(opts.calib_trace, verify=opts.verify))
        if not opts.trace or opts.perplexity or not opts.calib_trace or bool(opts.methods) or run.used_variants():
            from fmtlab.models.loading import load_default_model, load_model, model_name  # lazy: imports torch
            from fmtlab.models.record import check_seq_len, find_blocks  # lazy: imports torch

            run.step(f"loading model {opts.model or 'SmolLM2-135M-Instruct (embedded default)'}")
            run.model, run.tok = load_default_model() if opts.model is None else load_model(opts.model)
            run.mname = run.mname or model_name(run.model)
            run.encoder = not is_language_model(run.model)
            if run.encoder and opts.configs == REPORT_CONFIGS:  # the default +gptq rows are a decoder study
                run.step("encoder: the default replay configs without their +gptq rows")
                run.use_configs(DEFAULT_CONFIGS)
                opts = run.opts
            if not opts.trace:  # a large model records a block subset (fmtlab.analysis.model_plan)
                plan = record_plan(model_params(run.model), [b for b, _ in find_blocks(run.model)], opts.layers)
                run.record_plan = plan.note
                if plan.layers != opts.layers:
                    run.step(f"recording plan: {plan.note}")
                    run.opts = opts = dataclasses.replace(opts, layers=plan.layers)
            for L in list(opts.seq_lens) + ([opts.ppl_seq_len] if opts.perplexity and not run.encoder else []):
                check_seq_len(run.model, L)  # before any recording or scoring
    # the perplexity check fits static scales on every Linear layer: its calibration trace holds all
    ppl_cal = any(needs_calibration(resolve_config(parse_variant_config(c)[0])) for c in run.ppl_specs)
    run.cal_layers = None if ppl_cal else opts.layers


def _fit_variants(run: _Run) -> None:
    """Fit every model variant the configs use, once each, on the calibration split, and apply it."""
    used = run.used_variants()
    if not used:
        return
    with run.timed("variants"):
        run.variants = VariantSession(run.model, run.tok, run.step, run.opts.progress)
        for v in used:
            run.variants.applied(v)


def _record_traces(run: _Run) -> None:
    """Per sequence length: the evaluation and calibration traces (reused when they match)."""
    opts = run.opts

    def get_trace(path: Path, split: str, L: int, layers: str | None):
        tr = _reuse_trace(path, run.mname, L, opts.n_sequences, layers, split, opts.verify)
        if tr is not None:
            run.step(f"reusing trace {path} ({tr.nbytes / 2**20:.0f} MiB)")
            return tr
        from fmtlab.models.record import record  # lazy: imports torch

        run.step(f"recording {opts.n_sequences} x {L} tokens of the {split} texts into {path}")
        record(run.model, run.tok, default_texts(split), out=str(path), seq_len=L, n_sequences=opts.n_sequences,
               layers=layers, residual=True, overwrite=True, progress=opts.progress,
               text_info={"source": "wiki", "split": split})
        _stamp_report_layers(path, layers)
        return open_trace(str(path), verify=False)  # just written

    lens = [t.manifest.get("seq_len") for t in run.traces] if opts.trace else list(opts.seq_lens)
    for L in lens:
        with run.timed(f"record seq{L}"):
            if not opts.trace:
                run.traces.append(get_trace(run.trace_dir / f"seq{L}", "eval", L, opts.layers))
            if not run.calibs or not opts.trace:
                run.calibs.append(get_trace(run.trace_dir / f"calib_seq{L}", "calib", L, run.cal_layers))


def _replay(run: _Run) -> None:
    """Replay every config through the evaluation traces: plain configs on the recorded traces,
    variant configs on traces recorded behind their variant."""
    opts = run.opts
    groups = _grouped(run.cfgs, lambda c: run.variant_of[c.name])
    with make_executor(opts.scheduler, opts.workers) if opts.scheduler else contextlib.nullcontext() as ex:
        for i, tr in enumerate(run.traces):
            L = tr.manifest.get("seq_len")
            with run.timed(f"replay seq{L}"):
                run.step(f"replaying {len(run.cfgs)} configs through {len(tr.layers)} layers (seq_len {L})")
                kw = dict(kinds=("linear", "residual"), max_tokens=opts.max_tokens, workers=opts.workers,
                          progress=opts.progress, label=f"seq{L}", executor=ex)
                res = None
                for v, cfgs in groups.items():
                    if not cfgs:
                        continue
                    if v is None:
                        more = replay(tr, cfgs, calib=run.calibs[i], **kw)
                    else:
                        more = run.variants.replay(v, cfgs, run.trace_dir / f"seq{L}_{v.slug}",
                                                   run.trace_dir / f"calib_seq{L}_{v.slug}", L, opts.n_sequences,
                                                   opts.layers, run.cal_layers, base_trace=tr,
                                                   base_calib=run.calibs[i], **kw)
                    res = more if res is None else res + more
                res.write(str(run.out / "tables"), stem=f"replay_seq{L}")
                run.results.append(res)
    if not run.lin_rows:
        raise FmtlabError("the trace holds no Linear layer inputs to replay")


def _price(run: _Run) -> None:
    """Price every config with the MAC-unit cost model; the configs table's rows."""
    with run.timed("hardware"):
        run.step("pricing every config with the MAC-unit cost model")
        by_model = {r["config"]: r for r in run.main_res.by_model if r["kind"] == "linear"}
        bw, ba = (s.strip() for s in run.opts.area_budget.split(" x "))
        run.budget = mac_cost(bw, ba)
        for c in run.cfgs:
            fitted_w = getattr(run.variant_of.get(c.name), "weights", "")
            if c.weight is None and fitted_w:  # +gptq / +awq hold the config's weight quantizer
                c = dataclasses.replace(c, weight=fitted_w)
            p = price_config(c)
            m = by_model.get(c.name, {})
            run.summary_rows.append({
                "config": c.name, "weights": c.weight or "fp32", "activations": c.act or "fp32",
                "transform": c.transform or "",
                "act_scales": ("fp32" if c.act is None else f"static ({c.act_calib}, calib)" if c.act_calib
                               else "dynamic, per sequence")
                              + ("; transform fitted on calib" if needs_calibration(resolve_config(c))
                                 and not c.act_calib else ""),
                "pooled_out_sqnr_db": m.get("pooled_out_sqnr_db"), "min_out_sqnr_db": m.get("min_out_sqnr_db"),
                "a_underflow_rate": m.get("mean_a_underflow_rate"), "a_clip_rate": m.get("mean_a_clip_rate"),
                "w_underflow_rate": m.get("mean_w_underflow_rate"),
                "mac_unit": p["mac_unit"], "area_um2": p["area_um2"], "area_ge": p["area_ge"],
                "energy_pj": p["energy_pj"],
                "area_vs_budget": p["area_ge"] / run.budget.area_ge_per_mac if finite(p["area_ge"]) else math.nan,
                "hw_note": p["hw_note"],
            })


def _perplexity(run: _Run) -> None:
    """Perplexity of the perplexity configs on held-out windows (variant configs behind their
    variant); then the headline intervals and the configs table."""
    opts = run.opts
    if run.ppl_specs and run.encoder:
        with run.timed("embedding agreement"):
            run.step(f"sentence-embedding agreement of {len(run.ppl_specs)} configs with fp32 (encoder: "
                     "no perplexity)")
            run.enc_rows, run.enc_skipped = encoder_rows(run.model, run.tok, run.ppl_specs, run.calibs[0],
                                                         run.out / "tables")
    elif run.ppl_specs:
        from fmtlab.models.perplexity import eval_windows, perplexity_table  # lazy: imports torch

        with run.timed("perplexity"):
            run.step(f"perplexity of {len(opts.ppl_configs)} configs on held-out text "
                     f"({opts.ppl_sequences} x {opts.ppl_seq_len} tokens)")
            ids = eval_windows(run.tok, opts.ppl_seq_len, opts.ppl_sequences)
            L0 = run.calibs[0].manifest.get("seq_len")
            for v, specs in _grouped(run.ppl_specs, lambda s: parse_variant_config(s)[1]).items():
                if not specs:
                    continue
                if v is None:
                    run.ppl_rows += perplexity_table(run.model, run.tok, specs, ids=ids, progress=opts.progress,
                                                     calib=run.calibs[0])
                else:
                    run.ppl_rows += run.variants.perplexity_rows(
                        v, [parse_variant_config(s)[0] for s in specs], ids,
                        run.trace_dir / f"calib_seq{L0}_{v.slug}", L0, opts.n_sequences, run.cal_layers)
            for r in run.ppl_rows:
                r.pop("description", None)
            protocol.add_intervals([], run.main_res, run.ppl_rows)
            tables = run.out / "tables"
            write_csv(run.ppl_rows, tables / "perplexity.csv",
                      ["config", "ppl", "ppl_lo", "ppl_hi", "nll", "tokens", "seconds"])
            write_csv([{"config": r["config"], "sequence": i, "nll_sum": n, "tokens": t} for r in run.ppl_rows
                       for i, (n, t) in enumerate(zip(r["seq_nll"], r["seq_tokens"]))],
                      tables / "perplexity_per_sequence.csv")
            ppl_by = {r["config"]: r["ppl"] for r in run.ppl_rows}
            for s in run.summary_rows:
                s["perplexity"] = ppl_by.get(s["config"])
    protocol.add_intervals(run.summary_rows, run.main_res, run.ppl_rows)
    write_csv(run.summary_rows, run.out / "tables" / "configs.csv")


def _claims(run: _Run) -> None:
    """The "Methods from the papers" claims (fmtlab.analysis.methods.section)."""
    if run.opts.methods:
        with run.timed("method claims"):
            run.methods = run_for_report(run.opts, run.model, run.tok, run.step)


def _accumulation(run: _Run) -> None:
    """Accumulation error against accumulator width on the layer whose input has the largest
    max/median ratio (where accumulators are stressed most)."""
    with run.timed("accumulation"):
        tr0 = run.traces[0]
        run.worst = max(run.lin_rows, key=lambda r: r.get("in_max_over_median") or 0)
        meta = tr0.layers[run.worst["tensor"]]
        run.step(f"accumulation error vs accumulator width on {run.worst['tensor']}")
        x = tr0.tensor(meta["input"])
        run.x_worst = x.reshape(-1, x.shape[-1])
        run.acc_rows = accumulation_study(run.x_worst, tr0.tensor(meta["weight"]))
        write_csv(run.acc_rows, run.out / "tables" / "accumulation.csv")


def _plots(run: _Run) -> None:
    """Format grids, layer heatmaps, residual-stream outliers (and their table), the trade-off and
    the accumulation plot."""
    from fmtlab.analysis import plots  # lazy: imports matplotlib

    with run.timed("plots"):
        run.step("rendering plots")
        P, tr0, figs = run.out / "plots", run.traces[0], run.figs
        heat_rows = [dict(r, layer=layer_label(r)) for r in run.lin_rows if r["config"] != "fp32"]
        figs["grids"] = plots.plot_format_grids(GRID_FORMATS, run.x_worst, P / "format_grids.png",
                                                layer_name=f"input of {run.worst['tensor']}")
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
        if res_acts:
            run.massive = massive_activations(tr0, min_ratio=100.0)
            mx, names = [], []
            for n, info in res_acts:
                a = tr0.tensor(info["tensor"])
                mx.append(np.abs(a.reshape(-1, a.shape[-1])).max(axis=0))
                names.append(f"block {info.get('block')}")
            uniq: dict[tuple, dict[str, Any]] = {}
            for r in run.massive:  # one bar per (layer, token position, channel): the largest over sequences
                k = (r["layer"], r["token"], r["channel"])
                if k not in uniq or r["ratio"] > uniq[k]["ratio"]:
                    uniq[k] = r
            figs["outliers"] = plots.plot_outliers(np.stack(mx), names, list(uniq.values()), P / "outliers.png",
                                                   title=f"Residual-stream outliers of {run.mname}")
            write_csv(run.massive, run.out / "tables" / "massive_activations.csv")
        trade_pts = [dict(s, output_sqnr_db=s["pooled_out_sqnr_db"]) for s in run.summary_rows
                     if finite(s["area_um2"]) and finite(s.get("pooled_out_sqnr_db"))]
        if trade_pts:
            figs["tradeoff"] = plots.plot_tradeoff(trade_pts, P / "tradeoff.png")
        if any(finite(r["rel_error"]) for r in run.acc_rows):
            figs["accumulation"] = plots.plot_accumulation([r for r in run.acc_rows if finite(r["rel_error"])],
                                                           P / "accumulation.png")


def _write(run: _Run) -> dict[str, Any]:
    """Findings, report.md/html (with the explore section), report.json; returns the summary."""
    opts, out = run.opts, run.out
    stored = sorted(set(((run.traces[0].manifest.get("source_grid") or {}).get("types") or {}).values()))
    findings = headline_findings(run.summary_rows, run.massive, run.budget, opts.area_budget, run.ppl_rows,
                                 run.main_res, stored_grid=", ".join(stored))
    variant_rows = run.variants.descriptions() if run.variants is not None else []
    for d in variant_rows:
        run.timings[f"{d['variant']} fit"] = d["fit_seconds"]
    if variant_rows:
        write_csv(variant_rows, out / "tables" / "variants.csv")
    run.timings["total"] = round(time.perf_counter() - run.t_start, 1)
    doc = build_document(opts, run.mname, run.traces, run.results, run.summary_rows, run.ppl_rows, run.acc_rows,
                         run.massive, run.figs, findings, run.worst["tensor"], run.timings, out, run.methods,
                         variant_rows)
    add_encoder_section(doc, run.enc_rows, run.enc_skipped)  # fmtlab.analysis.encoder_section
    if run.encoder:  # inference_cost prices a decoded token (KV cache, LM head): not an encoder's forward
        cost_rows: list[dict[str, Any]] = []
        doc.heading("Energy per token: the whole inference")
        doc.paragraph("Not computed for an encoder: `fmtlab.hw.inference_cost` prices one decoded token of a "
                      "causal LM (KV-cache reads, LM head); an encoder runs whole sentences once. The per-MAC "
                      "area and energy of each config are in the configs table.")
    else:
        cost_rows = add_report_cost_section(doc, run)  # energy per token (fmtlab.analysis.cost_section)
    if run.record_plan != "every Linear layer":
        doc.paragraph(f"Recorded and replayed: {run.record_plan} (fmtlab.analysis.model_plan).")
    grid_rows = add_source_grid_section(doc, run)  # the weights' stored grid (fmtlab.analysis.source_grid_section)
    beyond = add_beyond_section(doc, run)  # KV cache / attention / accumulator configs (fmtlab.analysis.beyond_section)
    if opts.explore:  # design-space search on the same traces (fmtlab.explore.report_section)
        add_explore_section(doc, opts, run.traces[0].path, run.calibs[0].path, out, run.step)
    md, html = doc.write(out)
    final = Path(opts.out)  # where the staged files land
    summary = {"report_md": str(final / md.name), "report_html": str(final / html.name), "findings": findings,
               "timings_s": run.timings, "model": run.mname, "record_plan": run.record_plan, "configs": [c.name for c in run.cfgs]}
    report = {"summary": summary, "configs": run.summary_rows, "perplexity": run.ppl_rows,
              "accumulation": run.acc_rows, "massive_activations": run.massive, "methods": result_rows(run.methods),
              "energy_per_token": cost_rows,
              "embedding_agreement": run.enc_rows, "source_grid": grid_rows, "beyond_linear": beyond}
    if variant_rows:
        report["variants"] = variant_rows
    write_json(report, out / "tables" / "report.json")
    run.step(f"done in {run.timings['total']:.0f} s")
    return summary


# -------------------------------------------------------------------------------------- main

def run_report(opts: ReportOptions) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary dict (paths, headline findings, timings).

    The output folder is locked for the run (a second run on it fails at once); tables, plots and
    report.md/html are built in a staging folder and moved into place together at the end, so an
    interrupted or failed run leaves the previous report intact. Traces go to ``<out>/traces``.
    """
    with staged_dir(opts.out, quiet=not opts.progress) as stage:
        return _run_report(opts, stage)


def _run_report(opts: ReportOptions, out: Path) -> dict[str, Any]:
    """The pipeline, writing tables/plots/report files under ``out`` (the staging folder)."""
    (out / "plots").mkdir(exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    run = _Run(opts, out, _Steps(opts.progress))
    # a trace-only run needs no model: the default +gptq replay rows (weights fitted on the model)
    # are left out rather than loading the model and fitting 210 layers for them
    trace_only = opts.configs == REPORT_CONFIGS and opts.trace and not opts.perplexity and not opts.methods
    run.use_configs(DEFAULT_CONFIGS if trace_only else opts.configs)
    for step in (_load_model, _fit_variants, _record_traces, _replay, _price, _perplexity, _claims,
                 _accumulation, _plots):
        step(run)
    return _write(run)
