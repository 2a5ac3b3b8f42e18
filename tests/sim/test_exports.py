"""Public names of fmtlab.sim and fmtlab.models are the functions, whatever was imported first."""

import importlib


def test_function_exports_survive_submodule_imports():
    importlib.import_module("fmtlab.models.record")
    importlib.import_module("fmtlab.models.perplexity")
    importlib.import_module("fmtlab.sim.replay")
    import fmtlab.models as models
    import fmtlab.sim as sim

    assert callable(models.record) and models.record.__name__ == "record"
    assert models.perplexity.__name__ == "perplexity"
    from fmtlab.sim import replay

    assert callable(replay) and replay.__name__ == "replay"
