"""One name grammar (issue 11): every vocabulary resolves through a ``fmtlab.formats.names.Grammar``.

Invariants: each vocabulary module exposes its ``GRAMMAR`` (a Grammar instance); the public
resolver (get_format, get_quantizer, sim.quant.resolve, get_transform, make_config,
parse_accumulator) returns what that grammar resolves; an unknown name raises a FmtlabError that
names the vocabulary, the name and the known exact names. The call syntax and the '+' splitter
are the shared ones of fmtlab.formats.names.
"""

from __future__ import annotations

import importlib

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats import names, presets, registry
from fmtlab.hw import accumulators
from fmtlab.hw.accumulators import IntAcc, KulischAcc, parse_accumulator
from fmtlab.sim import quant, transforms
from fmtlab.sim.quant import resolve
from fmtlab.sim.replay import make_config
from fmtlab.sim.transforms import Compose, ExcludeTokens, SmoothQuant, get_transform

replay = importlib.import_module("fmtlab.sim.replay")  # the package attribute is the function
GRAMMARS = [registry.GRAMMAR, presets.GRAMMAR, transforms.GRAMMAR, replay.GRAMMAR,
            accumulators.GRAMMAR]


@pytest.mark.parametrize("g", GRAMMARS, ids=lambda g: g.what)
def test_each_vocabulary_has_a_grammar(g):
    """Every vocabulary's GRAMMAR is a names.Grammar with at least one exact name."""
    assert isinstance(g, names.Grammar)
    assert g.names()


def test_formats_and_presets_resolve_through_their_grammar():
    assert registry.GRAMMAR.resolve("int8").name == get_format("int8").name
    assert presets.GRAMMAR.resolve("int4_g128") is not None
    assert get_quantizer("int4_g128").name == "int4_g128"


def test_quantizer_specs_resolve_through_the_one_grammar():
    """sim.quant.resolve, get_quantizer and parse_quantizer share presets.GRAMMAR: identity names
    give the identity spec, presets and the PEG / fitted-log names their objects."""
    assert presets.GRAMMAR.resolve("fp32").identity and resolve("fp32").identity
    assert get_quantizer("none") is None
    q = presets.GRAMMAR.resolve("int8_per_token").build()
    assert q == resolve("int8_per_token").obj == get_quantizer("int8_per_token")
    assert resolve("int8_per_token").obj.name == "int8_per_token"
    assert type(presets.GRAMMAR.resolve("int8_peg6").build()).__name__ == "PegQuantizer"
    assert type(get_quantizer("int8_peg6")).__name__ == "PegQuantizer"
    assert type(resolve("log4_fitb_per_channel").obj).__name__ == "FittedLogQuantizer"
    assert presets.GRAMMAR.find("nosuch_thing") is None
    assert not hasattr(quant, "GRAMMAR") and not hasattr(quant, "known_specs")


def test_transforms_resolve_through_their_grammar():
    assert transforms.GRAMMAR.resolve("smooth") is SmoothQuant
    t = get_transform("exclude_first+smoothquant(alpha=0.8)")
    assert isinstance(t, Compose)
    assert isinstance(t.transforms[0], ExcludeTokens) and isinstance(t.transforms[1], SmoothQuant)
    assert get_transform("identity") is None


def test_replay_configs_resolve_through_their_grammar():
    """Presets are exact (case-sensitive: inline names keep their case); inline configs are a kind."""
    assert replay.GRAMMAR.resolve("mxfp4") is replay.PRESETS["mxfp4"] is make_config("mxfp4")
    c = make_config("MyCfg:w=int4_g128;a=int8_per_token;t=hadamard")
    assert (c.name, c.weight, c.act, c.transform) == ("MyCfg", "int4_g128", "int8_per_token", "hadamard")
    assert replay.GRAMMAR.find("MXFP4") is None


def test_accumulators_resolve_through_their_grammar():
    assert accumulators.GRAMMAR.resolve("int24_sat")(None, None) == parse_accumulator("int24_sat")
    assert parse_accumulator("kulisch8") == KulischAcc(8)
    assert isinstance(parse_accumulator("int32", overflow="saturate"), IntAcc)


@pytest.mark.parametrize("call, what, known", [
    (lambda: get_format("nosuch"), "format", "int8"),
    (lambda: get_quantizer("nosuch"), "quantizer", "int8_per_tensor"),
    (lambda: resolve("nosuch"), "quantizer", "fp32, float32"),
    (lambda: get_transform("smoothquant+nosuch"), "transform", "smoothquant"),
    (lambda: make_config("nosuch"), "config", "w8a8_int_tensor"),
    (lambda: parse_accumulator("int33x"), "accumulator", "fp32"),
], ids=["format", "preset", "spec", "transform", "config", "accumulator"])
def test_unknown_names_raise_listing_what_is_known(call, what, known):
    with pytest.raises(FmtlabError) as exc:
        call()
    msg = str(exc.value)
    assert msg.startswith(f"unknown {what} 'nosuch'" if what != "accumulator" else "unknown accumulator 'int33x'")
    assert "; known: " in msg and known in msg.split("; known: ", 1)[1]


def test_shared_call_syntax_and_splitter():
    """One call syntax; '+' splits only at the top level."""
    assert presets.parse_call is names.parse_call
    assert names.parse_call(" smoothquant(alpha=0.8, fit=true, m=none) ") == \
        ("smoothquant", {"alpha": 0.8, "fit": True, "m": None})
    assert names.split_plus("a(x=1+2)+b") == ["a(x=1+2)", "b"]
    with pytest.raises(FmtlabError, match="must be key=value"):
        names.parse_call("smoothquant(0.8)")
