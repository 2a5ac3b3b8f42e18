"""PEG priced as K scales per MAC row (fmtlab.hw.peg_cost)."""

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.hw.mac import mac_cost
from fmtlab.hw.peg_cost import peg_row_cost


def test_k_scales_per_row_formula():
    """Invariants: K = 1 has no overhead; energy per MAC = E_mac + K * E_scale / d exactly; the
    overhead grows linearly in K and shrinks as 1/d; area adds one 32-bit register per group."""
    d = 576
    one, six = peg_row_cost(groups=1, row_length=d), peg_row_cost(groups=6, row_length=d)
    assert one.energy_overhead == 0.0 and one.area_overhead == 0.0
    assert one.mac_energy_pj == mac_cost("int8", "int8").energy_pj
    assert six.energy_per_mac_pj == pytest.approx(six.mac_energy_pj + 6 * six.scale_energy_pj / d, rel=1e-12)
    twelve = peg_row_cost(groups=12, row_length=d)
    assert (twelve.energy_per_mac_pj - six.energy_per_mac_pj) / 6 == pytest.approx(
        (six.energy_per_mac_pj - one.energy_per_mac_pj) / 5, rel=1e-9)
    long_row = peg_row_cost(groups=6, row_length=4 * d)
    assert long_row.energy_overhead < six.energy_overhead
    reg = (twelve.area_ge - six.area_ge) / 6
    assert six.area_ge - one.area_ge == pytest.approx(5 * reg) and reg > 0


@pytest.mark.parametrize("kwargs, match", [(dict(groups=0), "groups"), (dict(groups=8, row_length=4), "row_length")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(FmtlabError, match=match):
        peg_row_cost(**kwargs)
