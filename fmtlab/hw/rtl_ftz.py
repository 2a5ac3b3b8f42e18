"""Verilog of the flush-to-zero, no-special-value FP MAC (:mod:`fmtlab.hw.ftz`).

``ftz_core(name, unit)`` writes ``<name>_core`` (``acc_out = FTZ(round_ne(acc_in + w * a))``)
with the widths of :func:`fmtlab.hw.ftz.ftz_geometry`; shifters and the leading-zero counter are
the log-depth modules of :mod:`fmtlab.hw.rtl_parts`, the multiplier gets the hidden ones as
constant inputs (synthesis removes their AND gates).
"""

from __future__ import annotations

from fmtlab.hw.accumulators import FloatAcc
from fmtlab.hw.components import clog2
from fmtlab.hw.ftz import ftz_geometry
from fmtlab.hw.mac import MacUnit
from fmtlab.hw.operands import FloatView, view
from fmtlab.hw.rtl_parts import const, extend, lzc_module, mult_module, shl_module, shr_sticky_module

__all__ = ["ftz_core"]


def _decode(p: str, v: FloatView, src: str) -> list[str]:
    e, m = v.exp_bits, v.man_bits
    return [f"  wire {p}_s = {src}[{e + m}];",
            f"  wire [{e - 1}:0] {p}_E = {src}[{e + m - 1}:{m}];",
            f"  wire [{m}:0] {p}_sig = {{1'b1, {src}[{m - 1}:0]}};",
            f"  wire {p}_z = ~(|{p}_E);"]


def ftz_core(name: str, unit: MacUnit) -> tuple[str, int]:
    a: FloatView = view(unit.weight)  # type: ignore[assignment]
    b: FloatView = view(unit.activation)  # type: ignore[assignment]
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    g = ftz_geometry(a, b, acc)
    np_, pc, wm, wa, n, we = (g[k] for k in ("np", "pc", "wm", "wa", "n", "we"))
    ec, mc = acc.exp_bits, acc.man_bits
    accb = acc.bits
    bias = acc.bias
    allone = (1 << ec) - 1
    ka = clog2(wa + 1)
    lzc_txt, lzw = lzc_module(f"{name}_lzc", n)
    subs = [mult_module(f"{name}_mul", a.sig_bits, b.sig_bits, False), lzc_txt,
            shr_sticky_module(f"{name}_align", wa, ka), shl_module(f"{name}_norm", n, lzw)]
    S = lambda v: const(v, we)  # noqa: E731
    off = -a.bias - b.bias
    L = [f"module {name}_core(input [{a.bits - 1}:0] w, input [{b.bits - 1}:0] a, "
         f"input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);"]
    L += _decode("da", a, "w") + _decode("db", b, "a")
    L += [f"  wire [{np_ - 1}:0] ps;",
          f"  {name}_mul umul(.a(da_sig), .b(db_sig), .y(ps));",
          "  wire psn = da_s ^ db_s;",
          "  wire pzero = da_z | db_z;",
          f"  wire [{np_ - 1}:0] pn = ps[{np_ - 1}] ? ps : {{ps[{np_ - 2}:0], 1'b0}};",
          f"  wire signed [{we - 1}:0] xt = $signed({extend('da_E', a.exp_bits, we, False)}) + "
          f"$signed({extend('db_E', b.exp_bits, we, False)}) + (ps[{np_ - 1}] ? {S(off + 1)} : {S(off)});",
          f"  wire cs = acc_in[{ec + mc}];",
          f"  wire [{ec - 1}:0] ce = acc_in[{ec + mc - 1}:{mc}];",
          "  wire czero = ~(|ce);",
          f"  wire [{pc - 1}:0] csig = czero ? {pc}'d0 : {{1'b1, acc_in[{mc - 1}:0]}};",
          f"  wire signed [{we - 1}:0] ct = $signed({extend('ce', ec, we, False)}) - {S(bias)};"]
    xpad = f"{{pn, {wm - np_}'d0}}" if wm > np_ else "pn"
    cpad = f"{{csig, {wm - pc}'d0}}" if wm > pc else "csig"
    L += [f"  wire [{wm - 1}:0] X = pzero ? {wm}'d0 : {xpad};",
          f"  wire [{wm - 1}:0] C = {cpad};",
          "  wire xbig = ~pzero & (czero | (xt > ct) | ((xt == ct) & (X >= C)));",
          f"  wire [{wm - 1}:0] bs = xbig ? X : C;",
          f"  wire [{wm - 1}:0] ss = xbig ? C : X;",
          f"  wire signed [{we - 1}:0] bt = xbig ? xt : ct;",
          f"  wire signed [{we - 1}:0] st = xbig ? ct : xt;",
          "  wire bsg = xbig ? psn : cs;",
          "  wire ssg = xbig ? cs : psn;",
          f"  wire signed [{we - 1}:0] d = bt - st;",
          f"  wire dclamp = d[{we - 1}] | (d > {S(wa)});",
          f"  wire [{ka - 1}:0] damt = dclamp ? {ka}'d{wa} : d[{ka - 1}:0];",
          f"  wire [{wa - 1}:0] al; wire stk;",
          f"  {name}_align ual(.x({{ss, 3'd0}}), .amt(damt), .y(al), .sticky(stk));",
          f"  wire [{wa - 1}:0] sm = {{al[{wa - 1}:1], al[0] | stk}};",
          "  wire sub = bsg ^ ssg;",
          f"  wire [{wa + 1}:0] tsum = {{1'b0, bs, 3'd0, 1'b1}} + {{({{1'b0, sm}} ^ {{{wa + 1}{{sub}}}}), sub}};",
          f"  wire [{wa}:0] sum = tsum[{wa + 1}:1];",
          f"  wire [{lzw - 1}:0] lz; wire nz;",
          f"  {name}_lzc ulz(.x(sum), .cnt(lz), .v(nz));",
          f"  wire [{wa}:0] nl;",
          f"  {name}_norm unl(.x(sum), .amt(lz), .y(nl));",
          f"  wire signed [{we - 1}:0] eb = bt + {S(1 + bias)} - $signed({extend('lz', lzw, we, False)});",
          f"  wire [{pc - 1}:0] keep = nl[{wa}:{wa - pc + 1}];",
          f"  wire rb = nl[{wa - pc}];",
          f"  wire sb = |nl[{wa - pc - 1}:0];",
          "  wire inc = rb & (keep[0] | sb);",
          f"  wire [{ec + mc}:0] rnd = {{1'b0, eb[{ec - 1}:0], keep[{pc - 2}:0]}} + {{{ec + mc}'d0, inc}};",
          f"  wire flush = eb[{we - 1}] | ~(|rnd[{ec + mc - 1}:{mc}]);",
          f"  wire ovf = ~eb[{we - 1}] & ((eb > {S(allone)}) | rnd[{ec + mc}]);",
          "  wire rs = nz ? bsg : (bsg & ssg);",
          f"  assign acc_out = ~nz ? {{rs, {ec + mc}'d0}} : ovf ? {{rs, {ec}'d{allone}, {{{mc}{{1'b1}}}}}} :",
          f"                   flush ? {{rs, {ec + mc}'d0}} : {{rs, rnd[{ec + mc - 1}:0]}};",
          "endmodule", ""]
    return "\n".join(subs + L), accb
