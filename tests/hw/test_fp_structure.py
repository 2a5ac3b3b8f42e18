"""Structures of the FP MAC path that synthesis exploits and the area model now prices.

Invariants:
- every nonzero product of two minifloats has its leading-bit exponent inside the signed range
  of ``product_exponent_width`` bits (so the bits above it are sign copies, i.e. wiring);
- the Kulisch / MX product shifter is sized for the largest shift any pair of codes produces;
- product flag logic exists only for the specials (Inf/NaN) the formats have;
- every standard unit's model area ratio to INT8 is within 15% of Yosys' (the cached results).
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fmtlab.formats import get_format
from fmtlab.hw import synth
from fmtlab.hw.blocks import product_exponent_width, product_flag_gates, signed_width
from fmtlab.hw.catalogue import BASELINE, standard_units
from fmtlab.hw.mac import fp_acc_geometry, make_unit, product_shift_parts
from fmtlab.hw.operands import parse_accumulator, view

FP = ["fp4_e2m1", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16"]


@given(st.integers(-2000, 2000), st.integers(0, 2000))
def test_signed_width_is_the_smallest_word_holding_the_range(lo, span):
    hi = lo + span
    w = signed_width(lo, hi)
    assert -(1 << (w - 1)) <= lo and hi < (1 << (w - 1))
    assert w == 1 or not (-(1 << (w - 2)) <= lo and hi < (1 << (w - 2)))


@pytest.mark.parametrize("name", FP[:3])
def test_every_product_exponent_fits_the_live_width(name):
    """Exhaustive over all finite nonzero value pairs of the format."""
    f = get_format(name)
    v = view(f)
    vals = np.unique(np.abs(f.values()[np.isfinite(f.values())]))
    vals = vals[vals > 0]
    exps = {math.floor(math.log2(x * y)) for x in vals for y in vals}
    g = fp_acc_geometry(v, v, parse_accumulator("fp32"))
    wx = product_exponent_width(v, v, g["we"])
    assert (min(exps), max(exps)) == (g["t_lo"], g["t_hi"])  # the geometry's range is exact
    assert -(1 << (wx - 1)) <= min(exps) and max(exps) < (1 << (wx - 1))
    assert wx < g["we"]  # the narrow-exponent saving applies to these units


def test_live_exponent_widths():
    acc = parse_accumulator("fp32")
    got = {}
    for n in FP:
        v = view(get_format(n))
        got[n] = product_exponent_width(v, v, fp_acc_geometry(v, v, acc)["we"])
    assert got == {"fp4_e2m1": 4, "fp8_e4m3": 6, "fp8_e5m2": 6, "fp16": 7, "bf16": 10}


@pytest.mark.parametrize("name", FP[:3])
def test_product_shifter_covers_exactly_the_reachable_shifts(name):
    """sh = (max(E_a,1) - 1) + (max(E_b,1) - 1) over all exponent codes, Inf/NaN codes included."""
    v = view(get_format(name))
    shifts = {max(ea, 1) - 1 + max(eb, 1) - 1 for ea in range(1 << v.exp_bits)
              for eb in range(1 << v.exp_bits)}
    adder_part, shifter_part = product_shift_parts(v, v, make_unit(name, name).styles)
    assert shifter_part.component.max_shift == max(shifts)
    assert (1 << (adder_part.component.n + 1)) > max(shifts)  # n sum bits + carry-out


def test_product_flags_follow_the_formats_specials():
    e2m1, e4m3, e5m2 = (view(get_format(n)) for n in ("fp4_e2m1", "fp8_e4m3", "fp8_e5m2"))
    assert product_flag_gates(e2m1, e2m1) == dict(NOR2=1)  # no Inf, no NaN: only the zero flag
    assert product_flag_gates(e4m3, e4m3) == dict(NAND2=1, NOR2=2)  # NaN only
    assert product_flag_gates(e5m2, e5m2) == dict(NAND2=4, NOR2=3)


def test_every_standard_unit_within_15_percent_of_synthesis():
    """Model area / INT8-MAC area vs the same ratio from Yosys (cached, OSU 0.18 um cells)."""
    rows = synth.compare(standard_units(), make_unit(*BASELINE), cache_only=True)
    errs = {r.unit: round(r.ratio_error, 4) for r in rows}
    assert len(errs) == 16
    assert all(abs(e) <= 0.15 for e in errs.values()), errs
