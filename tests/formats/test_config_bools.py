"""Boolean options in config strings (issue 15 item 8).

Invariant: ``pow2`` accepts only true/false/1/0/yes/no/on/off (case-insensitive) and the bool /
0 / 1 values; "no", "off", "0" and "false" switch power-of-two scales *off* (before the fix any
non-empty string was truthy), and any other value raises an FmtlabError naming key and value.
The check lives in ``Quantizer`` itself, so every route that builds one (preset overrides,
quantizer spec strings, replay config strings, the torch plug-in) gets it.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import Quantizer, get_quantizer
from fmtlab.formats.rounding import parse_bool

OFF = ["no", "off", "OFF", "0", "false", "False", " no "]
ON = ["yes", "on", "On", "1", "true", "TRUE"]


def _x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32) * 3


@pytest.mark.parametrize("text", OFF + ON)
def test_spec_strings_parse_pow2(text):
    from fmtlab.sim.quant import resolve

    q = resolve(f"int8_per_token(pow2={text})").obj
    want = text.strip().lower() in ("yes", "on", "1", "true")
    assert q.pow2 is want
    ref = get_quantizer("int8_per_token", pow2=want)
    x = _x()
    assert np.array_equal(q.fake_quantize(x).view(np.int32), ref.fake_quantize(x).view(np.int32))


def test_pow2_off_really_off():
    """pow2=no gives the default (non power-of-two) scales, pow2=yes powers of two."""
    x = _x()
    s_off = get_quantizer("int8_per_token", pow2="no").compute_scales(x)[0]
    s_on = get_quantizer("int8_per_token", pow2="on").compute_scales(x)[0]
    assert np.array_equal(s_off, get_quantizer("int8_per_token").compute_scales(x)[0])
    assert np.all(np.frexp(s_on)[0] == 0.5) and not np.all(np.frexp(s_off)[0] == 0.5)


@pytest.mark.parametrize("bad", ["maybe", "2", "nope", "", "t", 2, -1, 0.5, None])
def test_bad_bools_rejected(bad):
    with pytest.raises(FmtlabError, match=r"pow2.*boolean.*pow2="):
        Quantizer("int8", "per_token", pow2=bad)
    if isinstance(bad, str) and bad and "," not in bad:
        from fmtlab.sim.quant import resolve

        with pytest.raises(FmtlabError, match="pow2"):
            resolve(f"int8_per_token(pow2={bad})")


def test_replay_config_strings():
    from fmtlab.sim.quant import resolve
    from fmtlab.sim.replay import make_config

    cfg = make_config("c:w=int8_per_channel(pow2=off);a=int8_per_token(pow2=no)")
    assert resolve(cfg.weight).obj.pow2 is False and resolve(cfg.act).obj.pow2 is False
    cfg = make_config("c:w=int8_per_channel(pow2=yes);a=int8_per_token(pow2=ON)")
    assert resolve(cfg.weight).obj.pow2 is True and resolve(cfg.act).obj.pow2 is True
    with pytest.raises(FmtlabError, match="pow2='sometimes'"):
        resolve(make_config("c:a=int8_per_token(pow2=sometimes)").act)


def test_parse_bool_values():
    assert [parse_bool(v, "k") for v in (True, False, 1, 0, np.bool_(True))] == [True, False, True, False, True]
    with pytest.raises(ValueError, match="k='x'"):
        parse_bool("x", "k")
