"""The report's "Source grid" section: what grid the model's weights were stored on, and which
weight results reproduce it.

A GGUF-shipped model's weights are already quantized (SmolLM2-135M: Q4_1 in every Linear layer).
The trace manifest states each layer's stored type (:mod:`fmtlab.models.source_grid`); this
section tabulates them per tensor group and, for every weight quantizer of the report's configs,
measures the share of weights that re-quantize to themselves on sampled layers (first, middle and
last block of each tensor group). A result whose share is at least
:data:`fmtlab.models.source_grid.REPRODUCING_SHARE` is flagged: that format and granularity can
represent the source grid, so its weight error is optimistic against a full-precision checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmtlab.models.source_grid import REPRODUCING_SHARE, self_reproducing_share, tensor_group
from fmtlab.analysis.tables import write_csv
from fmtlab.sim.quant import resolve


def _sampled_layers(trace) -> dict[str, list[str]]:
    """Per tensor group: the first, middle and last recorded layer that stores a weight."""
    by_group: dict[str, list[str]] = {}
    for name, info in trace.layers.items():
        if info.get("weight"):
            by_group.setdefault(tensor_group(name), []).append(name)
    return {g: sorted({names[0], names[len(names) // 2], names[-1]}, key=names.index) for g, names in by_group.items()}


def source_grid_rows(trace, weight_specs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (weight quantizer, tensor group): stored types, share of sampled weights that
    re-quantize to themselves, and the grid-reproducing flag. ``weight_specs``: {config: weight spec}."""
    grid = trace.manifest.get("source_grid") or {}
    types = grid.get("types", {})
    layers = _sampled_layers(trace)
    weights = {g: [np.asarray(trace.tensor(trace.layers[n]["weight"]), np.float32) for n in names]
               for g, names in layers.items()}
    rows = []
    by_spec: dict[str, list[str]] = {}
    for config, spec in weight_specs.items():
        if spec:
            by_spec.setdefault(str(spec), []).append(config)
    for spec, configs in by_spec.items():
        q = resolve(spec)
        for group, ws in weights.items():
            stored = sorted({types.get(n, "?") for n in layers[group]})
            share = float(np.mean([self_reproducing_share(w, q) for w in ws]))
            rows.append({"weights": spec, "configs": " ".join(configs), "tensor_group": group,
                         "stored_types": "/".join(stored), "sampled_layers": len(ws),
                         "reproduced_share": share, "grid_reproducing": share >= REPRODUCING_SHARE})
    return rows


def add_source_grid_section(doc, run) -> list[dict[str, Any]]:
    """Write ``tables/source_grid.csv`` and the section (nothing when the model did not come from a
    GGUF file: its manifest states no source grid). Returns the rows."""
    trace = run.traces[0]
    grid = trace.manifest.get("source_grid")
    if not grid:
        return []
    rows = source_grid_rows(trace, {c.name: c.weight for c in run.cfgs})
    doc.heading("Source grid of the weights")
    groups = ", ".join(f"{g}: " + "/".join(f"{t} x{n}" for t, n in kinds.items())
                       for g, kinds in grid.get("groups", {}).items())
    doc.paragraph(f"The model's weights come from `{grid.get('file')}`, stored as {groups}. De-quantized, "
                  "they still lie on that grid: a weight format that contains it reproduces them and looks "
                  "better than it would on a full-precision checkpoint. Share of weights re-quantizing to "
                  f"themselves (sampled first/middle/last layer per group); flagged at >= {REPRODUCING_SHARE:.0%}.")
    flagged = sorted({r["weights"] for r in rows if r["grid_reproducing"]})
    doc.bullets([f"Grid-reproducing weight results (optimistic on this model): {', '.join(flagged)}"] if flagged
                else ["No tested weight format reproduces the source grid."])
    if rows:
        doc.table([{**r, "reproduced_share": f"{100 * r['reproduced_share']:.2f}%"} for r in rows],
                  ["weights", "tensor_group", "stored_types", "reproduced_share", "grid_reproducing", "configs"])
        write_csv(rows, run.out / "tables" / "source_grid.csv")
    return rows
