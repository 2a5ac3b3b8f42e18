"""Plots for design reviews: every figure has a title, axis labels with units, and a legend.

All functions take plain data (numpy arrays, lists of dict rows), write one PNG and return its
path. They use matplotlib's non-interactive Agg backend, so they run on machines with no screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmtlab.explore.pareto import pareto_front  # noqa: E402
from fmtlab.formats import Format, get_format  # noqa: E402
from fmtlab.safe_io import atomic_open  # noqa: E402

_DPI = 110


def _save(fig, out: Path) -> Path:
    """Write ``fig`` as PNG to ``out`` atomically (exclusive temporary file, umask mode)."""
    out = Path(out)
    try:
        with atomic_open(out, "wb") as fh:
            fig.savefig(fh, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def plot_format_grids(formats: Sequence["Format | str"], activations: np.ndarray, out: Path,
                      layer_name: str = "", scale_rule: str = "absmax") -> Path:
    """Each format's representable magnitudes over a histogram of |x| of one real layer.

    The format is scaled per tensor so that its max maps to max|x| (absmax rule); values whose
    magnitude lies below half the smallest positive level underflow to zero (red band), values
    above the largest level clip (none with absmax). The x axis is log-scaled |x|.
    """
    x = np.abs(np.asarray(activations, dtype=np.float64).reshape(-1))
    x = x[np.isfinite(x)]
    nz = x[x > 0]
    if nz.size == 0:
        raise ValueError("plot_format_grids needs activations with at least one nonzero finite value")
    amax = float(nz.max())
    lo = max(float(nz.min()), amax * 1e-9)
    bins = np.logspace(np.log10(lo), np.log10(amax) + 0.05, 120)
    fmts = [get_format(f) for f in formats]
    fig, axes = plt.subplots(len(fmts), 1, figsize=(9, 1.6 * len(fmts) + 0.8), sharex=True, squeeze=False)
    for ax, fmt in zip(axes[:, 0], fmts):
        ax.hist(nz, bins=bins, color="0.6", label="|x| histogram")
        ax.set_yscale("log")
        scale = amax / fmt.max
        levels = np.unique(np.abs(fmt.values()[np.isfinite(fmt.values())]))
        levels = levels[levels > 0] * scale
        for v in levels:
            if v >= lo:
                ax.axvline(v, color="tab:blue", lw=0.6, alpha=0.7)
        under = levels.min() / 2
        frac_under = float(np.mean(nz < under))
        ax.axvspan(lo, max(under, lo), color="tab:red", alpha=0.15,
                   label=f"underflow to 0: {100 * frac_under:.1f}% of nonzeros")
        ax.set_ylabel("count")
        ax.set_title(f"{fmt.name}: {len(levels)} positive levels (blue), scale = max|x| / {fmt.max:g}",
                     fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("|activation| (log scale, unscaled model units)")
    fig.suptitle(f"Format grids over real activations{': ' + layer_name if layer_name else ''} "
                 f"({scale_rule} per-tensor scale)", fontsize=11)
    return _save(fig, out)


def plot_layer_heatmap(rows: Iterable[Mapping], metric: str, out: Path, title: str, unit: str,
                       cmap: str = "viridis", log: bool = False) -> Path:
    """Heatmap of ``metric`` with one row per config and one column per layer.

    rows: dicts with keys "config", "layer" (a name) and ``metric``. Layers keep their first-seen
    order (the model's order). ``log`` colours by log10 of the value (for rates spanning decades).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("plot_layer_heatmap needs at least one row")
    configs = list(dict.fromkeys(r["config"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    grid = np.full((len(configs), len(layers)), np.nan)
    ci = {c: i for i, c in enumerate(configs)}
    li = {n: i for i, n in enumerate(layers)}
    for r in rows:
        v = r.get(metric)
        grid[ci[r["config"]], li[r["layer"]]] = np.nan if v is None else float(v)
    shown = grid
    label = f"{metric} [{unit}]"
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.log10(np.where(grid > 0, grid, np.nan))
        label = f"log10 {metric} [{unit}]"
    fig, ax = plt.subplots(figsize=(min(18, 3 + 0.06 * len(layers)), 1.2 + 0.35 * len(configs)))
    im = ax.imshow(shown, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    step = max(1, len(layers) // 30)
    ax.set_xticks(range(0, len(layers), step), [layers[i] for i in range(0, len(layers), step)],
                  rotation=90, fontsize=6)
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("config")
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax, pad=0.01)
    cb.set_label(label, fontsize=8)
    return _save(fig, out)


def plot_outliers(max_abs: np.ndarray, layer_names: Sequence[str], massive: Sequence[Mapping],
                  out: Path, title: str = "Activation outliers") -> Path:
    """Left: log10 max|x| per (layer, channel). Right: the massive activations (value / median)
    labelled by token position and channel.

    max_abs: [n_layers, n_channels]; massive: rows with layer, token, channel, value, ratio.
    """
    m = np.asarray(max_abs, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != len(layer_names):
        raise ValueError(f"max_abs must be [n_layers={len(layer_names)}, n_channels], got {m.shape}")
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    with np.errstate(divide="ignore"):
        im = a0.imshow(np.log10(np.maximum(m, 1e-12)), aspect="auto", cmap="magma", interpolation="nearest")
    step = max(1, len(layer_names) // 25)
    a0.set_yticks(range(0, len(layer_names), step), [layer_names[i] for i in range(0, len(layer_names), step)],
                  fontsize=6)
    a0.set_xlabel("channel (hidden dimension index)")
    a0.set_ylabel("layer")
    a0.set_title("max |x| per layer and channel", fontsize=10)
    cb = fig.colorbar(im, ax=a0, pad=0.01)
    cb.set_label("log10 max |x| (model units)", fontsize=8)
    if massive:
        ratios = [float(r["ratio"]) for r in massive]
        labels = [f"{r['layer']} t{r['token']} c{r['channel']}" for r in massive]
        order = np.argsort(ratios)[::-1][:20]
        a1.barh(range(len(order)), [ratios[i] for i in order], color="tab:orange", label="|x| / median |x|")
        a1.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=6)
        a1.invert_yaxis()
        a1.set_xscale("log")
        a1.legend(fontsize=7)
    else:
        a1.text(0.5, 0.5, "no massive activations found", ha="center", va="center")
    a1.set_xlabel("ratio to the median magnitude (log scale)")
    a1.set_title("massive activations (layer, token t, channel c)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def plot_tradeoff(points: Sequence[Mapping], out: Path, quality: str = "output_sqnr_db",
                  quality_label: str = "layer output SQNR [dB] (higher is better)") -> Path:
    """Accuracy against MAC area and energy per config, Pareto fronts marked.

    points: dicts with "config", "area_um2", "energy_pj" and ``quality``.
    """
    pts = [p for p in points if p.get(quality) is not None]
    if not pts:
        raise ValueError(f"plot_tradeoff needs points with a {quality!r} value")
    names = [p["config"] for p in pts]
    q = np.array([float(p[quality]) for p in pts])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, xlabel in ((axes[0], "area_um2", "MAC unit area [um^2]"),
                            (axes[1], "energy_pj", "energy per MAC [pJ]")):
        c = np.array([float(p[key]) for p in pts])
        front = pareto_front(c, q)
        ax.scatter(c[~front], q[~front], color="0.5", label="dominated config")
        ax.scatter(c[front], q[front], color="tab:red", label="Pareto front")
        order = np.argsort(c[front])
        ax.plot(c[front][order], q[front][order], color="tab:red", lw=1)
        for ci, qi, n in zip(c, q, names):
            ax.annotate(n, (ci, qi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + " (log scale)")
        ax.set_ylabel(quality_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("accuracy vs area", fontsize=10)
    axes[1].set_title("accuracy vs energy", fontsize=10)
    fig.suptitle("Format trade-off: accuracy against MAC cost", fontsize=11)
    return _save(fig, out)


def plot_accumulation(rows: Sequence[Mapping], out: Path) -> Path:
    """Dot-product error against accumulator width, one line per config.

    rows: dicts with "config", "acc_bits", "rel_error" (relative error vs the exact dot product)
    and optionally "accumulator" (a name shown beside each point). Exact results (error 0) cannot
    sit on a log axis: they are drawn as hollow triangles on a floor line, labelled as such.
    """
    rows = [r for r in rows if r.get("rel_error") is not None and np.isfinite(float(r["rel_error"]))]
    if not rows:
        raise ValueError("plot_accumulation needs at least one row with a finite rel_error")
    nonzero = [float(r["rel_error"]) for r in rows if float(r["rel_error"]) > 0]
    floor = (min(nonzero) / 100) if nonzero else 1e-12
    fig, ax = plt.subplots(figsize=(8, 4.5))
    exact_labelled = False
    for cfg in dict.fromkeys(r["config"] for r in rows):
        rs = sorted((r for r in rows if r["config"] == cfg), key=lambda r: r["acc_bits"])
        bits = np.array([float(r["acc_bits"]) for r in rs])
        err = np.array([float(r["rel_error"]) for r in rs])
        line, = ax.plot(bits, np.maximum(err, floor), label=cfg, lw=1.2)
        nz = err > 0
        ax.scatter(bits[nz], err[nz], color=line.get_color(), zorder=3)
        if (~nz).any():
            ax.scatter(bits[~nz], np.full((~nz).sum(), floor), marker="v", facecolors="none",
                       edgecolors=line.get_color(), zorder=3,
                       label=None if exact_labelled else "exact (error 0), drawn on the floor")
            exact_labelled = True
        for r, b, e in zip(rs, bits, err):
            if r.get("accumulator") and not str(r["accumulator"]).startswith("int"):
                ax.annotate(str(r["accumulator"]), (b, max(e, floor)), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
    ax.axhline(floor, color="0.7", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("accumulator width [bits]")
    ax.set_ylabel("relative L2 error of the dot products vs exact")
    ax.set_title("Accumulation error against accumulator width (bit-accurate datapath)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)
