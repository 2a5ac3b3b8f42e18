"""QuantSpec and the one quantizer resolver (issue 19).

Invariants: every listed quantizer name parses to a QuantSpec whose ``str`` parses back to an
equal spec and builds an equal quantizer; specs generated over formats x granularities x scale
rules x conventions (hypothesis) round-trip through their names; options in the name and as
keywords mean the same; the identity names give None.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import QuantSpec, Quantizer, get_quantizer, parse_quantizer
from fmtlab.formats.blockfmt import BLOCK_NAMES
from fmtlab.formats.logfit import FittedLogQuantizer
from fmtlab.formats.peg import PegQuantizer
from fmtlab.formats.presets import known_quantizers
from fmtlab.formats.quantspec import IDENTITY, IDENTITY_NAMES
from fmtlab.formats.registry import STANDARD_NAMES, get_format
from fmtlab.formats.rounding import NanInput, Overflow, Rounding
from fmtlab.formats.scaling import (
    MSE, AbsMax, MinMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, SharedExp, Static,
)

LISTED = sorted(set(known_quantizers()) | set(BLOCK_NAMES))


def _same_quantizer(a, b) -> bool:
    return (a is None and b is None) or (type(a) is type(b) and a == b)


@pytest.mark.parametrize("name", LISTED)
def test_every_listed_name_round_trips(name):
    spec = parse_quantizer(name)
    assert isinstance(spec, QuantSpec)
    again = parse_quantizer(str(spec))
    assert again == spec
    assert _same_quantizer(get_quantizer(str(spec)), get_quantizer(name))


def test_identity_names():
    for n in IDENTITY_NAMES + ("FP32", " none "):
        assert parse_quantizer(n) is IDENTITY and get_quantizer(n) is None
    assert str(IDENTITY) == "fp32"
    with pytest.raises(FmtlabError, match="takes no options"):
        parse_quantizer("fp32(pow2=true)")


def test_method_names_resolve_through_get_quantizer():
    """The issue's example: get_quantizer("int8_peg6") used to fail."""
    q = get_quantizer("int8_peg6")
    assert isinstance(q, PegQuantizer) and (q.format, q.groups, q.permute) == ("int8", 6, True)
    assert isinstance(get_quantizer("log4_fitb_per_channel"), FittedLogQuantizer)
    assert get_quantizer("int8_peg6(scale_rule=mse)") == get_quantizer("int8_peg6", scale_rule="mse")
    with pytest.raises(FmtlabError, match="unknown PEG option"):
        get_quantizer("int8_peg6(axis=1)")


@pytest.mark.parametrize("name, kw", [
    ("int8_per_token", {"pow2": True}), ("mxfp8", {"scale_rule": "ceil"}), ("int4_g128", {"group_size": 64}),
    ("int8_per_channel", {"axis": 1}), ("mxfp4", {"format": "fp6_e3m2", "block_size": 16}),
    ("int8_per_tensor", {"rounding": "stochastic", "seed": 3}),
])
def test_options_in_the_name_equal_keywords(name, kw):
    text = name + "(" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")"
    a, b = get_quantizer(text), get_quantizer(name, **kw)
    assert a == b and a != get_quantizer(name)
    assert parse_quantizer(str(parse_quantizer(text))) == parse_quantizer(text)


def test_spec_fields_are_typed():
    s = parse_quantizer("mxfp4")
    assert (s.method, s.format.name, s.scale_format, s.static, s.is_block) == ("scaled", "fp4_e2m1", "e8m0", False, True)
    assert s.granularity == PerBlock(32) and s.scale_rule == SharedExp("floor") and s.rounding is Rounding.NEAREST_EVEN
    assert parse_quantizer("nvfp4").scale_format == "fp8_e4m3"
    assert parse_quantizer("int4_g128_pow2").scale_format == "e8m0"
    assert parse_quantizer("int8_per_tensor(scale_rule=0.5)").static
    assert parse_quantizer("mxfp8_e4m3") == parse_quantizer("mxfp8") and str(parse_quantizer("mxfp8_e4m3")) == "mxfp8"
    assert parse_quantizer("int8_per_tensor(scale_rule=absmax)") == parse_quantizer("int8_per_tensor")


def test_built_quantizer_is_bit_identical_to_the_direct_one():
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    for name, direct in [("int8_per_token", Quantizer("int8", PerToken())),
                         ("int4_g32_asym", Quantizer("int4", PerGroup(32), MinMax())),
                         ("mxfp4", Quantizer("fp4_e2m1", PerBlock(32)))]:
        q = get_quantizer(name)
        assert q == direct
        np.testing.assert_array_equal(q.quantize(x).codes, direct.quantize(x).codes)


def test_unknown_names_and_bad_options_raise():
    with pytest.raises(FmtlabError, match="unknown quantizer 'nosuch'"):
        parse_quantizer("nosuch")
    with pytest.raises(FmtlabError, match="unknown override"):
        parse_quantizer("int8_per_tensor(bogus=1)")
    with pytest.raises(FmtlabError, match="must be a str"):
        parse_quantizer(3)


# ---- generated specs -------------------------------------------------------------------------
def _element_format(name: str) -> bool:
    try:
        Quantizer(name)
    except FmtlabError:  # e8m0, iq4nl: no zero, not element formats
        return False
    return True


_ELEMENTS = [n for n in STANDARD_NAMES if _element_format(n)] + ["e4m3_fn_b5", "e3m3_fn", "int6", "e4m3_fn"]
_BLOCK_ELEMENTS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8_sym", "e3m2_fin", "e4m3_fn_b5",
                   "int4_sym", "int6_sym", "fp4_e1m2"]


@st.composite
def scaled_specs(draw):
    block = draw(st.booleans())
    if block:
        fmt = draw(st.sampled_from(_BLOCK_ELEMENTS))
        size = draw(st.sampled_from([8, 16, 32, 64]))
        axis = draw(st.sampled_from([-1, 0, 1]))
        if draw(st.booleans()):
            g = PerBlock(size, axis, "e8m0")
            rule = SharedExp(draw(st.sampled_from(["floor", "ceil", "even", "rceil"])))
        else:
            g = PerBlock(size, axis, "fp8_e4m3", tensor_scale=draw(st.booleans()))
            rule = AbsMax()
        pow2 = False
    else:
        fmt = draw(st.sampled_from(_ELEMENTS))
        g = draw(st.one_of(st.just(PerTensor()), st.just(PerToken()),
                           st.builds(PerChannel, st.sampled_from([0, 1, -1])),
                           st.builds(PerGroup, st.sampled_from([2, 32, 128]), st.sampled_from([-1, 0]))))
        rule = draw(st.one_of(st.just(AbsMax()), st.just(MSE()), st.just(MinMax()),
                              st.builds(Percentile, st.floats(50.0, 100.0)),
                              st.builds(Static, st.floats(1e-6, 1e6))))
        pow2 = draw(st.booleans())
    rounding = draw(st.sampled_from(list(Rounding)))
    seed = draw(st.integers(0, 2 ** 31)) if rounding is Rounding.STOCHASTIC or draw(st.booleans()) else None
    overflow = draw(st.sampled_from(list(Overflow)))
    nan = draw(st.sampled_from([None, NanInput.RAISE, NanInput.ZERO]))
    try:
        q = Quantizer(fmt, g, rule, rounding, overflow, nan, pow2, seed)
    except (FmtlabError, ValueError):
        q = Quantizer(fmt, g, rule if block else AbsMax())
    return QuantSpec.of(q)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scaled_specs())
def test_generated_scaled_specs_round_trip(spec):
    text = str(spec)
    assert not text.startswith("<"), text
    assert parse_quantizer(text) == spec, text
    assert get_quantizer(text) == spec.build()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["int8", "int4", "fp8_e4m3", "int6"]), st.integers(1, 16), st.booleans(),
       st.sampled_from(["absmax", "mse", "percentile(99.9)"]),
       st.integers(2, 8), st.sampled_from([None, 0]), st.sampled_from(["golden", "grid"]),
       st.sampled_from([1e-4, 1e-3, 0.25]))
def test_generated_method_specs_round_trip(fmt, groups, permute, rule, bits, axis, method, tol):
    peg = QuantSpec.of(PegQuantizer(fmt, groups, permute, rule))
    assert parse_quantizer(str(peg)) == peg
    log = QuantSpec.of(FittedLogQuantizer(bits, axis, method, None, tol))
    assert parse_quantizer(str(log)) == log


def test_formats_registered_later_resolve(tmp_path):
    from fmtlab.formats import LookupFormat, register_format, unregister_format

    fmt = LookupFormat(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), name="five_levels")
    register_format(fmt)
    try:
        spec = parse_quantizer("five_levels_per_token")
        assert spec.format == get_format("five_levels") and parse_quantizer(str(spec)) == spec
    finally:
        unregister_format("five_levels")
