"""`fmtlab report --explore SPACE`: the section is added, with its files, from the report's traces."""

from __future__ import annotations

import os
from types import SimpleNamespace

from fmtlab.analysis.document import Document
from fmtlab.explore.report_section import add_explore_section


def test_explore_section(traces, small_space, tmp_path):
    doc = Document("t")
    opts = SimpleNamespace(explore=small_space, explore_trials=50, scheduler=None, workers=None, layers=None,
                           max_tokens=None, progress=False)
    s = add_explore_section(doc, opts, traces[0], traces[1], tmp_path)
    kinds = [k for k, _ in doc.blocks]
    assert ("heading", (2, "Design-space exploration")) in doc.blocks and "image" in kinds and "table" in kinds
    for f in ("trials.csv", "pareto.csv", "pareto.png", "explore.json"):
        assert os.path.exists(tmp_path / "explore" / f)
    assert s["front_size"] >= 1


def test_bad_explore_space_fails_before_any_work(tmp_path):
    import pytest

    from fmtlab.analysis.report import ReportOptions
    from fmtlab.explore.space import SpaceError

    with pytest.raises(SpaceError, match="does not exist"):
        ReportOptions(explore=str(tmp_path / "nope.toml"))
