"""Every quantizer name a replay config holds resolves through the one resolver (issue 19).

Iterates over the configs `fmtlab replay --list` prints (sim.replay.PRESETS, which holds the report
defaults and E2E_CONFIGS) and the quantizer names of an explore design space, and asserts that
``fmtlab.formats.get_quantizer`` resolves each weight and activation name to the quantizer replay
uses (sim.quant.resolve), and that the spec's canonical name resolves to an equal one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmtlab.analysis.defaults import DEFAULT_CONFIGS, DEFAULT_PPL_CONFIGS
from fmtlab.formats import get_quantizer, parse_quantizer
from fmtlab.sim.quant import resolve
from fmtlab.sim.replay import E2E_CONFIGS, PRESETS, make_config

NAMES = sorted({s for c in PRESETS.values() for s in (c.weight, c.act) if s is not None})


def test_listed_configs_are_the_presets():
    """`fmtlab replay --list` prints one line per preset; the default lists name presets only."""
    out = subprocess.run([sys.executable, "-m", "fmtlab", "replay", "--list"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == list(PRESETS)
    assert set(E2E_CONFIGS) | set(DEFAULT_CONFIGS) | set(DEFAULT_PPL_CONFIGS) <= set(PRESETS)
    assert NAMES  # non-empty: the loop below checks something


@pytest.mark.parametrize("config", list(PRESETS))
def test_config_quantizers_resolve(config):
    c = make_config(config)
    for name in (c.weight, c.act):
        if name is None:
            continue
        q = get_quantizer(name)
        used = resolve(name)
        assert type(q) is type(used.obj) and q == used.obj, (config, name)
        assert used.spec == parse_quantizer(name)
        assert get_quantizer(str(used.spec)) == q


def test_explore_space_quantizer_names_resolve():
    from fmtlab.explore.space import example_space_path, load_space

    space = load_space(example_space_path())
    specs = {q for key, side in (("weights", space.weights), ("activations", space.activations))
             for q, _, _ in side.quantizers(key)}
    assert specs
    for s in specs:
        assert get_quantizer(s) == resolve(s).obj, s
