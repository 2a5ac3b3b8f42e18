"""Public names of fmtlab.sim are the functions, whatever was imported first."""

import importlib


def test_function_exports_survive_submodule_imports():
    importlib.import_module("fmtlab.sim.record")
    importlib.import_module("fmtlab.sim.perplexity")
    import fmtlab.sim as sim

    assert callable(sim.record) and sim.record.__name__ == "record"
    assert sim.perplexity.__name__ == "perplexity"
    from fmtlab.sim import replay

    assert callable(replay)
