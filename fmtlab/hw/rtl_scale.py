"""Verilog of the scale and quantizer datapaths of :mod:`fmtlab.hw.scale_units`, and their
analytical parts, for the Yosys cross-check (``fmtlab hw synth --scale-units``).

Each :class:`ScaleUnit` pairs a generated module (combinational unless it holds a register) with
the parts list the cost model prices for the same circuit:

- ``e4m3_scale_mul_s<SB>``: NVFP4 block-scale multiply. Inputs: the two E4M3 scale codes and the
  block's exact ``SB``-bit two's-complement sum; outputs: sum x sig_w x sig_x (SB + 9 bits, signed)
  and the scale exponent max(E_w, 1) + max(E_x, 1) (5 bits). Scales are finite (an E4M3 scale is
  never NaN), so no special-value logic.
- ``mx_shared_exp_k<K>``: the MX quantizer's shared-exponent logic over a block of K bf16 inputs:
  the largest exponent field (a tree of K - 1 compare-and-select), the E8M0 scale
  X = max(E_max - emax_elem, 0) (OCP MX v1.0 FLOOR rule, in biased form), and per element the
  exponent relative to it, E_i - X (8-bit subtract).
- ``absmax_k<K>``: the dynamic quantizer's |x| max over K bf16 inputs (tree of K - 1 15-bit
  compare-and-select).
- ``promote_e8m13_fp32``: the promotion adder of ``hopper_fp8_mma``: the inner 1/8/13 partial sum
  added into the fp32 outer accumulator (the FP adder of :func:`fmtlab.hw.rtl_parts.fp_adder_module`)
  and its register.
"""

from __future__ import annotations

import dataclasses

from fmtlab.hw.accumulators import FloatAcc
from fmtlab.hw.blocks import Part, Styles
from fmtlab.hw.rtl_parts import extend, fp_adder_module, mult_module
from fmtlab.hw.scale_units import (absmax_tree_parts, fp8_scale_multiply_parts, mx_shared_exponent_parts,
                                   promotion_adder_parts, promotion_we)

__all__ = ["ScaleUnit", "ScaleRTL", "e4m3_scale_mul", "mx_shared_exp", "absmax_tree", "promotion_adder",
           "scale_units"]


@dataclasses.dataclass(frozen=True)
class ScaleRTL:
    """Generated Verilog of one scale / quantizer datapath (what :func:`fmtlab.hw.synth.synthesize`
    needs: ``top`` and ``text``)."""

    top: str
    text: str


@dataclasses.dataclass(frozen=True)
class ScaleUnit:
    """A datapath of :mod:`fmtlab.hw.scale_units`: its name, parts (the model) and RTL."""

    name: str
    parts: tuple[Part, ...]
    rtl: ScaleRTL


def e4m3_scale_mul(sb: int, st: Styles = Styles()) -> ScaleUnit:
    top = f"e4m3_scale_mul_s{sb}"
    P = sb + 9
    v = [mult_module(f"{top}_sig", 4, 4, False), mult_module(f"{top}_mul", sb, 9, True),
         f"module {top}(input [7:0] sw, input [7:0] sx, input [{sb - 1}:0] s, output [{P - 1}:0] p, output [4:0] e);"]
    for q, src in (("w", "sw"), ("x", "sx")):
        v += [f"  wire [3:0] {q}E = {src}[6:3];", f"  wire {q}h = |{q}E;",
              f"  wire [3:0] {q}sig = {{{q}h, {src}[2:0]}};",
              f"  wire [3:0] {q}ee = {{{q}E[3:1], {q}E[0] | ~{q}h}};"]
    v += ["  wire [7:0] ssig;", f"  {top}_sig usig(.a(wsig), .b(xsig), .y(ssig));",
          "  wire sgn = sw[7] ^ sx[7];",
          f"  wire [{sb - 1}:0] sv = sgn ? -s : s;",
          f"  {top}_mul um(.a(sv), .b({{1'b0, ssig}}), .y(p));",
          "  assign e = {1'b0, wee} + {1'b0, xee};", "endmodule", ""]
    parts = fp8_scale_multiply_parts(sb, st)
    return ScaleUnit(top, tuple(parts), ScaleRTL(top, "\n".join(v)))


def mx_shared_exp(k: int, emax_elem: int = 2, st: Styles = Styles()) -> ScaleUnit:
    top = f"mx_shared_exp_k{k}"
    v = [f"module {top}(input [{16 * k - 1}:0] x, output [7:0] scale, output [{8 * k - 1}:0] rel);"]
    level = [f"x[{16 * i + 14}:{16 * i + 7}]" for i in range(k)]
    lvl = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            nm = f"m{lvl}_{j // 2}"
            v.append(f"  wire [7:0] {nm} = ({level[j]} > {level[j + 1]}) ? {level[j]} : {level[j + 1]};")
            nxt.append(nm)
        if len(level) % 2:
            nxt.append(level[-1])
        level, lvl = nxt, lvl + 1
    v += [f"  wire [7:0] emax = {level[0]};",
          f"  assign scale = (emax > 8'd{emax_elem}) ? emax - 8'd{emax_elem} : 8'd0;",
          "  genvar i;",
          f"  generate for (i = 0; i < {k}; i = i + 1) begin : el",
          "    assign rel[8*i +: 8] = x[16*i+7 +: 8] - scale;",
          "  end endgenerate", "endmodule", ""]
    parts = mx_shared_exponent_parts(k, st)
    return ScaleUnit(top, tuple(parts), ScaleRTL(top, "\n".join(v)))


def absmax_tree(k: int) -> ScaleUnit:
    top = f"absmax_k{k}"
    v = [f"module {top}(input [{16 * k - 1}:0] x, output [14:0] amax);"]
    level = [f"x[{16 * i + 14}:{16 * i}]" for i in range(k)]
    lvl = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            nm = f"m{lvl}_{j // 2}"
            v.append(f"  wire [14:0] {nm} = ({level[j]} > {level[j + 1]}) ? {level[j]} : {level[j + 1]};")
            nxt.append(nm)
        if len(level) % 2:
            nxt.append(level[-1])
        level, lvl = nxt, lvl + 1
    v += [f"  assign amax = {level[0]};", "endmodule", ""]
    parts = absmax_tree_parts(k)
    return ScaleUnit(top, tuple(parts), ScaleRTL(top, "\n".join(v)))


def promotion_adder(inner: FloatAcc = FloatAcc(8, 13), outer: FloatAcc = FloatAcc(8, 23),
                    st: Styles = Styles()) -> ScaleUnit:
    top = f"promote_{inner.name}_{outer.name}".replace("-", "_")
    ei, mi = inner.exp_bits, inner.man_bits
    npx = mi + 1
    we = promotion_we(inner, outer)
    ib = inner.bits
    v = [fp_adder_module(f"{top}_add", npx, we, outer, False),
         f"module {top}(input clk, input clr, input [{ib - 1}:0] part, output reg [{outer.bits - 1}:0] acc);",
         f"  wire [{ei - 1}:0] pe = part[{ei + mi - 1}:{mi}];",
         "  wire ph = |pe;",
         f"  wire [{mi}:0] psig = {{ph, part[{mi - 1}:0]}};",
         f"  wire pnan = (&pe) & (|part[{mi - 1}:0]);",
         f"  wire pinf = (&pe) & ~(|part[{mi - 1}:0]);",
         f"  wire signed [{we - 1}:0] pt = $signed({extend('pe', ei, we, False)}) + (ph ? -{we}'sd{inner.bias} : -{we}'sd{inner.bias - 1});",
         f"  wire [{outer.bits - 1}:0] nxt;",
         f"  {top}_add ua(.xs(part[{ib - 1}]), .xt(pt), .xsig(psig), .xzero(~(|psig)), .xinf(pinf), .xnan(pnan), "
         ".acc_in(acc), .acc_out(nxt));",
         f"  always @(posedge clk) acc <= clr ? {outer.bits}'d0 : nxt;", "endmodule", ""]
    parts = promotion_adder_parts(inner, outer, st)
    return ScaleUnit(top, tuple(parts), ScaleRTL(top, "\n".join(v)))


def scale_units() -> list[ScaleUnit]:
    """The datapaths cross-checked against Yosys: NVFP4's scale multiply (block sum of an FP4 x FP4
    block of 16: 13 bits, :func:`fmtlab.hw.mac.mx_geometry`), MX shared-exponent logic and absmax over 32 / 16 elements, and the
    ``hopper_fp8_mma`` promotion adder."""
    return [e4m3_scale_mul(13), mx_shared_exp(32), absmax_tree(16), promotion_adder()]
