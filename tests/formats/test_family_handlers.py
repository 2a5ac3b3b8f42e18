"""Family handlers: oracle, strategies and CLI dispatch through fmtlab.formats.capabilities.

Invariants: every built-in family registers ORACLE, STRATEGY and CLI handlers in its own module;
a format of a family without a handler gets NotSupportedError naming the family and what to add
from the oracle and the CLI layout (never a silent default), and the strategies refuse to draw it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fmtlab.formats import Format
from fmtlab.formats import cli as fcli
from fmtlab.formats import strategies as fst
from fmtlab.formats.capabilities import NotSupportedError, Subsystem, find_handler
from fmtlab.formats.oracle import oracle_encode


@dataclasses.dataclass(frozen=True)
class Orphan(Format):
    """A two-bit family nobody registered handlers for."""

    family = "orphan_test_family"

    @property
    def bits(self) -> int:
        return 2

    @property
    def name(self) -> str:
        return "orphan2"

    def _build_values(self) -> np.ndarray:
        return np.array([0.0, 1.0, 2.0, -1.0])

    def _virtual_above(self):
        return 3.0, True


@pytest.mark.parametrize("family", fst.FAMILIES)
@pytest.mark.parametrize("subsystem", [Subsystem.ORACLE, Subsystem.STRATEGY, Subsystem.CLI])
def test_builtin_families_have_handlers(family, subsystem):
    assert callable(find_handler(subsystem, family))


def test_missing_handlers_are_not_supported():
    f = Orphan()
    np.testing.assert_array_equal(f.encode([0.4, 1.6, -3.0]), [0, 2, 3])  # table path works
    with pytest.raises(NotSupportedError, match="oracle tie rule not supported for family 'orphan_test_family'"):
        oracle_encode(f, [1.0])
    with pytest.raises(NotSupportedError, match="CLI layout not supported .*register a CLI handler"):
        fcli.layout(f)
    with pytest.raises(ValueError, match="families must be"):
        fst.formats(families=["orphan_test_family"])
