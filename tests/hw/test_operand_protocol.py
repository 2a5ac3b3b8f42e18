"""Hardware operand views through the capability protocol, the generic decode-LUT view, and the
accumulator enums.

Invariants:
- every built-in family has a HW_OPERAND handler; a family without one is seen through a decode
  LUT whose words are the EXACT fixed-point images of the format's values: lut[c] * 2**-frac ==
  values()[c] for every finite code (compared as integers / exact floats, no tolerance);
- the LUT is the narrowest such operand: frac is the smallest exponent making every value an
  integer, and the width is the smallest two's-complement width holding them;
- mac_cost names the LUT in its breakdown and prices it as a constant-folded, shared mux tree
  (a reduced ordered BDD: never more than the plain w * (2**bits - 1) MUX2);
- a dot product through the LUT operand equals the exact integer dot product (Python ints);
- formats with NaN / Inf codes, or wider than 32 bits, are refused with errors naming them;
- rounding / overflow strings are parsed once into enums; bad strings list the choices;
- the RTL recognises NaN / Inf by the format's code sets (``nan_codes``, ``inf_codes``), never
  by a rule's name: a minifloat with a NaN rule no built-in structure knows is decoded by
  compares and simulates bit for bit like the datapath (before: treated as all-finite); the
  built-in rules keep their compact structures (the generated RTL is unchanged);
- a family with a hardware view but no RTL handler, and a code set too large to compare, raise
  NotSupportedError naming what to register; the decode LUT's RTL (a case ROM) matches the
  datapath exhaustively;
- MX operands are the shared ``fmtlab.formats.BlockFormat`` values (the same names as before);
  block formats outside the MX MAC model (FP8 block scales, integer elements) are refused.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pytest

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import (BlockFormat, LookupFormat, get_block_format, get_format,
                            register_format, unregister_format)
from fmtlab.formats.base import Format
from fmtlab.formats.capabilities import (NotSupportedError, Subsystem, handled_families,
                                         register_handler)
from fmtlab.formats.minifloat import MiniFloat
from fmtlab.formats.special import (CodePattern, Field, SpecialRule, register_special_rule,
                                    unregister_special_rule)
from fmtlab.hw import mac_cost
from fmtlab.hw.accumulators import AccOverflow, AccRounding, FloatAcc, IntAcc, parse_accumulator
from fmtlab.hw.components import ConstRom
from fmtlab.hw.datapath import dot
from fmtlab.hw.mac import make_unit
from fmtlab.hw.operands import (FixedKind, FixedView, FloatView, MAX_LUT_WIDTH, SpecialDecode,
                                decode_lut_view, int_view, view)
from fmtlab.hw.rtl import generate
from fmtlab.hw.sim import check_unit, iverilog_available

needs_iverilog = pytest.mark.skipif(not iverilog_available(),
                                    reason="iverilog not installed (Debian: apt-get install iverilog)")


@dataclasses.dataclass(frozen=True)
class TableFormat(Format):
    """A table-only format of a family no subsystem knows: code i has value ``table[i]``
    (codes beyond the table are unused and decode to NaN)."""

    table: tuple[float, ...]
    label: str = "tbl"
    family: ClassVar[str] = "test_table_only"

    @property
    def bits(self) -> int:
        return max(1, (len(self.table) - 1).bit_length())

    @property
    def name(self) -> str:
        return self.label

    def _build_values(self) -> np.ndarray:
        v = np.full(1 << self.bits, np.nan)
        v[:len(self.table)] = self.table
        return v

    def _virtual_above(self) -> tuple[float, bool]:
        return 2 * self.table[-1] - self.table[-2], False


# hand-picked: 0.375 = 3/8 needs 3 fractional bits; ivals -24 .. 48 need 7 bits with sign
TBL = TableFormat((-3.0, -1.5, -0.25, 0.0, 0.375, 1.0, 2.5, 6.0), label="tbl3")
TBL_IVALS = (-24, -12, -2, 0, 3, 8, 20, 48)


def test_builtin_families_have_hw_operand_handlers():
    fams = set(handled_families(Subsystem.HW_OPERAND))
    assert {"int", "dint", "log", "minifloat", "e8m0"} <= fams
    assert TableFormat.family not in fams


def test_table_only_family_gets_the_narrowest_exact_fixed_point_lut():
    v = view(TBL)
    assert isinstance(v, FixedView) and v.kind is FixedKind.LUT
    assert v.frac == 3 and v.sig_bits == 7
    assert tuple(int(x) for x in v.lut) == TBL_IVALS
    # exact: every finite value is lut * 2**-frac
    assert all(Fraction(int(i), 1 << v.frac) == Fraction(x) for i, x in zip(v.lut, TBL.values()))
    # narrowest: frac - 1 leaves 0.375 fractional; 6 bits cannot hold 48
    assert any(Fraction(x) * (1 << (v.frac - 1)) % 1 for x in TBL.table)
    assert max(TBL_IVALS) >= 1 << (v.sig_bits - 2)


def test_unused_codes_decode_to_zero():
    f = TableFormat((-1.0, 0.0, 0.5, 1.0, 2.0), label="tbl5")  # 3 bits, codes 5..7 unused
    v = view(f)
    assert f.unused_codes == frozenset({5, 6, 7})
    assert tuple(int(x) for x in v.lut) == (-2, 0, 1, 2, 4, 0, 0, 0)
    assert (v.frac, v.sig_bits) == (1, 4)


def test_mac_cost_prices_a_decode_lut_into_the_multiplier():
    c = mac_cost(TBL, "int8", "int32")
    labels = [p.label for p in c.breakdown]
    assert "decode LUT (2**3 x 7 bits)" in labels
    lut = c.breakdown[labels.index("decode LUT (2**3 x 7 bits)")]
    assert dict(lut.cells) == dict(ConstRom(TBL_IVALS, 7).cells())
    assert 0 < sum(dict(lut.cells).values()) <= 7 * (2 ** 3 - 1)
    assert any(lbl == "multiplier 7x8" for lbl in labels)
    # the LUT operand costs more than a plain int4 x int8 MAC and less than int8 x int8
    assert mac_cost("int4", "int8", "int32").area_ge < c.area_ge


@pytest.mark.parametrize("words, width, cells", [
    ((5, 5, 5, 5), 3, {}),                  # constant table: wires only
    ((0, 1), 1, {}),                        # the address bit itself
    ((1, 0), 1, {"INV": 1}),                # its inverse
    ((0, 1, 1, 0), 1, {"INV": 1, "MUX2": 1}),  # XOR: a0 / ~a0 selected by a1
    ((0, 3, 3, 0), 2, {"INV": 1, "MUX2": 1}),  # two equal output bits share one tree
    ((0, 1, 2, 3), 2, {}),                  # the address is the word
])
def test_const_rom_folds_constants_and_shares_subtrees(words, width, cells):
    assert dict(ConstRom(words, width).cells()) == cells


def test_const_rom_never_exceeds_the_plain_mux_tree():
    rng = np.random.default_rng(1)
    for bits, width in ((2, 3), (4, 8), (6, 12)):
        words = tuple(int(x) for x in rng.integers(0, 1 << width, 1 << bits))
        n = sum(ConstRom(words, width).cells().values())
        assert n <= width * ((1 << bits) - 1)


def test_dot_through_the_lut_operand_is_the_exact_integer_dot_product():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 8, (5, 64))
    x = rng.integers(0, 256, 64)
    r = dot(w, x, TBL, "int8", "int32")
    xi = np.where(x >= 128, x - 256, x)
    exact = [sum(Fraction(TBL_IVALS[a], 8) * int(b) for a, b in zip(row, xi)) for row in w]
    assert [Fraction(float(v)) for v in r.value] == exact
    assert [int(v) for v in r.raw] == [int(e * 8) for e in exact]


def test_an_all_negative_table_gets_a_sign_bit():
    f = TableFormat((-4.0, -3.0, -2.0, -1.0), label="neg2")
    v = view(f)
    assert tuple(int(x) for x in v.lut) == (-4, -3, -2, -1) and (v.frac, v.sig_bits) == (0, 3)


def test_lut_wider_than_32_bits_names_the_format_and_the_width():
    f = TableFormat((-1.0, 0.0, 0.1, 1.0), label="tenth")  # 0.1 is not a short binary fraction
    with pytest.raises(FormatError, match=r"tenth.*<= 32 bits.*need 55 fractional bits and 57 bits"):
        view(f)
    assert MAX_LUT_WIDTH == 32
    with pytest.raises(FormatError, match="tenth"):
        mac_cost(f, "int8", "int32")


def test_lut_refuses_formats_with_nan_codes():
    @dataclasses.dataclass(frozen=True)
    class WithNaN(TableFormat):
        def canonical_nan_code(self, negative: bool = False):
            return 3

        def _build_values(self):
            v = super()._build_values()
            v[3] = np.nan
            return v

    f = WithNaN((-1.0, 0.0, 1.0, 2.0), label="nanny")
    assert f.nan_codes == frozenset({3})
    with pytest.raises(NotSupportedError, match=r"'test_table_only' \(nanny\).*1 NaN"):
        decode_lut_view(f)


def test_a_wide_product_needs_a_wide_accumulator():
    f = TableFormat((-1.0, 0.0, 2.0 ** -20, 1.0), label="deep")  # 20 fractional bits, 22 bits
    assert (view(f).frac, view(f).sig_bits) == (20, 22)
    # |ival| <= 2**20, |int8| <= 2**7: |product| <= 2**27, 28 magnitude bits + sign
    with pytest.raises(FmtlabError, match=r"products need 29 bits; int24 is narrower \(use int29 or wider\)"):
        make_unit(f, "int8", "int24")
    assert mac_cost(f, "int8", "int32").acc_bits == 32


# ------------------------------------------------------------------------------------------
# enums
# ------------------------------------------------------------------------------------------


def test_accumulator_strings_become_enums_once():
    assert IntAcc(32, "saturate").overflow is AccOverflow.SATURATE
    assert IntAcc(32).overflow is AccOverflow.WRAP
    assert FloatAcc(8, 13, "Toward-Zero").rounding is AccRounding.TOWARD_ZERO
    assert parse_accumulator("int24_sat").overflow is AccOverflow.SATURATE
    assert parse_accumulator("fp32", rounding="toward_zero").rounding is AccRounding.TOWARD_ZERO
    assert parse_accumulator("e8m13_rtz").name == "e8m13_rtz"
    assert make_unit("int8", "int8", "int32", overflow=AccOverflow.SATURATE).accumulator.name == "int32_sat"
    assert mac_cost("int8", "int8", "int32", overflow="saturate").accumulator == "int32_sat"


@pytest.mark.parametrize("make, choices", [
    (lambda: IntAcc(32, "clamp"), "wrap, saturate"),
    (lambda: FloatAcc(8, 23, "up"), "nearest_even, toward_zero"),
    (lambda: mac_cost("int8", "int8", "int32", overflow="bogus"), "wrap, saturate"),
    (lambda: mac_cost("fp8_e4m3", "fp8_e4m3", "fp32", rounding=1), "nearest_even, toward_zero"),
])
def test_bad_modes_list_the_choices(make, choices):
    with pytest.raises(FmtlabError, match=choices):
        make()


def test_existing_families_keep_their_views():
    assert view(get_format("int8")).kind is FixedKind.INT
    assert view(get_format("uint4")).kind is FixedKind.UINT
    assert view(get_format("dint4")).kind is FixedKind.DINT
    assert view(get_format("log4")).kind is FixedKind.LOG
    with pytest.raises(FmtlabError, match="block-scale"):
        view(get_format("e8m0"))


# ------------------------------------------------------------------------------------------
# RTL: special values from data facts, handlers per family, the LUT operand
# ------------------------------------------------------------------------------------------

TWO_NAN_CODES = (0b0111110, 0b0111111, 0b1111110, 0b1111111)


#: a NaN rule none of ieee/fn/fnuz/fin is: S.111.110 and S.111.111 are NaN, no Inf
TWO_NAN = SpecialRule("twonan", nan=(CodePattern(Field.ALL_ONES, Field.ALL_ONES),
                                     CodePattern(Field.ALL_ONES, 0b110)),
                      overflow="nan", doc="no Inf; S.1..1.1..1 and S.1..1.1..10 are NaN")


@pytest.fixture(scope="module")
def e3m3x():
    register_special_rule(TWO_NAN, replace=True)
    try:
        yield get_format("e3m3_twonan")
    finally:
        unregister_special_rule("twonan")


def test_builtin_rules_map_to_their_structures():
    want = {"fp8_e5m2": SpecialDecode.IEEE, "bf16": SpecialDecode.IEEE,
            "fp8_e4m3": SpecialDecode.ALL_ONES, "fp8_e4m3fnuz": SpecialDecode.NEG_ZERO,
            "fp8_e5m2fnuz": SpecialDecode.NEG_ZERO, "fp4_e2m1": SpecialDecode.NONE,
            "fp6_e2m3": SpecialDecode.NONE}
    assert {n: view(get_format(n)).special_decode for n in want} == want


def test_a_new_nan_rule_is_decoded_from_its_code_set(e3m3x):
    v = view(e3m3x)
    assert isinstance(v, FloatView) and v.nan_codes == frozenset(TWO_NAN_CODES)
    assert v.special_decode is SpecialDecode.CODES
    text = generate(make_unit(e3m3x, e3m3x, "fp32")).text
    assert "wire da_nan = (w == 7'd62) | (w == 7'd63) | (w == 7'd126) | (w == 7'd127);" in text
    assert mac_cost(e3m3x, e3m3x, "fp32").area_ge > mac_cost("fp6_e3m2", "fp6_e3m2", "fp32").area_ge


@needs_iverilog
@pytest.mark.parametrize("acc", ["fp32", "kulisch"])
def test_rtl_of_a_new_nan_rule_matches_the_datapath(e3m3x, acc):
    """Regression: the RTL used to treat an unknown rule as all-finite (NaN codes multiplied as
    numbers), which this exhaustive check catches."""
    r = check_unit(make_unit(e3m3x, e3m3x, acc))
    assert r.vectors == 1 << 14
    assert r.ok, r.first


@needs_iverilog
def test_an_unused_code_decodes_as_the_structure_computes_it():
    """A rule without -0 leaves the code 1.000.000 unused (NaN in values(), never produced):
    the datapath must give it the value the decoder's structure gives it (-0), as the RTL does
    (before: the datapath multiplied it as NaN, the RTL as -0, and the exhaustive check failed)."""
    rule = SpecialRule("hwnoneg0", nan=(CodePattern(Field.ALL_ONES, Field.ZERO),),
                       negative_zero=False)
    f = MiniFloat(3, 3, special=rule)
    assert f.unused_codes == frozenset({0b1000000}) and f.nan_codes == frozenset({56, 120})
    r = check_unit(make_unit(f, f, "fp32"))
    assert r.vectors == 1 << 14 and r.ok, r.first


def test_too_many_unstructured_special_codes_are_refused():
    many = SpecialRule("manynan", nan=tuple(CodePattern(Field.ANY, k) for k in (1, 3, 5)))
    f = MiniFloat(4, 3, special=many)  # 16 exponents x 3 mantissas x 2 signs = 96 NaN codes
    assert len(f.nan_codes) == 96
    with pytest.raises(NotSupportedError, match=r"e4m3_manynan.*96 NaN.*register RTL"):
        generate(make_unit(f, "fp8_e4m3", "fp32"))


def test_family_without_rtl_handler_raises_not_supported():
    @dataclasses.dataclass(frozen=True)
    class NoRtl(TableFormat):
        family = "test_hw_view_without_rtl"
        unsigned = False

    register_handler(Subsystem.HW_OPERAND, NoRtl.family, int_view, replace=True)
    f = NoRtl(tuple(float(i) for i in range(-8, 8)), label="nortl4")
    assert mac_cost(f, "int8", "int32").area_ge > 0  # the view exists ...
    with pytest.raises(NotSupportedError, match=r"RTL generator not supported for family "
                                                r"'test_hw_view_without_rtl'"):
        generate(make_unit(f, "int8", "int32"))  # ... the RTL does not


@needs_iverilog
def test_rtl_of_a_decode_lut_operand_matches_the_datapath():
    u = make_unit(TBL, "int8", "int32")
    text = generate(u).text
    assert "always @* case (w)" in text and "3'd7: dw_lut = 7'd48;" in text and "3'd0: dw_lut = 7'd104;" in text
    r = check_unit(u)
    assert r.vectors == 1 << 11  # every (w, a) pair
    assert r.ok, r.first


# ------------------------------------------------------------------------------------------
# MX defined once: fmtlab.formats.BlockFormat
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, element, block", [
    ("mxfp8", "fp8_e4m3", 32), ("mxfp8_e5m2", "fp8_e5m2", 32), ("mxfp6", "fp6_e3m2", 32),
    ("mxfp6_e3m2", "fp6_e3m2", 32), ("mxfp6_e2m3", "fp6_e2m3", 32), ("mxfp4", "fp4_e2m1", 32),
    ("mxfp4_b16", "fp4_e2m1", 16), ("MXFP8_B64", "fp8_e4m3", 64)])
def test_hw_reads_mx_names_as_the_shared_block_formats(name, element, block):
    u = make_unit(name, name, "fp32")
    assert isinstance(u.weight, BlockFormat) and u.weight == get_block_format(name)
    assert (u.weight.element.name, u.weight.block, u.macs_per_cycle) == (element, block, block)


def test_block_format_objects_and_rules():
    bf = BlockFormat("fp8_e4m3", 32)
    assert mac_cost(bf, bf, "fp32") == mac_cost("mxfp8", "mxfp8", "fp32")
    # the shared-exponent rule picks the scale; the MAC that consumes it is the same circuit
    assert mac_cost("mxfp8_ceil", "mxfp8_ceil").area_ge == mac_cost("mxfp8", "mxfp8").area_ge


@pytest.mark.parametrize("name, match", [
    ("nvfp4", "E8M0-scaled"), ("mxint8", "minifloat elements"), ("mxfp8_b1", "2..1024")])
def test_block_formats_the_mac_model_does_not_cover(name, match):
    with pytest.raises(FmtlabError, match=match):
        mac_cost(name, name, "fp32")


def test_circuit_styles_are_enums_parsed_once():
    from fmtlab.hw.blocks import Styles
    from fmtlab.hw.components import AdderStyle, MultiplierStyle, PrefixAdder

    st = Styles("kogge_stone", "Booth")
    assert (st.adder, st.multiplier) == (AdderStyle.KOGGE_STONE, MultiplierStyle.BOOTH)
    assert PrefixAdder(8, "brent_kung").describe() == "PrefixAdder(n=8, kind=brent_kung)"
    assert mac_cost("int8", "int8", adder=AdderStyle.BRENT_KUNG) == mac_cost("int8", "int8", adder="brent_kung")
    with pytest.raises(ValueError, match="ripple, brent_kung, kogge_stone"):
        mac_cost("int8", "int8", adder="carry_magic")


# ------------------------------------------------------------------------------------------
# bring-your-own formats (LookupFormat + register_format) and the built-in lookup formats
# ------------------------------------------------------------------------------------------


def test_a_registered_lookup_format_is_priced_and_computed_by_name():
    f = LookupFormat([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], name="hwtest_lut7")
    register_format(f)
    try:
        c = mac_cost("hwtest_lut7", "int8", "int32")
        assert c.weight == "hwtest_lut7"
        assert "decode LUT (2**3 x 4 bits)" in [p.label for p in c.breakdown]
        # code 7 is unused (7 values in 3 bits): it decodes to 0
        assert tuple(int(x) for x in view(f).lut) == (-4, -2, -1, 0, 1, 2, 4, 0)
        w = np.arange(7)
        x = np.array([-128, -1, 3, 127, 5, -7, 100]) % 256
        r = dot(w, x, "hwtest_lut7", "int8", "int32")
        assert Fraction(float(r.value)) == sum(Fraction(v) * int(a) for v, a in
                                               zip(f.values()[:7], [-128, -1, 3, 127, 5, -7, 100]))
    finally:
        unregister_format("hwtest_lut7")


def test_nf4_needs_a_29_bit_exact_operand_and_iq4nl_an_8_bit_one():
    """NF4's 16 values are float32 numbers down to 0.0796 (2**-4 <= v < 2**-3): 27 fractional
    bits, 29 bits with sign; IQ4_NL's are integers in [-127, 113]: 8 bits."""
    nf4, iq4 = view(get_format("nf4")), view(get_format("iq4nl"))
    assert (nf4.frac, nf4.sig_bits) == (27, 29) and (iq4.frac, iq4.sig_bits) == (0, 8)
    assert [Fraction(int(i), 1 << 27) for i in nf4.lut] == [Fraction(v) for v in get_format("nf4").values()]
    assert [int(i) for i in iq4.lut] == [int(v) for v in get_format("iq4nl").values()]
    with pytest.raises(FmtlabError, match=r"nf4 x int8 products need 36 bits; int32 is narrower "
                                          r"\(use int36 or wider\)"):
        mac_cost("nf4", "int8", "int32")
    base = mac_cost("int4", "int8", "int32")
    assert mac_cost("nf4", "int8", "int36").area_ge > 3 * base.area_ge
    assert base.area_ge < mac_cost("iq4nl", "int8", "int32").area_ge < 1.2 * mac_cost("int8", "int8").area_ge


@needs_iverilog
@pytest.mark.parametrize("name, acc", [("nf4", "int36"), ("iq4nl", "int32")])
def test_rtl_of_the_builtin_lookup_formats_matches_the_datapath(name, acc):
    r = check_unit(make_unit(name, "int8", acc))
    assert r.vectors == 1 << 12 and r.ok, r.first
