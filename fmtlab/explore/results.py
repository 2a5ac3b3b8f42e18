"""Outputs of a search: trials.csv, pareto.csv, pareto.png, explore.json, and the report section.

The front is taken over every measured point: no other point is both cheaper-or-equal and
more-accurate-or-equal (strictly better in one); points without a finite accuracy are never on it.
The comparison with the report says, for each of the report's own Pareto configs (the front among
the report's configs as measured here), whether it is on the explore front or which front point
dominates it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from fmtlab.explore.objectives import ACCURACY_COLUMNS, COST_COLUMNS, ENERGY_COLUMNS
from fmtlab.explore.pareto import pareto_front
from fmtlab.safe_io import atomic_open, atomic_write_text, dumps_json
from fmtlab.sim.replay import rows_to_csv

__all__ = ["front_mask", "compare_with_report", "write_outputs", "plot_front", "TRIAL_COLUMNS"]

TRIAL_COLUMNS = (["trial", "on_front", "report_config", "accuracy", "cost", "weight", "activation", "transform",
                  "act_calib", "accumulator"] + list(ACCURACY_COLUMNS) + list(COST_COLUMNS) + list(ENERGY_COLUMNS) + ["error", "config"])


def front_mask(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pareto mask over ``rows`` (maximise "accuracy", minimise "cost")."""
    acc = np.array([_f(r.get("accuracy")) for r in rows])
    cost = np.array([_f(r.get("cost")) for r in rows])
    return pareto_front(cost, acc) if len(rows) else np.zeros(0, dtype=bool)


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def compare_with_report(rows: Sequence[dict[str, Any]], report_keys: dict[str, str]) -> list[dict[str, Any]]:
    """For each report Pareto config measured in ``rows``: on the explore front, or dominated by whom."""
    by_key = {r["key"]: r for r in rows}
    mine = [(n, by_key[k]) for n, k in report_keys.items() if k in by_key]
    if not mine:
        return []
    rmask = front_mask([r for _, r in mine])
    front = [r for r, m in zip(rows, front_mask(rows)) if m]
    out = []
    for (name, r), on_rep_front in zip(mine, rmask):
        if not on_rep_front:
            continue
        a, c = _f(r["accuracy"]), _f(r["cost"])
        dom = [f for f in front if _f(f["cost"]) <= c and _f(f["accuracy"]) >= a and f["key"] != r["key"]]
        best = max(dom, key=lambda f: (_f(f["accuracy"]) - a, c - _f(f["cost"])), default=None)
        out.append({"report_config": name, "accuracy": a, "cost": c, "on_explore_front": bool(r.get("on_front")),
                    "dominated_by": "" if best is None else best["config"],
                    "dominating_accuracy": math.nan if best is None else _f(best["accuracy"]),
                    "dominating_cost": math.nan if best is None else _f(best["cost"]),
                    "gain_db": math.nan if best is None else _f(best["accuracy"]) - a})
    return out


def plot_front(rows: Sequence[dict[str, Any]], out: str, accuracy: str, cost: str, title: str = "") -> str:
    """Scatter of every measured point, the front in red, the report's configs labelled."""
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if math.isfinite(_f(r.get("accuracy"))) and math.isfinite(_f(r.get("cost")))]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if pts:
        a = np.array([_f(r["accuracy"]) for r in pts])
        c = np.array([_f(r["cost"]) for r in pts])
        m = np.array([bool(r.get("on_front")) for r in pts])
        ax.scatter(c[~m], a[~m], s=10, color="0.6", label=f"measured point ({len(pts)})")
        order = np.argsort(c[m])
        ax.plot(c[m][order], a[m][order], "-o", color="tab:red", ms=4, lw=1, label=f"Pareto front ({m.sum()})")
        for r in pts:
            if r.get("report_config"):
                ax.scatter([_f(r["cost"])], [_f(r["accuracy"])], marker="s", s=30, facecolor="none",
                           edgecolor="tab:blue")
                ax.annotate(r["report_config"], (_f(r["cost"]), _f(r["accuracy"])), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color="tab:blue")
        ax.set_xscale("log")
    ax.set_xlabel(f"{cost} per MAC (log scale; lower is better)")
    ax.set_ylabel(f"{accuracy} [dB] (higher is better)")
    ax.set_title(title or "Design-space exploration: accuracy against MAC cost (blue squares: report configs)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    try:
        with atomic_open(out, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def write_outputs(result, space, out_dir: str) -> dict[str, Any]:
    """Write trials.csv, pareto.csv, pareto.png and explore.json into ``out_dir`` (each atomically);
    returns a summary (front size, comparison with the report, paths)."""
    rows = sorted(result.rows, key=lambda r: (r["trial"] is None, r["trial"]))
    mask = front_mask(rows)
    ref_by_key = {k: n for n, k in result.info.get("report_configs", {}).items()}
    for r, m in zip(rows, mask):
        r["on_front"] = bool(m)
        r["report_config"] = ref_by_key.get(r["key"], "")
    front = sorted([r for r in rows if r["on_front"]], key=lambda r: _f(r["cost"]))
    cmp_rows = compare_with_report(rows, result.info.get("report_configs", {}))
    paths = {n: os.path.join(out_dir, n) for n in ("trials.csv", "pareto.csv", "pareto.png", "explore.json")}
    atomic_write_text(paths["trials.csv"], rows_to_csv(rows, TRIAL_COLUMNS))
    atomic_write_text(paths["pareto.csv"], rows_to_csv(front, TRIAL_COLUMNS))
    plot_front(rows, paths["pareto.png"], space.objectives[0], space.objectives[1])
    summary = {"space": space.name, "objectives": list(space.objectives), "constraints": list(space.constraints),
               "node_nm": space.node, "measured": len(rows), "front_size": len(front),
               "front": [{k: r.get(k) for k in ("config", "accuracy", "cost", "report_config")} for r in front],
               "report_comparison": cmp_rows, **{k: v for k, v in result.info.items()}}
    atomic_write_text(paths["explore.json"], dumps_json(summary))
    summary["paths"] = paths
    return summary


def comparison_lines(cmp_rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per report Pareto config: kept on the front, or beaten (by whom, by how much)."""
    out = []
    for c in cmp_rows:
        if c["on_explore_front"]:
            out.append(f"{c['report_config']}: on the explore front ({c['accuracy']:.2f} dB at {c['cost']:.4g})")
        elif c["dominated_by"]:
            out.append(f"{c['report_config']} ({c['accuracy']:.2f} dB at {c['cost']:.4g}) is beaten by "
                       f"{c['dominated_by']} ({c['dominating_accuracy']:.2f} dB at {c['dominating_cost']:.4g}, "
                       f"{c['gain_db']:+.2f} dB)")
        else:
            out.append(f"{c['report_config']}: off the front with no single dominating point")
    return out


def front_perplexity(front: Sequence[dict[str, Any]], model, tokenizer, *, calib=None, seq_len: int = 128,
                     n_sequences: int = 4, texts=None, progress: bool = False) -> list[dict[str, Any]]:
    """Perplexity on held-out text (:func:`fmtlab.models.perplexity.perplexity_table`, the eval split
    unless ``texts``) of each front member's config, plus the fp32 reference; one row per config
    ("config", "ppl", "nll", "tokens") in front order, the reference first. ``calib``: the
    calibration trace for static scales / fitted transforms."""
    from fmtlab.models.perplexity import perplexity_table  # lazy: imports torch; explore's replay side stays torch-free

    cfgs = ["fp32"] + [r["config"] for r in front]
    rows = perplexity_table(model, tokenizer, cfgs, seq_len=seq_len, n_sequences=n_sequences, texts=texts,
                            progress=progress, calib=calib)
    return [{"config": c, "ppl": r["ppl"], "nll": r["nll"], "tokens": r["tokens"]} for c, r in zip(cfgs, rows)]
