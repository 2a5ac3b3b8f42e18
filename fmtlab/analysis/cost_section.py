"""The report's energy-per-token section: what each config costs for a whole decoded token.

:func:`cost_rows` prices every config with :func:`fmtlab.hw.inference_cost` (the model's shape from
the trace manifest, batch 1 and 64 decode at a stated context, HBM2 memory, 45 nm logic), LLM.int8()'s
outlier share measured on the trace (the share of input columns with |x| >= 6 in the recorded
sequences, weighted by each layer's MACs); :func:`plot_energy_pareto` draws accuracy against energy
per token at both batches, :func:`plot_energy_breakdown` the stacked breakdown per config;
:func:`add_cost_section` writes the table, the plots and the text into a report document.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from fmtlab.analysis.tables import write_csv
from fmtlab.hw import SMOLLM2_135M, ModelShape, inference_cost
from fmtlab.hw.inference import BREAKDOWN_KEYS
from fmtlab.hw.memory import get_memory

__all__ = ["cost_rows", "outlier_share", "plot_energy_pareto", "plot_energy_breakdown", "add_cost_section",
           "BATCHES", "CONTEXT"]

#: decode batches the section compares
BATCHES = (1, 64)
#: tokens already in each sequence's KV cache
CONTEXT = 1024
_LABELS = {"mac_linear": "MACs (Linear)", "mac_attention": "MACs (attention)", "mac_head": "MACs (LM head)",
           "scale_quant": "scale + quantizer units", "transform": "transforms", "sram": "on-chip SRAM",
           "offchip_weights": "off-chip weights", "offchip_kv": "off-chip KV cache"}


def outlier_share(lin_rows: Sequence[Mapping[str, Any]], model: ModelShape | None = None,
                  threshold: float = 6.0) -> float | None:
    """Share of Linear-layer input columns LLM.int8() keeps in fp16: each recorded input's
    ``in_channels_ge6`` (columns with |x| >= 6 in a sequence, from the replay rows) over its width,
    weighted by the layer's MACs (out features from ``model`` by layer type, else 1). None without
    the statistic, or for a threshold other than 6 (the statistic's)."""
    if threshold != 6.0:
        return None
    outs = {lin.name: lin.out_features for lin in (model.linears if model else ())}
    seen: dict[str, tuple[float, float]] = {}
    for r in lin_rows:
        n_ge, k = r.get("in_channels_ge6"), r.get("cols")
        if not _finite(n_ge) or not _finite(k) or not float(k) or r.get("tensor") in seen:
            continue
        n = float(outs.get(str(r.get("layer_type")), 1))
        seen[r["tensor"]] = (float(n_ge) * n, float(k) * n)
    if not seen:
        return None
    num, den = (sum(v[i] for v in seen.values()) for i in (0, 1))
    return num / den


def _threshold(transform: Any) -> float | None:
    """LLM.int8()'s threshold of a transform spec or object (None: not LLM.int8())."""
    name = transform if isinstance(transform, str) else getattr(transform, "name", "")
    if not str(name or "").startswith("llm_int8"):
        return None
    m = re.search(r"\(\s*(?:threshold\s*=\s*)?([0-9]+(?:\.[0-9]*)?)", str(name))
    return float(m.group(1)) if m else 6.0


def cost_rows(cfgs: Sequence[Any], accuracy: Mapping[str, Mapping[str, Any]], model: ModelShape | None = None,
              lin_rows: Sequence[Mapping[str, Any]] = (), *, batches: Sequence[int] = BATCHES,
              context: int = CONTEXT, node: int = 45, memory: str = "hbm2",
              kv_prefix: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per (config, batch): energy per token (uJ) and its breakdown, memory share, bytes per
    token, capacities, MAC-array area at 1000 tokens/s, the config's accuracy columns and notes.

    cfgs: replay configs (name, weight, act, transform, act_calib); accuracy: config name ->
    {"pooled_out_sqnr_db", "perplexity", ...}; model: default SmolLM2-135M; lin_rows: replay rows of
    Linear layers (for LLM.int8()'s outlier share); kv_prefix: config name -> KV prefix tokens
    (CushionCache)."""
    model = model or SMOLLM2_135M
    share = outlier_share(lin_rows, model)
    rows = []
    for c in cfgs:
        t = getattr(c, "transform", None)
        thr = _threshold(t)
        os_ = share if thr == 6.0 else None
        acc = accuracy.get(c.name, {})
        for b in batches:
            try:
                r = inference_cost(model, c, batch=b, context=context, node=node, memory=memory,
                                   kv_prefix=int((kv_prefix or {}).get(c.name, 0)), outlier_share=os_)
            except Exception as exc:  # noqa: BLE001 - an unpriceable config is listed with its reason
                rows.append({"config": c.name, "batch": b, "energy_uj": math.nan, "note": f"not priced: {exc}"})
                continue
            row = {"config": c.name, "batch": b, "energy_uj": r.energy_j * 1e6,
                   **{f"{k}_uj": v * 1e6 for k, v in r.breakdown.items()},
                   "memory_share": r.memory_share, "bytes_per_token_mb": r.bytes_per_token / 1e6,
                   "weight_mb": r.weight_capacity_bytes / 1e6, "kv_cache_mb": r.kv_capacity_bytes / 1e6,
                   "mac_unit": r.mac_unit, "mac_array_mm2": r.mac_array_area_mm2,
                   "pooled_out_sqnr_db": acc.get("pooled_out_sqnr_db"), "perplexity": acc.get("perplexity"),
                   "outlier_share": os_, "note": "; ".join(r.notes)}
            rows.append(row)
    return rows


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def plot_energy_pareto(rows: Sequence[Mapping[str, Any]], out: Path, quality: str = "pooled_out_sqnr_db",
                       quality_label: str = "pooled layer-output SQNR [dB] (higher is better)") -> Path:
    """Accuracy against energy per token, one panel per batch, Pareto fronts in red."""
    import matplotlib  # lazy: matplotlib is only needed to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fmtlab.analysis.plots import _save, pareto_front  # lazy: imports matplotlib

    batches = sorted({int(r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        pts = [r for r in rows if r["batch"] == b and _finite(r.get(quality)) and _finite(r.get("energy_uj"))]
        if not pts:
            continue
        e = np.array([float(p["energy_uj"]) for p in pts])
        q = np.array([float(p[quality]) for p in pts])
        front = pareto_front(e, q)
        ax.scatter(e[~front], q[~front], color="0.5", label="dominated config")
        ax.scatter(e[front], q[front], color="tab:red", label="Pareto front")
        order = np.argsort(e[front])
        ax.plot(e[front][order], q[front][order], color="tab:red", lw=1)
        for ei, qi, p in zip(e, q, pts):
            ax.annotate(p["config"], (ei, qi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("energy per decoded token [uJ] (log scale)")
        ax.set_ylabel(quality_label)
        ax.set_title(f"batch {b} decode", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy against energy per token (MACs, scale units, SRAM, HBM)", fontsize=11)
    return _save(fig, out)


def plot_energy_breakdown(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Stacked bars of the energy breakdown per config, one panel per batch."""
    import matplotlib  # lazy: matplotlib is only needed to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fmtlab.analysis.plots import _save  # lazy: imports matplotlib

    batches = sorted({int(r["batch"]) for r in rows})
    fig, axes = plt.subplots(len(batches), 1, figsize=(12, 4.2 * len(batches)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, b in zip(axes[:, 0], batches):
        pts = [r for r in rows if r["batch"] == b and _finite(r.get("energy_uj"))]
        x = np.arange(len(pts))
        bottom = np.zeros(len(pts))
        for i, k in enumerate(BREAKDOWN_KEYS):
            v = np.array([float(p.get(f"{k}_uj", 0.0)) for p in pts])
            ax.bar(x, v, bottom=bottom, color=colors[i % len(colors)], label=_LABELS[k], width=0.75)
            bottom += v
        ax.set_xticks(x)
        ax.set_xticklabels([p["config"] for p in pts], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("uJ per decoded token")
        ax.set_title(f"batch {b} decode", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=8, ncol=4)
    fig.suptitle("Where the energy of a decoded token goes", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def add_cost_section(doc, rows: Sequence[Mapping[str, Any]], out: Path, *, model_name: str,
                     context: int = CONTEXT, node: int = 45, memory: str = "hbm2") -> dict[str, Path]:
    """Write ``tables/energy_per_token.csv``, the two plots under ``plots/`` and the section into
    ``doc`` (a :class:`fmtlab.analysis.document.Document`); returns the plot paths."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "tables" / "energy_per_token.csv")
    mem = get_memory(memory)
    doc.heading("Energy per token: the whole inference")
    doc.paragraph(
        f"`fmtlab.hw.inference_cost` for {model_name}: one decoded token at batch "
        f"{' and '.join(str(b) for b in sorted({r['batch'] for r in rows}))}, {context} tokens in each sequence's "
        f"KV cache (bf16), {node} nm logic. Breakdown: every Linear layer's MACs at the config's MAC unit; "
        "attention (Q K^T, P V) and the LM head at a bf16 FMA (kept unquantized, as the configs leave them); "
        "scale and quantizer units (dynamic activation quantizer, per-output scale multiplies, NVFP4's E4M3 "
        "block-scale multiplies); transform overheads (online Hadamard adds, LLM.int8()'s fp16 outlier path at "
        "the outlier-column share measured on this trace; SmoothQuant / AQAS merged: 0); on-chip SRAM (every "
        "off-chip bit written and read once, layer inputs read and outputs written once) and off-chip reads of "
        "the weights (shared by the batch) and of each sequence's KV cache. "
        f"Memory energy per bit: off-chip {mem.offchip_pj_per_bit:g} pJ/bit (HBM2, attributed to O'Connor et al., "
        "MICRO 2017, not verified against the paper's text: an order-of-magnitude figure), "
        f"SRAM {mem.sram_pj_per_bit:.4g} pJ/bit at 45 nm (32 KB array, Horowitz ISSCC 2014: 20 pJ per 64-bit "
        "read). Softmax, norms and nonlinearities are not priced.")
    cols = ["config", "batch", "energy_uj", *[f"{k}_uj" for k in BREAKDOWN_KEYS], "memory_share",
            "bytes_per_token_mb", "weight_mb", "kv_cache_mb", "pooled_out_sqnr_db"]
    heads = {"energy_uj": "uJ/token", "memory_share": "memory share", "bytes_per_token_mb": "MB moved/token",
             "weight_mb": "weights [MB]", "kv_cache_mb": "KV cache [MB]", "pooled_out_sqnr_db": "out SQNR [dB]",
             **{f"{k}_uj": _LABELS[k] for k in BREAKDOWN_KEYS}}
    doc.table(rows, cols, headers=heads)
    notes = sorted({f"{r['config']}: {r['note']}" for r in rows if r.get("note") and r["batch"] == min(r2["batch"] for r2 in rows)})
    if notes:
        doc.bullets(notes)
    paths = {}
    if any(_finite(r.get("pooled_out_sqnr_db")) for r in rows):
        paths["energy_pareto"] = plot_energy_pareto(rows, out / "plots" / "energy_pareto.png")
        doc.image("plots/energy_pareto.png", "Pooled layer-output SQNR against energy per decoded token at batch "
                  "1 and 64; red: Pareto front.")
    paths["energy_breakdown"] = plot_energy_breakdown(rows, out / "plots" / "energy_breakdown.png")
    doc.image("plots/energy_breakdown.png", "Energy per decoded token by term, per config (stacked).")
    return paths


def _kv_prefix_tokens(run) -> dict[str, int]:
    """Config name -> KV prefix tokens of the model variant it runs behind (CushionCache: its
    prefix, held in every sequence's KV cache)."""
    out: dict[str, int] = {}
    if getattr(run, "variants", None) is None:
        return out
    for c in run.cfgs:
        v = run.variant_of.get(c.name)
        if v is None or "kv_prefix" not in run.variants.applied(v).record_kw:
            continue
        toks = getattr(run.variants.fitted(v).state, "tokens", None)
        if toks is not None:
            out[c.name] = len(toks)
    return out


def add_report_cost_section(doc, run) -> list[dict[str, Any]]:
    """The section for ``fmtlab report`` (its run state: configs, summary rows with accuracy and
    perplexity, Linear replay rows, traces, model variants); returns the rows (for report.json)."""
    try:
        model = ModelShape.from_manifest(run.traces[0].manifest)
    except Exception:  # noqa: BLE001 - a trace without the model config: the section says which model
        model = SMOLLM2_135M
    acc = {r["config"]: r for r in run.summary_rows}
    rows = cost_rows(run.cfgs, acc, model, run.lin_rows, kv_prefix=_kv_prefix_tokens(run))
    add_cost_section(doc, rows, run.out, model_name=model.name)
    return rows
