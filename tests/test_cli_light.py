"""`fmtlab --help` builds every subcommand's parser without loading numba, scipy, torch or the
replay core (issue 22: the CLI starts light; the heavy modules load when a command runs)."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_no_heavy_modules():
    code = ("import sys\nfrom fmtlab.cli import build_parser\nbuild_parser().format_help()\n"
            "import fmtlab.sim\n"
            "print(sorted(m for m in ('numba', 'scipy', 'torch', 'transformers', 'fmtlab.sim.replay') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


def test_sim_replay_stays_the_function_in_every_import_order():
    code = ("import fmtlab.sim.replay\nimport sys\nfrom fmtlab.sim import replay\n"
            "assert callable(replay) and not isinstance(replay, type(sys))\n"
            "assert sys.modules['fmtlab.sim.replay'].replay is replay\n"
            "import fmtlab.sim as s\nassert s.replay is replay\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "ok"
