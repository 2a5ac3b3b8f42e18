"""The one name grammar (formats/names.py) and its two users (registry, presets).

Invariants: exact names win over kinds, aliases resolve before both, kinds are tried in
registration order, an unknown name raises the grammar's error type listing the known names and
every kind's help; split_options peels only option tokens from the right.
"""

from __future__ import annotations

import pytest

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import registry, presets
from fmtlab.formats.names import Grammar, split_options


def make() -> Grammar:
    g = Grammar("widget", FormatError)
    g.exact("w8", lambda: ("exact", 8))
    g.alias("eight", "w8")
    g.kind("wn", r"w(\d+)", "wN", lambda m, name: ("kind", int(m.group(1))))
    g.kind("any_x", lambda key: ("callable", key) if key.endswith("x") else None, lambda: "…x")
    return g


def test_resolution_order():
    g = make()
    assert g.resolve("W8") == ("exact", 8) and g.resolve(" eight ") == ("exact", 8)
    assert g.resolve("w16") == ("kind", 16) and g.resolve("wx") == ("callable", "wx")
    assert g.find("nothing") is None and g.names() == ["w8"]


def test_unknown_lists_what_is_known():
    with pytest.raises(FormatError, match=r"unknown widget 'zz'; known: w8 \(and wN, …x\)"):
        make().resolve("zz")


def test_split_options():
    opt = lambda t: t in {"asym", "mse"} or (t[:1] == "g" and t[1:].isdigit())  # noqa: E731
    assert split_options("int4_g128_asym", opt) == ("int4", ["g128", "asym"])
    assert split_options("fp8_e4m3_g32", opt) == ("fp8_e4m3", ["g32"])
    assert split_options("g32", opt) == ("g32", [])


def test_users_share_the_grammar():
    assert isinstance(registry.GRAMMAR, Grammar) and isinstance(presets.GRAMMAR, Grammar)
    with pytest.raises(FormatError, match="unknown format 'fp9'; known: int2.*eEmM_ieee"):
        registry.get_format("fp9")
    with pytest.raises(FmtlabError, match="unknown quantizer 'nosuch'; known: mxfp8_e4m3.*<format>_per_tensor"):
        presets.get_quantizer("nosuch")
