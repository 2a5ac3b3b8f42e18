"""Design-space exploration: search formats x granularity x scales x accumulators x transforms for
the Pareto front of replay accuracy against MAC cost, in-process or on Dask.

Modules: :mod:`~fmtlab.explore.space` (TOML / Python design spaces), :mod:`~fmtlab.explore.objectives`
(accuracy, cost, constraints), :mod:`~fmtlab.sim.executor` (units of work, Dask),
:mod:`~fmtlab.explore.search` (exhaustive, NSGA-II, TPE; resumable), :mod:`~fmtlab.explore.results`
(CSV, plot, comparison with the report), :mod:`~fmtlab.explore.cli` (``fmtlab explore``).
"""

from fmtlab.explore.space import Candidate, DesignSpace, Family, SideSpace, SpaceError, load_space, parse_space

__all__ = ["Candidate", "DesignSpace", "Family", "SideSpace", "SpaceError", "load_space", "parse_space"]
