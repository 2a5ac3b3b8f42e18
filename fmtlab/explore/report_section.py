"""The `fmtlab report --explore SPACE` section: a design-space search on the report's own traces.

The search scores on the report's evaluation trace and calibrates on its calibration trace (the
same protocol as the report's table), prices at the report's node (45 nm), and writes its files
under ``explore/`` in the report folder; the section shows the front, the plot and, for each of the
report's own Pareto configs, whether the front keeps it or beats it.
"""

from __future__ import annotations

import os
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.explore.results import comparison_lines, write_outputs
from fmtlab.explore.search import Evaluator, search
from fmtlab.explore.space import load_space
from fmtlab.sim.executor import make_executor

__all__ = ["add_explore_section"]


def add_explore_section(doc: Any, opts: Any, trace: str, calib: str, out: Any, step=lambda s: None) -> dict:
    """Run the search of ``opts.explore`` and append its section to ``doc``; returns the summary."""
    if opts.explore_trials < 1:
        raise FmtlabError(f"--explore-trials must be >= 1, got {opts.explore_trials}")
    space = load_space(opts.explore)
    d = os.path.join(str(out), "explore")
    os.makedirs(d, exist_ok=True)
    step(f"exploring space {space.name!r}: {opts.explore_trials} trials")
    with make_executor(opts.scheduler, opts.workers) if opts.scheduler else make_executor(None, None) as ex:
        ev = Evaluator(trace, calib, ex, layers=opts.layers, max_tokens=opts.max_tokens,
                       cache_path=os.path.join(d, "metrics.jsonl"), progress=opts.progress)
        res = search(space, ev, trials=opts.explore_trials, seed=0, out=d)
    s = write_outputs(res, space, d)
    doc.heading("Design-space exploration")
    doc.paragraph(f"Space `{space.name}` ({res.info['points']} points, {res.info['replay_configs']} distinct "
                  f"replay configs; search: {res.info['method']}, seed 0, {s['measured']} points measured). "
                  f"Objectives: maximise {space.objectives[0]}, minimise {space.objectives[1]}; constraints: "
                  f"{', '.join(space.constraints) or 'none'}. Accuracy from replay of the evaluation trace "
                  "(static scales from the calibration trace); cost from the MAC model. Files: `explore/`.")
    doc.image("explore/pareto.png", "Every measured point (grey), the Pareto front (red), the report's "
              "configs (blue squares).")
    doc.table([{"config": f["config"], space.objectives[0]: f["accuracy"], space.objectives[1]: f["cost"],
                "report config": f.get("report_config") or ""} for f in s["front"]])
    lines = comparison_lines(s["report_comparison"])
    if lines:
        doc.paragraph("The report's own Pareto configs against the explore front:")
        doc.bullets(lines)
    return s
