"""The text of `fmtlab report`: its headline findings and the markdown/HTML document.

Split from :mod:`fmtlab.analysis.report` (which runs the pipeline); every function here only
formats results it is given.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmtlab import __version__
from fmtlab.analysis.document import Document
from fmtlab.analysis.methods.section import add_section
from fmtlab.analysis.protocol import PROTOCOL, comparisons, sqnr_text, with_ci


def layer_label(row: dict[str, Any]) -> str:
    blk = row.get("block")
    op = str(row.get("layer_type") or row.get("tensor") or row.get("op"))
    op = op.rsplit(".", 1)[-1]  # "self_attn.q_proj" -> "q_proj"
    return f"b{blk}.{op}" if blk is not None else op


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from fmtlab.models.perplexity import ranks  # lazy: fmtlab.models imports torch

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 3 or np.std(ra) == 0 or np.std(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def headline_findings(rows, massive, budget, budget_name, ppl_rows, res=None, stored_grid: str = "") -> list[str]:
    """The report's headline bullets. ``stored_grid``: the stored GGUF types of the model's Linear
    weights (e.g. "Q4_1"), empty for a full-precision checkpoint (no understated-weight caveat)."""

    out: list[str] = []
    priced = [r for r in rows if finite(r["area_ge"]) and finite(r.get("pooled_out_sqnr_db"))]
    under = [r for r in priced if r["area_ge"] <= budget.area_ge_per_mac * (1 + 1e-9)]
    if under:
        best = max(under, key=lambda r: r["pooled_out_sqnr_db"])
        cheapest = min(under, key=lambda r: r["area_ge"])
        caveat = (" (its transform's per-token overhead is priced in the energy-per-token section, not in "
                  "this per-MAC area)") if best.get("transform") else ""
        by_ppl = [r for r in under if finite(r.get("perplexity"))]
        if by_ppl:
            bp = min(by_ppl, key=lambda r: r["perplexity"])

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
    if a and b and finite(a.get("pooled_out_sqnr_db")) and finite(b.get("pooled_out_sqnr_db")):
        da = b["pooled_out_sqnr_db"] - a["pooled_out_sqnr_db"]
        area = (b["area_ge"] / a["area_ge"]) if finite(a["area_ge"]) and finite(b["area_ge"]) else math.nan
        out.append(f"W4A8 dINT4 vs INT4 (per-channel weights): {da:+.2f} dB pooled layer-output SQNR for "
                   f"{100 * (area - 1):+.0f}% MAC area; weight underflow {a['w_underflow_rate']:.3f} -> "
                   f"{b['w_underflow_rate']:.3f}" + (f" (the weights were stored as {stored_grid} in the GGUF, so "
                                                     "4-bit weight error is understated: see the note below)."
                                                     if stored_grid else "."))
    if ppl_rows:
        base = next((r["ppl"] for r in ppl_rows if r["config"] == "fp32"), None)
        worst = max(ppl_rows, key=lambda r: r["ppl"] if finite(r["ppl"]) else math.inf)
        if base:

            b = next(r for r in ppl_rows if r["config"] == "fp32")
            out.append(f"Perplexity: FP32 {with_ci(base, b.get('ppl_lo'), b.get('ppl_hi'))}; the worst config, "
                       f"{worst['config']}, reaches {with_ci(worst['ppl'], worst.get('ppl_lo'), worst.get('ppl_hi'))}.")
    out.extend(weight_fit_findings(ppl_rows or []))
    out.extend(weight_fit_sqnr_findings(rows or []))
    if res is not None:
        out.extend(comparisons(res, ppl_rows))
    return out


def weight_fit_findings(ppl_rows) -> list[str]:
    """RTN vs fitted (``+gptq`` / ``+awq``) weights: each pair's perplexity, and whether the
    ranking of the paired configs by perplexity changes between RTN and the fitted weights."""
    by = {r["config"]: r for r in ppl_rows if finite(r.get("ppl"))}
    out = []
    for method in ("gptq", "awq"):
        pairs = [(c, by[c], by[f"{c}+{method}"]) for c in by if f"{c}+{method}" in by]
        if not pairs:
            continue
        txt = "; ".join(f"{c} {with_ci(a['ppl'], a.get('ppl_lo'), a.get('ppl_hi'))} -> "
                        f"{with_ci(b['ppl'], b.get('ppl_lo'), b.get('ppl_hi'))}" for c, a, b in pairs)
        line = f"{method.upper()} weights (perplexity RTN -> {method.upper()}): {txt}."
        if len(pairs) > 1:
            rtn_order = [c for c, a, _ in sorted(pairs, key=lambda p: p[1]["ppl"])]
            fit_order = [c for c, _, b in sorted(pairs, key=lambda p: p[2]["ppl"])]
            line += (f" Ranking by perplexity unchanged ({' < '.join(rtn_order)})." if rtn_order == fit_order else
                     f" The ranking changes: RTN {' < '.join(rtn_order)}; {method.upper()} {' < '.join(fit_order)}.")
        out.append(line)
    return out


def weight_fit_sqnr_findings(rows) -> list[str]:
    """RTN vs fitted weights by pooled layer-output SQNR (the configs table's rows, replayed on the
    same recorded inputs): each pair with its interval, and whether the ranking of the paired
    configs changes (higher SQNR first)."""
    by = {r["config"]: r for r in rows if finite(r.get("pooled_out_sqnr_db"))}
    out = []
    for method in ("gptq", "awq"):
        pairs = [(c, by[c], by[f"{c}+{method}"]) for c in by if f"{c}+{method}" in by]
        if not pairs:
            continue
        txt = "; ".join(f"{c} {sqnr_text(a)} -> {sqnr_text(b)}" for c, a, b in pairs)
        line = f"{method.upper()} weights (pooled layer-output SQNR RTN -> {method.upper()}): {txt}."
        if len(pairs) > 1:
            rtn_order = [c for c, a, _ in sorted(pairs, key=lambda p: -p[1]["pooled_out_sqnr_db"])]
            fit_order = [c for c, _, b in sorted(pairs, key=lambda p: -p[2]["pooled_out_sqnr_db"])]
            line += (f" Ranking by SQNR unchanged ({' > '.join(rtn_order)})." if rtn_order == fit_order else
                     f" The ranking changes: RTN {' > '.join(rtn_order)}; {method.upper()} {' > '.join(fit_order)}.")
        out.append(line)
    return out


def build_document(opts, mname, traces, results, rows, ppl_rows, acc_rows, massive, figs, findings, worst_layer,
              timings, out: Path, methods=(), variants=()):
    """The report document; ``variants``: the rows of the model variants fitted
    (:meth:`fmtlab.methods.variants.VariantHandler.describe`), a section when there are any."""
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
                f"{opts.area_budget} unit in `area_vs_budget`); what is paid per output or per token rather "
                "than per MAC (scale multiplies, dynamic quantizers, transforms, memory traffic) is in the "
                "energy-per-token section.")
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
    stored = sorted(set(((m.get("source_grid") or {}).get("types") or {}).values()))
    if stored:  # a GGUF-shipped model: its weights already lie on the stored grid (source grid section)
        d.paragraph(f"Caveat: `{mname}` ships as a GGUF whose Linear weights are stored as {', '.join(stored)}, so "
                    "they already lie on a quantization grid; weight-quantization error measured on them "
                    "understates what a full-precision checkpoint would show (see the source-grid section). Use "
                    "`--model` with a full-precision checkpoint (e.g. `mpnet`, `minilm`) for weight studies.")
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
                if r["config"] in byname and finite(byname[r["config"]].get("pooled_out_sqnr_db"))
                and finite(r["ppl"])]
        if len(both) >= 3:
            rho = spearman([-p for p, _ in both], [s for _, s in both])
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
    if variants:
        d.heading("Model variants")
        d.paragraph("Configs named `<config>+<variant>` are measured behind a model variant, fitted once on the "
                    "calibration split (`calib` texts) and applied to a copy of the model; their traces are "
                    "recorded behind it.")
        d.table(list(variants), headers={"fit_seconds": "fit [s]"})
    if methods:
        add_section(d, methods)
    d.heading("Run")
    d.table([{"step": k, "seconds": v} for k, v in timings.items()])
    d.code("fmtlab report " + " ".join(argv_echo(opts)))
    return d


def argv_echo(opts) -> list[str]:
    """The `fmtlab report` options of ``opts`` (a ReportOptions) that differ from their defaults."""
    default = {f.name: f.default for f in dataclasses.fields(opts)}
    a = [f"--out {opts.out}"]
    if opts.model:
        a.append(f"--model {opts.model}")
    if opts.configs != default["configs"]:
        a.append("--configs " + ",".join(opts.configs))
    if opts.seq_lens != default["seq_lens"]:
        a.append("--seq-lens " + ",".join(map(str, opts.seq_lens)))
    if opts.n_sequences != default["n_sequences"]:
        a.append(f"--sequences {opts.n_sequences}")
    if opts.layers:
        a.append(f"--layers '{opts.layers}'")
    if not opts.perplexity:
        a.append("--no-perplexity")
    if opts.methods:
        a.append("--methods " + ",".join(opts.methods))
    return a
