"""Design-space exploration: search formats x granularity x scales x accumulators x transforms for
the Pareto front of replay accuracy against MAC cost, in-process or on Dask.

Modules: :mod:`~fmtlab.explore.space` (TOML / Python design spaces), :mod:`~fmtlab.explore.objectives`
(accuracy, cost, constraints), :mod:`~fmtlab.sim.executor` (units of work, Dask),
:mod:`~fmtlab.explore.search` (exhaustive, NSGA-II, TPE; resumable), :mod:`~fmtlab.explore.results`
(CSV, plot, comparison with the report), :mod:`~fmtlab.explore.cli` (``fmtlab explore``).
"""

__all__ = ["Candidate", "DesignSpace", "Family", "SideSpace", "SpaceError", "load_space", "parse_space"]


def __getattr__(name: str):
    if name in __all__:
        from fmtlab.explore import space  # lazy: space imports fmtlab.sim (numba); `fmtlab --help` imports this package

        return getattr(space, name)
    raise AttributeError(f"module 'fmtlab.explore' has no attribute {name!r}")
