"""The hardware model takes a parsed quantizer (QuantSpec) as a MAC operand (issue 19)."""

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_block_format, get_format, parse_quantizer
from fmtlab.hw.operands import parse_operand


def test_quantspec_operands():
    assert parse_operand(parse_quantizer("mxfp8_e4m3")) == get_block_format("mxfp8")
    assert parse_operand(parse_quantizer("mxfp4_b16")) == parse_operand("mxfp4_b16")
    assert parse_operand(parse_quantizer("int8_per_token")) == get_format("int8")
    assert parse_operand(parse_quantizer("int8_peg6")) == get_format("int8")
    with pytest.raises(FmtlabError, match="no element format"):
        parse_operand(parse_quantizer("fp32"))
