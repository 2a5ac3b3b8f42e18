"""Public names of fmtlab.sim and fmtlab.models are the functions, whatever was imported first."""

import importlib
import subprocess
import sys


def test_function_exports_survive_submodule_imports():
    importlib.import_module("fmtlab.models.record")
    importlib.import_module("fmtlab.models.perplexity")
    importlib.import_module("fmtlab.sim.replay")
    import fmtlab.models as models
    import fmtlab.sim as sim  # noqa: F401

    for name in models.__all__:
        assert callable(getattr(models, name)) and getattr(models, name).__name__ == name
    from fmtlab.models.perplexity import perplexity
    from fmtlab.models.record import record

    assert record.__name__ == "record" and perplexity.__name__ == "perplexity"
    from fmtlab.sim import replay

    assert callable(replay) and replay.__name__ == "replay"


def test_cli_and_formats_import_without_torch():
    """`fmtlab --help` (every subcommand module) and `import fmtlab.formats` never import torch."""
    code = ("import sys, fmtlab.cli, fmtlab.formats; fmtlab.cli.build_parser(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
