"""Generated RTL simulated with Icarus Verilog, bit for bit against the datapath.

Units whose operands have at most 8 bits are checked on every (w, a) code pair (one simulator
run per unit, each pair with its own accumulator input); 16-bit units on 20000 random pairs;
MX units on blocks that cover every element pair once (plus random blocks), random scales.
"""

import dataclasses

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.hw.catalogue import STANDARD_UNITS
from fmtlab.hw.mac import make_unit
from fmtlab.hw.rtl import generate, module_name
from fmtlab.hw.sim import check_unit, expected, iverilog_available, make_vectors, simulate

needs_iverilog = pytest.mark.skipif(not iverilog_available(),
                                    reason="iverilog not installed (Debian: apt-get install iverilog)")


@pytest.mark.parametrize("w,a,acc", STANDARD_UNITS, ids=[f"{w}-{a}-{c}" for w, a, c in STANDARD_UNITS])
def test_rtl_text_is_self_contained(w, a, acc):
    u = make_unit(w, a, acc)
    r = generate(u)
    assert r.top == module_name(u) and f"module {r.top}(" in r.text and f"module {r.core}(" in r.text
    # products are sized explicitly: no multiplication inside the accumulator expression
    assert "acc_in + " not in r.text or "*" not in r.text.split("acc_in + ")[1].split(";")[0]


@needs_iverilog
@pytest.mark.parametrize("w,a,acc", STANDARD_UNITS, ids=[f"{w}-{a}-{c}" for w, a, c in STANDARD_UNITS])
def test_standard_unit_rtl_matches_datapath(w, a, acc):
    u = make_unit(w, a, acc)
    r = check_unit(u)
    if u.is_mx:
        el = u.weight.element.bits
        assert r.vectors * u.weight.block >= 1 << (2 * el)  # every element pair appears
    elif u.weight.bits + u.activation.bits <= 16:
        assert r.vectors == 1 << (u.weight.bits + u.activation.bits)  # exhaustive
    assert r.ok, r.first


EXTRA = [("uint4", "int8", "int16"), ("int8", "dint4", "int24"), ("dint4_d0.25_0.5_0.75", "int8", "int32"),
         ("int3", "int5", "int12"), ("fp6_e3m2", "fp6_e2m3", "fp32"), ("fp8_e4m3", "fp8_e4m3", "bf16"),
         ("fp8_e5m2", "fp8_e5m2", "fp16"), ("e4m3_fn_ftz", "e4m3_fn_ftz", "fp16"),
         ("fp8_e4m3fnuz", "fp8_e5m2fnuz", "kulisch"), ("fp8_e4m3", "fp8_e4m3", "kulisch4")]


@needs_iverilog
@pytest.mark.parametrize("w,a,acc", EXTRA, ids=[f"{w}-{a}-{c}" for w, a, c in EXTRA])
def test_other_units_rtl_matches_datapath(w, a, acc):
    r = check_unit(make_unit(w, a, acc), seed=1)
    assert r.ok, r.first


@needs_iverilog
def test_the_check_catches_a_wrong_rounding():
    """A mutant RTL (round-half-up instead of nearest-even; sticky bits dropped) must fail."""
    u = make_unit("fp8_e4m3", "fp8_e4m3", "fp32")
    rtl = generate(u)
    vec = make_vectors(u)
    want = expected(u, vec)
    for old, new in [("inc = rb & (keep[0] | sb)", "inc = rb"), ("wire sb = (|nrm", "wire sb = 1'b0 & (|nrm")]:
        assert old in rtl.text
        got = simulate(dataclasses.replace(rtl, text=rtl.text.replace(old, new)), vec)
        assert sum(g != e for g, e in zip(got, want)) > 100


@needs_iverilog
def test_the_check_catches_a_wrong_multiplier():
    u = make_unit("int4", "int8", "int32")
    rtl = generate(u)
    vec = make_vectors(u)
    bad = rtl.text.replace("+ 12'd", "+ 12'd1 + 12'd")  # break the Baugh-Wooley constant
    assert bad != rtl.text
    got = simulate(dataclasses.replace(rtl, text=bad), vec)
    assert all(g != e for g, e in zip(got, expected(u, vec)))


def test_unsupported_rtl_raises():
    with pytest.raises(FmtlabError, match="wrapping"):
        generate(make_unit("int8", "int8", "int32_sat"))
    with pytest.raises(FmtlabError, match="nearest-even"):
        generate(make_unit("fp8_e4m3", "fp8_e4m3", "fp32_rtz"))
    with pytest.raises(FmtlabError, match="dINT x dINT"):
        generate(make_unit("dint4", "dint4", "int16"))


def test_vectors_are_exhaustive_for_8_bit_pairs():
    v = make_vectors(make_unit("fp8_e4m3", "fp8_e4m3", "fp32"))
    pairs = set(zip(v.w.tolist(), v.a.tolist()))
    assert len(pairs) == 65536 == len(v)
    accs = np.array(v.acc_in, dtype=np.uint64)
    assert (accs == 0x7F800000).any() and (accs == 0x7FC00000).any() and (accs < 1 << 23).any()
