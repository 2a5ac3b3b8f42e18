"""BlockFormat: MX / NVFP4 defined once (formats/blockfmt.py).

Invariants: every block format name round-trips (get_block_format(bf.name) == bf); the presets'
named block quantizers are built from BlockFormat values and give the same quantizer as the
presets.block_quantizer(bf); names that are not block formats give None; impossible options
raise FormatError naming the option; the enums equal their value strings (transition).
"""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FormatError
from fmtlab.formats import (BlockFormat, PerBlock, ScaleFormat, SharedExp, SharedExpRule, get_block_format,
                            get_format, get_quantizer)
from fmtlab.formats.blockfmt import BLOCK_NAMES
from fmtlab.formats.presets import BLOCK_PRESETS, block_quantizer


@pytest.mark.parametrize("name,element,block,sf,rule,ts", [
    ("mxfp8", "fp8_e4m3", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp8_e4m3", "fp8_e4m3", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp8_e5m2", "fp8_e5m2", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp6", "fp6_e3m2", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp6_e2m3", "fp6_e2m3", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("MXFP4_e2m1", "fp4_e2m1", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxint8", "int8_sym", 32, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp4_b16", "fp4_e2m1", 16, ScaleFormat.E8M0, SharedExpRule.FLOOR, False),
    ("mxfp8_ceil", "fp8_e4m3", 32, ScaleFormat.E8M0, SharedExpRule.CEIL, False),
    ("nvfp4", "fp4_e2m1", 16, ScaleFormat.FP8_E4M3, SharedExpRule.FLOOR, True),
    ("nvfp4_b32_notensor", "fp4_e2m1", 32, ScaleFormat.FP8_E4M3, SharedExpRule.FLOOR, False),
])
def test_names_parse(name, element, block, sf, rule, ts):
    bf = get_block_format(name)
    assert bf == BlockFormat(element, block, sf, rule, ts)
    assert bf.element is get_format(element) or bf.element == get_format(element)
    assert get_block_format(bf.name) == bf and bf.bits == get_format(element).bits


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_standard_names_round_trip(name):
    assert get_block_format(name).name == name


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8", "mx", "mxnosuch", "nvidia", 3])
def test_not_block_names(name):
    assert get_block_format(name) is None


@pytest.mark.parametrize("make,match", [
    (lambda: get_block_format("nvfp4_ceil"), "E8M0"),
    (lambda: get_block_format("mxfp4_notensor"), "_notensor"),
    (lambda: BlockFormat("uint8"), "signed"),
    (lambda: BlockFormat("e8m0"), "signed"),
    (lambda: BlockFormat("fp4_e2m1", 0), "block size"),
    (lambda: BlockFormat("fp4_e2m1", scale_format="fp16"), "ScaleFormat"),
    (lambda: BlockFormat("fp4_e2m1", shared_exp="round"), "SharedExpRule"),
    (lambda: BlockFormat("fp4_e2m1", tensor_scale=True), "FP8_E4M3"),
])
def test_bad_block_formats(make, match):
    with pytest.raises(FormatError, match=match):
        make()


def test_enums_equal_their_strings():
    assert ScaleFormat.E8M0 == "e8m0" and f"{ScaleFormat.FP8_E4M3}" == "fp8_e4m3"
    assert {"floor": 1}[SharedExpRule.FLOOR] == 1 and SharedExp("ceil").mode is SharedExpRule.CEIL
    assert PerBlock(16, scale_format="fp8_e4m3").scale_format is ScaleFormat.FP8_E4M3
    assert str(PerBlock(32)) == "block(32, axis=-1, e8m0)"


@pytest.mark.parametrize("key", sorted(BLOCK_PRESETS))
def test_presets_are_block_formats(key):
    """get_quantizer(<preset>) and block_quantizer(BLOCK_PRESETS[<preset>]) quantize identically."""
    bf = BLOCK_PRESETS[key]
    q, q2 = get_quantizer(key), block_quantizer(bf)
    assert q == q2 and q.name == key
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(q.quantize(x).codes, q2.quantize(x).codes)


def test_quantizer_overrides():
    q = block_quantizer(get_block_format("mxfp8"), block_size=16, rounding="toward_zero")
    assert q.granularity.size == 16 and q.rounding.value == "toward_zero"
    assert get_quantizer("mxfp4_b16") == get_quantizer("mxfp4", block_size=16)
