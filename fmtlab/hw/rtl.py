"""Synthesizable Verilog-2005 for every MAC unit the cost model describes.

Each unit gets a combinational core ``<name>_core`` (``acc_out = f(acc_in, w, a)``; MX cores
also take a block of elements and the two E8M0 scales) and a registered top ``<name>`` with a
clock and a synchronous clear. Products are sized explicitly (``wire [P-1:0] p = w * a``) and
only then sign-extended to the accumulator: ``acc + a * b`` in one expression would widen the
multiplier to the accumulator's width.

Structures (the same as :mod:`fmtlab.hw.blocks` counts):
- negation of sign-magnitude products: XOR row plus the +1 as the accumulator adder's carry-in,
  written as ``({acc, 1} + {x ^ s, s}) >> 1``;
- shifters with sticky bits and leading-zero counters are generated as explicit log-depth trees;
- the FP adder is one module per unit (see :func:`fp_adder_module`), used for FP accumulation,
  for FMA units and (twice) in MX units: once with a zero accumulator to round the exact block
  sum, once to add the rounded block value to the accumulator.

The RTL implements nearest-even rounding only (the datapath also offers toward-zero).
"""

from __future__ import annotations

import dataclasses
import re

from fmtlab.errors import FmtlabError
from fmtlab.hw.components import clog2
from fmtlab.hw.mac import (MacUnit, fp_acc_geometry, fp_adder_we, kulisch_flag_bits,
                           kulisch_geometry, mx_geometry)
from fmtlab.hw.operands import FixedView, FloatAcc, FloatView, IntAcc, KulischAcc, view


@dataclasses.dataclass(frozen=True)
class RTL:
    """Generated Verilog for one unit and its interface widths."""

    unit: MacUnit
    top: str
    core: str
    text: str
    w_bits: int  # element bits (MX: one element)
    a_bits: int
    acc_bits: int
    block: int = 1  # MX block size (elements per operand per cycle)


def module_name(unit: MacUnit) -> str:
    """A Verilog identifier for the unit, e.g. ``mac_int8_x_int8_int32``."""
    s = f"mac_{unit.weight.name}_x_{unit.activation.name}_{unit.accumulator.name}"
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


def _ext(expr: str, w_from: int, w_to: int, signed: bool) -> str:
    """Zero/sign-extend a ``w_from``-bit expression to ``w_to`` bits."""
    if w_to == w_from:
        return expr
    if w_to < w_from:
        raise AssertionError(f"cannot extend {w_from} to {w_to} bits")
    if signed:
        return f"{{{{{w_to - w_from}{{{expr}[{w_from - 1}]}}}}, {expr}}}"
    return f"{{{w_to - w_from}'d0, {expr}}}"


def _const(v: int, w: int) -> str:
    """A w-bit two's-complement constant."""
    return f"{w}'d{v % (1 << w)}" if v >= 0 else f"-{w}'sd{-v}"


# ------------------------------------------------------------------------------------------
# generic sub-modules (named per unit to keep every file self-contained)
# ------------------------------------------------------------------------------------------


def lzc_module(name: str, n: int) -> tuple[str, int]:
    """Tree leading-zero counter of n bits: ``cnt`` (valid when ``v``), all-zero -> v = 0.
    Returns (text, count width)."""
    k = clog2(max(n, 2))
    size = 1 << k
    lines = [f"module {name}(input [{n - 1}:0] x, output [{k - 1}:0] cnt, output v);"]
    # level 0: bits, MSB first; padding bits (below the LSB) are zero
    nodes = []
    for i in range(size):
        bit = n - 1 - i
        nodes.append((f"x[{bit}]" if bit >= 0 else "1'b0", None))
    lvl = 0
    while len(nodes) > 1:
        lvl += 1
        nxt = []
        for j in range(0, len(nodes), 2):
            (vh, ch), (vl, cl) = nodes[j], nodes[j + 1]
            vn, cn = f"v{lvl}_{j // 2}", f"c{lvl}_{j // 2}"
            lines.append(f"  wire {vn} = {vh} | {vl};")
            if lvl == 1:
                lines.append(f"  wire [0:0] {cn} = ~{vh};")
            else:
                lines.append(f"  wire [{lvl - 1}:0] {cn} = {vh} ? {{1'b0, {ch}}} : {{1'b1, {cl}}};")
            nxt.append((vn, cn))
        nodes = nxt
    v, c = nodes[0]
    lines += [f"  assign v = {v};", f"  assign cnt = {c};", "endmodule", ""]
    return "\n".join(lines), k


def shr_sticky_module(name: str, n: int, k: int) -> str:
    """Right shift of n bits by a k-bit amount, log-depth, OR of the shifted-out bits."""
    lines = [f"module {name}(input [{n - 1}:0] x, input [{k - 1}:0] amt, output [{n - 1}:0] y, "
             "output sticky);", f"  wire [{n - 1}:0] s0 = x;", "  wire t0 = 1'b0;"]
    for i in range(k):
        step = 1 << i
        if step >= n:
            lines.append(f"  wire [{n - 1}:0] s{i + 1} = amt[{i}] ? {n}'d0 : s{i};")
            lines.append(f"  wire t{i + 1} = t{i} | (amt[{i}] & (|s{i}));")
        else:
            lines.append(f"  wire [{n - 1}:0] s{i + 1} = amt[{i}] ? {{{step}'d0, s{i}[{n - 1}:{step}]}} : s{i};")
            lines.append(f"  wire t{i + 1} = t{i} | (amt[{i}] & (|s{i}[{step - 1}:0]));")
    lines += [f"  assign y = s{k};", f"  assign sticky = t{k};", "endmodule", ""]
    return "\n".join(lines)


def shl_module(name: str, n: int, k: int) -> str:
    """Left shift of n bits by a k-bit amount (fixed width: bits shifted out are dropped)."""
    lines = [f"module {name}(input [{n - 1}:0] x, input [{k - 1}:0] amt, output [{n - 1}:0] y);",
             f"  wire [{n - 1}:0] s0 = x;"]
    for i in range(k):
        step = 1 << i
        if step >= n:
            lines.append(f"  wire [{n - 1}:0] s{i + 1} = amt[{i}] ? {n}'d0 : s{i};")
        else:
            lines.append(f"  wire [{n - 1}:0] s{i + 1} = amt[{i}] ? {{s{i}[{n - 1 - step}:0], {step}'d0}} : s{i};")
    lines += [f"  assign y = s{k};", "endmodule", ""]
    return "\n".join(lines)


def mult_module(name: str, n: int, m: int, signed: bool) -> str:
    """Array multiplier with explicit partial products (the reduction is left to synthesis).

    unsigned: rows (a & b[j]) << j. signed (two's complement, Baugh-Wooley): rows j < m-1 have
    their top bit inverted (~(a[n-1] & b[j])), row m-1 has every bit but the top inverted, plus
    the constant 2^(n+m-1) + 2^(n-1) + 2^(m-1); the sum mod 2^(n+m) is the product. (Yosys' own ``$mul`` of
    signed operands sign-extends both to the product width and needs ~1.3x the area.)
    """
    P = n + m
    L = [f"module {name}(input [{n - 1}:0] a, input [{m - 1}:0] b, output [{P - 1}:0] y);"]
    rows = []
    for j in range(m):
        if not signed:
            row = f"a & {{{n}{{b[{j}]}}}}"
        elif n == 1:
            row = f"a[0] & b[{j}]"
        elif j < m - 1:
            row = f"{{~(a[{n - 1}] & b[{j}]), a[{n - 2}:0] & {{{n - 1}{{b[{j}]}}}}}}"
        else:
            row = f"{{a[{n - 1}] & b[{j}], ~(a[{n - 2}:0] & {{{n - 1}{{b[{j}]}}}})}}"
        L.append(f"  wire [{P - 1}:0] r{j} = {{{m}'d0, {row}}} << {j};")
        rows.append(f"r{j}")
    const = ((1 << (P - 1)) + (1 << (n - 1)) + (1 << (m - 1))) % (1 << P) if signed and n > 1 and m > 1 else 0
    tail = f" + {P}'d{const}" if const else ""
    L += [f"  assign y = {' + '.join(rows)}{tail};", "endmodule", ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------
# float operand decode and product
# ------------------------------------------------------------------------------------------


def float_decode(p: str, v: FloatView, src: str) -> list[str]:
    """Wires {p}_s, {p}_sig [P-1:0], {p}_ee [E-1:0] (= max(E, 1): the LSB ORed with ~hidden),
    {p}_zero/_inf/_nan."""
    e, m = v.exp_bits, v.man_bits
    P = m + 1
    L = [f"  wire {p}_s = {src}[{e + m}];",
         f"  wire [{e - 1}:0] {p}_E = {src}[{e + m - 1}:{m}];"]
    if m > 0:
        L.append(f"  wire [{m - 1}:0] {p}_F = {src}[{m - 1}:0];")
    L.append(f"  wire {p}_h = |{p}_E;")
    frac = f", {p}_F" if m > 0 else ""
    if v.subnormals:
        L.append(f"  wire [{P - 1}:0] {p}_sig = {{{p}_h{frac}}};")
    else:
        L.append(f"  wire [{P - 1}:0] {p}_sig = {p}_h ? {{1'b1{frac}}} : {P}'d0;")
    hi = f"{p}_E[{e - 1}:1], " if e > 1 else ""
    L.append(f"  wire [{e - 1}:0] {p}_ee = {{{hi}{p}_E[0] | ~{p}_h}};")
    fnz = f"(|{p}_F)" if m > 0 else "1'b0"
    fall = f"(&{p}_F)" if m > 0 else "1'b1"
    if v.special == "ieee":
        L.append(f"  wire {p}_nan = (&{p}_E) & {fnz};")
        L.append(f"  wire {p}_inf = (&{p}_E) & ~{fnz};")
    elif v.special == "fn":
        L.append(f"  wire {p}_nan = (&{p}_E) & {fall};")
        L.append(f"  wire {p}_inf = 1'b0;")
    elif v.special == "fnuz":
        L.append(f"  wire {p}_nan = {src} == {{1'b1, {e + m}'d0}};")
        L.append(f"  wire {p}_inf = 1'b0;")
    else:
        L.append(f"  wire {p}_nan = 1'b0;")
        L.append(f"  wire {p}_inf = 1'b0;")
    L.append(f"  wire {p}_zero = ~(|{p}_sig);")
    return L


def float_product(a: FloatView, b: FloatView, mult: str) -> list[str]:
    """Decode w and a; product significand ``ps`` [NP-1:0] (via the multiplier module ``mult``,
    see :func:`mult_module`), sign ``psn``, flags."""
    np_ = a.sig_bits + b.sig_bits
    L = float_decode("da", a, "w") + float_decode("db", b, "a")
    L += [f"  wire [{np_ - 1}:0] ps;",
          f"  {mult} umul(.a(da_sig), .b(db_sig), .y(ps));",
          "  wire psn = da_s ^ db_s;",
          "  wire pnan = da_nan | db_nan | (da_inf & db_zero) | (db_inf & da_zero);",
          "  wire pinf = (da_inf | db_inf) & ~pnan;",
          "  wire pzero = (da_zero | db_zero) & ~pnan & ~pinf;"]
    return L


# ------------------------------------------------------------------------------------------
# FP adder: exact operand X + accumulator -> accumulator rounded to nearest even
# ------------------------------------------------------------------------------------------


def fp_adder_module(name: str, npx: int, we: int, acc: FloatAcc, denorm: bool) -> str:
    """Module ``name``(xs, xt, xsig, xzero, xinf, xnan, acc_in) -> acc_out.

    X = (-1)^xs * xsig * 2^(xt - npx + 1): xsig normalised (MSB set) unless X is zero, or X a
    subnormal of the accumulator format with xt = emin. Single-path algorithm: swap by
    magnitude, align with sticky, add/subtract, LZC + normalising shift limited at emin
    (``denorm``: right shift with sticky when the larger exponent lies below emin, and the
    accumulator is pre-normalised so that magnitudes compare by (exponent, significand)),
    round to nearest even on the packed exponent|fraction, Inf/NaN/overflow select.
    """
    ec, mc = acc.exp_bits, acc.man_bits
    pc = mc + 1
    bias = acc.bias
    emin = 1 - bias
    wm = max(pc, npx)
    wa = wm + 3
    n = wa + 1  # sum width (bit wa = carry position)
    ka = clog2(wa + 1)
    accb = 1 + ec + mc
    allone = (1 << ec) - 1
    lzc_txt, lzw = lzc_module(f"{name}_lzc", n)
    subs = [lzc_txt, shr_sticky_module(f"{name}_align", wa, ka), shl_module(f"{name}_norm", n, lzw)]
    kd = clog2(n + 1)
    if denorm:
        subs.append(shr_sticky_module(f"{name}_dnorm", n, kd))
        lzc_c, lzcw = lzc_module(f"{name}_clz", pc)
        subs.append(lzc_c)
        subs.append(shl_module(f"{name}_cnorm", pc, lzcw))
    S = lambda v: _const(v, we)  # noqa: E731
    L = [f"module {name}(input xs, input signed [{we - 1}:0] xt, input [{npx - 1}:0] xsig,",
         f"    input xzero, input xinf, input xnan, input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);",
         f"  wire cs = acc_in[{ec + mc}];",
         f"  wire [{ec - 1}:0] ce = acc_in[{ec + mc - 1}:{mc}];",
         f"  wire [{mc - 1}:0] cf = acc_in[{mc - 1}:0];",
         "  wire ch = |ce;",
         f"  wire [{pc - 1}:0] csig0 = {{ch, cf}};",
         "  wire cnan = (&ce) & (|cf);",
         "  wire cinf = (&ce) & ~(|cf);",
         "  wire czero = ~(|csig0);",
         f"  wire signed [{we - 1}:0] ct0 = $signed({_ext('ce', ec, we, False)}) + (ch ? {S(-bias)} : {S(1 - bias)});"]
    if denorm:
        L += [f"  wire [{lzcw - 1}:0] clz; wire cv;",
              f"  {name}_clz uclz(.x(csig0), .cnt(clz), .v(cv));",
              f"  wire [{pc - 1}:0] csig;",
              f"  {name}_cnorm ucn(.x(csig0), .amt(ch ? {lzcw}'d0 : clz), .y(csig));",
              f"  wire signed [{we - 1}:0] ct = ct0 - (ch ? {S(0)} : $signed({_ext('clz', lzcw, we, False)}));"]
    else:
        L += [f"  wire [{pc - 1}:0] csig = csig0;", f"  wire signed [{we - 1}:0] ct = ct0;"]
    xpad = f"{{xsig, {wm - npx}'d0}}" if wm > npx else "xsig"
    cpad = f"{{csig, {wm - pc}'d0}}" if wm > pc else "csig"
    L += [f"  wire [{wm - 1}:0] X = {xpad};",
          f"  wire [{wm - 1}:0] C = {cpad};",
          "  wire xbig = ~xzero & (czero | (xt > ct) | ((xt == ct) & (X >= C)));",
          f"  wire [{wm - 1}:0] bs = xbig ? X : C;",
          f"  wire [{wm - 1}:0] ss = xbig ? C : X;",
          f"  wire signed [{we - 1}:0] bt = xbig ? xt : ct;",
          f"  wire signed [{we - 1}:0] st = xbig ? ct : xt;",
          "  wire bsg = xbig ? xs : cs;",
          "  wire ssg = xbig ? cs : xs;",
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
          f"  wire signed [{we - 1}:0] tt = bt + {S(1)};",
          f"  wire signed [{we - 1}:0] room = tt - {S(emin)};",
          f"  wire signed [{we - 1}:0] lzs = $signed({_ext('lz', lzw, we, False)});",
          f"  wire under = room[{we - 1}];",
          "  wire lzfit = lzs <= room;",
          f"  wire [{lzw - 1}:0] shl = under ? {lzw}'d0 : (lzfit ? lz : room[{lzw - 1}:0]);",
          f"  wire [{wa}:0] nl;",
          f"  {name}_norm unl(.x(sum), .amt(shl), .y(nl));",
          f"  wire signed [{we - 1}:0] tr = under ? {S(emin)} : (tt - $signed({_ext('shl', lzw, we, False)}));"]
    if denorm:
        L += [f"  wire signed [{we - 1}:0] nroom = -room;",
              f"  wire [{kd - 1}:0] ramt = ~under ? {kd}'d0 : ((nroom > {S(n)}) ? {kd}'d{n} : nroom[{kd - 1}:0]);",
              f"  wire [{wa}:0] nrm; wire stk2;",
              f"  {name}_dnorm udn(.x(nl), .amt(ramt), .y(nrm), .sticky(stk2));"]
    else:
        L += [f"  wire [{wa}:0] nrm = nl;", "  wire stk2 = 1'b0;"]
    L += [f"  wire [{pc - 1}:0] keep = nrm[{wa}:{wa - pc + 1}];",
          f"  wire rb = nrm[{wa - pc}];",
          f"  wire sb = (|nrm[{wa - pc - 1}:0]) | stk2;",
          f"  wire signed [{we - 1}:0] eb = tr + {S(bias)};",
          f"  wire ovf = nrm[{wa}] & (eb >= {S(allone)});",
          f"  wire [{ec - 1}:0] ef = nrm[{wa}] ? eb[{ec - 1}:0] : {ec}'d0;",
          f"  wire [{ec + mc - 1}:0] packed = {{ef, keep[{pc - 2}:0]}};",
          "  wire inc = rb & (keep[0] | sb);",
          f"  wire [{ec + mc - 1}:0] rnd = packed + {{{ec + mc - 1}'d0, inc}};",
          "  wire rs = nz ? bsg : (bsg & ssg);",
          "  wire rnan = cnan | xnan | (cinf & xinf & (cs != xs));",
          "  wire rinf = ~rnan & (cinf | xinf);",
          "  wire isg = cinf ? cs : xs;",
          f"  assign acc_out = rnan ? {{1'b0, {ec}'d{allone}, 1'b1, {mc - 1}'d0}} :",
          f"                   rinf ? {{isg, {ec}'d{allone}, {mc}'d0}} :",
          f"                   ovf ? {{rs, {ec}'d{allone}, {mc}'d0}} : {{rs, rnd}};",
          "endmodule", ""]
    return "\n".join(subs + L)


# ------------------------------------------------------------------------------------------
# unit cores
# ------------------------------------------------------------------------------------------


def _fixed_core(name: str, unit: MacUnit) -> tuple[str, int]:
    w: FixedView = view(unit.weight)  # type: ignore[assignment]
    a: FixedView = view(unit.activation)  # type: ignore[assignment]
    acc: IntAcc = unit.accumulator  # type: ignore[assignment]
    if acc.overflow != "wrap":
        raise FmtlabError("the RTL generator implements wrapping integer accumulators only")
    W = acc.width
    from fmtlab.hw.blocks import fixed_product_bits

    P = fixed_product_bits(w, a)
    subs: list[str] = []
    L = [f"module {name}_core(input [{w.bits - 1}:0] w, input [{a.bits - 1}:0] a, "
         f"input [{W - 1}:0] acc_in, output [{W - 1}:0] acc_out);"]

    def sm_decode(p: str, v: FixedView, src: str) -> None:
        mb = v.bits - 1
        L.append(f"  wire {p}_s = {src}[{mb}];")
        L.append(f"  wire [{mb - 1}:0] {p}_m = {src}[{mb - 1}:0];")
        L.append(f"  wire {p}_zero = ~(|{p}_m);")

    logs = [(p, v, s) for p, v, s in (("dw", w, "w"), ("da", a, "a")) if v.kind == "log"]
    if len(logs) == 2:
        sm_decode("dw", w, "w")
        sm_decode("da", a, "a")
        mb = w.bits - 1
        top = w.max_shift + a.max_shift  # product = 1 << (mw + ma - 2)
        L += [f"  wire [{mb}:0] e = {_ext('dw_m', mb, mb + 1, False)} + {_ext('da_m', mb, mb + 1, False)};",
              f"  wire [{top + 2}:0] oh = {{{top + 2}'d0, 1'b1}} << e;",
              f"  wire [{P - 1}:0] pm = (dw_zero | da_zero) ? {P}'d0 : {_ext(f'oh[{top + 2}:2]', top + 1, P, False)};",
              "  wire neg = dw_s ^ da_s;"]
    elif len(logs) == 1:
        lp, lv, ls = logs[0]
        op, ov, os_ = ("da", a, "a") if lp == "dw" else ("dw", w, "w")
        sm_decode(lp, lv, ls)
        if ov.kind == "dint":
            raise FmtlabError("log x dINT units are modelled but have no RTL generator")
        ob = ov.bits
        sig = ov.kind == "int"
        wide = ob + lv.max_shift + 1
        xin = f"$signed({os_})" if sig else f"$signed({{1'b0, {os_}}})"
        xw = ob if sig else ob + 1
        L += [f"  wire signed [{xw - 1}:0] xo = {xin};",
              f"  wire signed [{wide}:0] sh = {_ext('xo', xw, wide + 1, True)} <<< {lp}_m;",
              f"  wire [{P - 1}:0] pm = {lp}_zero ? {P}'d0 : sh[{P}:1];",
              f"  wire neg = {lp}_s;"]
    else:
        def operand(p: str, v: FixedView, src: str) -> tuple[str, int, bool]:
            """(bits expression, width, two's complement?) of a multiplier input."""
            if v.kind in ("int", "uint"):
                return src, v.bits, v.kind == "int"
            sm_decode(p, v, src)
            nd = len(v.denormal_ivals)
            sb = v.sig_bits
            mb = v.bits - 1
            L.append(f"  wire [{mb - 1}:0] {p}_int = {p}_m - {mb}'d{nd};")
            L.append(f"  wire {p}_den = ({p}_m <= {mb}'d{nd}) & ~{p}_zero;")
            return f"{p}_int[{sb - 1}:0]", sb, False

        if w.kind == "dint" and a.kind == "dint":
            raise FmtlabError("dINT x dINT units are modelled but have no RTL generator")
        bw_, nw, sw_ = operand("dw", w, "w")
        ba_, na, sa_ = operand("da", a, "a")
        signed = sw_ or sa_
        if signed and not sw_:
            bw_, nw = f"{{1'b0, {bw_}}}", nw + 1
        if signed and not sa_:
            ba_, na = f"{{1'b0, {ba_}}}", na + 1
        xw = f"$signed({bw_})" if signed else bw_
        xa = f"$signed({ba_})" if signed else ba_
        M = nw + na
        subs.append(mult_module(f"{name}_mul", nw, na, signed))
        L.append(f"  wire [{M - 1}:0] pr;")
        L.append(f"  {name}_mul umul(.a({bw_}), .b({ba_}), .y(pr));")
        expr = "pr"
        width = M
        for p, v, other, ow in (("dw", w, xa, na), ("da", a, xw, nw)):
            if v.kind != "dint":
                continue
            mb = v.bits - 1
            L.append(f"  wire signed [{P - 1}:0] {p}_ip = {_ext(expr, width, P, True) if width <= P else f'{expr}[{P - 1}:0]'} <<< {v.frac};")
            terms = []
            for i, d in enumerate(v.denormal_ivals):
                L.append(f"  wire signed [{P - 1}:0] {p}_d{i} = {other} * {P}'sd{d};")
                terms.append(f"({p}_m == {mb}'d{i + 1}) ? {p}_d{i}")
            cases = " : ".join(terms)
            L.append(f"  wire signed [{P - 1}:0] {p}_dp = {cases} : {P}'sd0;")
            L.append(f"  wire signed [{P - 1}:0] {p}_pp = {p}_zero ? {P}'sd0 : ({p}_den ? {p}_dp : {p}_ip);")
            expr, width = f"{p}_pp", P
        if width > P:
            L.append(f"  wire [{P - 1}:0] pm = {expr}[{P - 1}:0];")
        else:
            L.append(f"  wire [{P - 1}:0] pm = {_ext(expr, width, P, True)};")
        negs = [f"{p}_s" for p, v in (("dw", w), ("da", a)) if v.kind == "dint"]
        L.append(f"  wire neg = {' ^ '.join(negs) if negs else '1b0'};".replace("1b0", "1'b0"))
    sm = w.sign_magnitude or a.sign_magnitude
    signed_p = w.kind != "uint" or a.kind != "uint"
    pe = _ext("pm", P, W, signed_p)
    if sm:
        L += [f"  wire [{W}:0] t = {{acc_in, 1'b1}} + {{({pe}) ^ {{{W}{{neg}}}}, neg}};",
              f"  assign acc_out = t[{W}:1];"]
    else:
        L.append(f"  assign acc_out = acc_in + {pe};")
    L += ["endmodule", ""]
    return "\n".join(subs + L), W


def _kulisch_core(name: str, unit: MacUnit) -> tuple[str, int]:
    a: FloatView = view(unit.weight)  # type: ignore[assignment]
    b: FloatView = view(unit.activation)  # type: ignore[assignment]
    acc: KulischAcc = unit.accumulator  # type: ignore[assignment]
    mag, shift, W = kulisch_geometry(a, b, acc.guard)
    nf = kulisch_flag_bits(a, b)
    np_ = a.sig_bits + b.sig_bits
    sw = (shift + 2).bit_length()
    T = W + nf
    L = [mult_module(f"{name}_mul", a.sig_bits, b.sig_bits, False),
         f"module {name}_core(input [{a.bits - 1}:0] w, input [{b.bits - 1}:0] a, "
         f"input [{T - 1}:0] acc_in, output [{T - 1}:0] acc_out);"]
    L += float_product(a, b, f"{name}_mul")
    # shift = max(Ea,1) + max(Eb,1) - 2: shift by the sum, drop the two LSBs (always zero)
    L += [f"  wire [{sw - 1}:0] sh = {_ext('da_ee', a.exp_bits, sw, False)} + {_ext('db_ee', b.exp_bits, sw, False)};",
          f"  wire [{mag + 1}:0] pm2 = {_ext('ps', np_, mag + 2, False)} << sh;",
          f"  wire [{mag - 1}:0] pmag = (pnan | pinf) ? {mag}'d0 : pm2[{mag + 1}:2];",
          f"  wire [{W - 1}:0] reg0 = acc_in[{W - 1}:0];",
          f"  wire [{W}:0] t = {{reg0, 1'b1}} + {{{_ext('pmag', mag, W, False)} ^ {{{W}{{psn}}}}, psn}};"]
    if nf == 0:
        L.append(f"  assign acc_out = t[{W}:1];")
    elif nf == 1:
        L.append(f"  assign acc_out = {{acc_in[{W}] | pnan, t[{W}:1]}};")
    else:
        L += [f"  wire fn = acc_in[{W + 2}] | pnan;",
              f"  wire fp = acc_in[{W + 1}] | (pinf & ~psn);",
              f"  wire fm = acc_in[{W}] | (pinf & psn);",
              f"  assign acc_out = {{fn, fp, fm, t[{W}:1]}};"]
    L += ["endmodule", ""]
    return "\n".join(L), T


def _float_core(name: str, unit: MacUnit) -> tuple[str, int]:
    a: FloatView = view(unit.weight)  # type: ignore[assignment]
    b: FloatView = view(unit.activation)  # type: ignore[assignment]
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    if acc.rounding != "nearest_even":
        raise FmtlabError("the RTL generator implements nearest-even FP accumulation only")
    g = fp_acc_geometry(a, b, acc)
    np_, we = g["np"], g["we"]
    accb = acc.bits
    subs = [mult_module(f"{name}_mul", a.sig_bits, b.sig_bits, False)]
    L = [f"module {name}_core(input [{a.bits - 1}:0] w, input [{b.bits - 1}:0] a, "
         f"input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);"]
    L += float_product(a, b, f"{name}_mul")
    # exponent of product bit np-1: (max(Ea,1) - ba) + (max(Eb,1) - bb) + 1
    off = 1 - a.bias - b.bias
    L.append(f"  wire signed [{we - 1}:0] pt0 = $signed({_ext('da_ee', a.exp_bits, we, False)}) + "
             f"$signed({_ext('db_ee', b.exp_bits, we, False)}) + {_const(off, we)};")
    if a.subnormals or b.subnormals:
        lz_txt, lzw = lzc_module(f"{name}_plz", np_)
        subs += [lz_txt, shl_module(f"{name}_pnorm", np_, lzw)]
        L += [f"  wire [{lzw - 1}:0] plz; wire pv;",
              f"  {name}_plz uplz(.x(ps), .cnt(plz), .v(pv));",
              f"  wire [{np_ - 1}:0] pn;",
              f"  {name}_pnorm upn(.x(ps), .amt(plz), .y(pn));",
              f"  wire signed [{we - 1}:0] pt = pt0 - $signed({_ext('plz', lzw, we, False)});"]
    else:
        L += [f"  wire [{np_ - 1}:0] pn = ps[{np_ - 1}] ? ps : {{ps[{np_ - 2}:0], 1'b0}};",
              f"  wire signed [{we - 1}:0] pt = ps[{np_ - 1}] ? pt0 : pt0 - {_const(1, we)};"]
    subs.append(fp_adder_module(f"{name}_fpadd", np_, we, acc, g["denormalise"]))
    L += [f"  {name}_fpadd uadd(.xs(psn), .xt(pt), .xsig(pn), .xzero(pzero), .xinf(pinf), "
          ".xnan(pnan), .acc_in(acc_in), .acc_out(acc_out));", "endmodule", ""]
    return "\n".join(subs + L), accb


def _mx_core(name: str, unit: MacUnit) -> tuple[str, int]:
    ew: FloatView = view(unit.weight.element)  # type: ignore[union-attr]
    ea: FloatView = view(unit.activation.element)  # type: ignore[union-attr]
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    if acc.rounding != "nearest_even":
        raise FmtlabError("the RTL generator implements nearest-even FP accumulation only")
    k = unit.weight.block
    geo = mx_geometry(ew, ea, k)
    mag, shift, sb = geo["mag"], geo["shift"], geo["sum_bits"]
    np_ = ew.sig_bits + ea.sig_bits
    sw = (shift + 2).bit_length()
    eb, ab = ew.bits, ea.bits
    accb = acc.bits
    base = ew.lsb_min + ea.lsb_min
    # block value = sum * 2^(base + sw + sx - 254); exponent of sum bit sb-2 (top magnitude bit)
    t_hi = base + 254 + sb
    t_lo = base - 254 - sb
    we1 = fp_adder_we(t_lo, t_hi, acc, sb)
    we2 = fp_adder_we(1 - acc.bias - acc.man_bits, (1 << acc.exp_bits) - 1 - acc.bias, acc, acc.man_bits + 1)
    subs = [mult_module(f"{name}_mul", ew.sig_bits, ea.sig_bits, False)]
    tw = mag + 1  # term: (mag+1)-bit two's complement with its sign bit inverted (see below)
    elem = [f"module {name}_elem(input [{eb - 1}:0] w, input [{ab - 1}:0] a, output [{tw - 1}:0] term, "
            "output cin, output enan, output epinf, output eninf);"]
    elem += float_product(ew, ea, f"{name}_mul")
    elem += [f"  wire [{sw - 1}:0] sh = {_ext('da_ee', ew.exp_bits, sw, False)} + {_ext('db_ee', ea.exp_bits, sw, False)};",
             f"  wire [{mag + 1}:0] pm2 = {_ext('ps', np_, mag + 2, False)} << sh;",
             f"  wire [{mag - 1}:0] pmag = (pnan | pinf) ? {mag}'d0 : pm2[{mag + 1}:2];",
             f"  assign term = {{~psn, pmag ^ {{{mag}{{psn}}}}}};",
             "  assign cin = psn;",
             "  assign enan = pnan;",
             "  assign epinf = pinf & ~psn;",
             "  assign eninf = pinf & psn;",
             "endmodule", ""]
    subs.append("\n".join(elem))
    lz_txt, lzw = lzc_module(f"{name}_blz", sb)
    subs += [lz_txt, shl_module(f"{name}_bnorm", sb, lzw)]
    subs.append(fp_adder_module(f"{name}_conv", sb, we1, acc, True))
    subs.append(fp_adder_module(f"{name}_fpadd", acc.man_bits + 1, we2, acc, False))
    L = [f"module {name}_core(input [{k * eb - 1}:0] w, input [{k * ab - 1}:0] a, input [7:0] sw, "
         f"input [7:0] sx, input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);",
         f"  wire [{k * tw - 1}:0] terms; wire [{k - 1}:0] cins, nans, pinfs, ninfs;",
         "  genvar j;",
         f"  generate for (j = 0; j < {k}; j = j + 1) begin : el",
         f"    {name}_elem ue(.w(w[j*{eb} +: {eb}]), .a(a[j*{ab} +: {ab}]), .term(terms[j*{tw} +: {tw}]), "
         ".cin(cins[j]), .enan(nans[j]), .epinf(pinfs[j]), .eninf(ninfs[j]));",
         "  end endgenerate"]
    # the exact block sum (yosys turns the chain of additions into one multi-operand adder).
    # Sign extension trick: a (mag+1)-bit two's-complement term t sign-extended equals
    # {~t[mag], t[mag-1:0]} - 2^mag, so the k terms add as short unsigned words plus one
    # constant -k * 2^mag (mod 2^sb) instead of k sign-extended sb-bit words.
    L += [f"  reg [{sb - 1}:0] s;",
          "  integer q;",
          "  always @* begin",
          f"    s = {sb}'d{((1 << sb) - k * (1 << mag)) % (1 << sb)};",
          f"    for (q = 0; q < {k}; q = q + 1) s = s + {{{sb - tw}'d0, terms[q*{tw} +: {tw}]}} + {{{sb - 1}'d0, cins[q]}};",
          "  end",
          f"  wire sneg = s[{sb - 1}];",
          f"  wire [{sb - 1}:0] sabs = (s ^ {{{sb}{{sneg}}}}) + {{{sb - 1}'d0, sneg}};",
          f"  wire [{lzw - 1}:0] blz; wire bv;",
          f"  {name}_blz ublz(.x(sabs), .cnt(blz), .v(bv));",
          f"  wire [{sb - 1}:0] bn;",
          f"  {name}_bnorm ubn(.x(sabs), .amt(blz), .y(bn));",
          f"  wire signed [{we1 - 1}:0] bt = $signed({_ext('sw', 8, we1, False)}) + $signed({_ext('sx', 8, we1, False)})"
          f" - $signed({_ext('blz', lzw, we1, False)}) + {_const(base - 254 + sb - 1, we1)};",
          "  wire snan = (&sw) | (&sx) | (|nans) | ((|pinfs) & (|ninfs));",
          "  wire sinf = ~snan & ((|pinfs) | (|ninfs));",
          "  wire sisg = |ninfs;",
          f"  wire [{accb - 1}:0] bval;",
          f"  {name}_conv uconv(.xs(sinf ? sisg : sneg), .xt(bt), .xsig(bn), .xzero(~bv), .xinf(sinf), "
          f".xnan(snan), .acc_in({accb}'d0), .acc_out(bval));"]
    # decode the rounded block value as the adder's X operand (subnormal X sits at emin)
    ec, mc = acc.exp_bits, acc.man_bits
    L += [f"  wire [{ec - 1}:0] ve = bval[{ec + mc - 1}:{mc}];",
          "  wire vh = |ve;",
          "  wire vnan = (&ve) & (|bval[" + f"{mc - 1}:0]);",
          "  wire vinf = (&ve) & ~(|bval[" + f"{mc - 1}:0]);",
          f"  wire [{mc}:0] vsig = {{vh, bval[{mc - 1}:0]}};",
          f"  wire signed [{we2 - 1}:0] vt = $signed({_ext('ve', ec, we2, False)}) + (vh ? {_const(-acc.bias, we2)} : {_const(1 - acc.bias, we2)});",
          f"  {name}_fpadd uadd(.xs(bval[{ec + mc}]), .xt(vt), .xsig(vsig), .xzero(~(|vsig)), .xinf(vinf), "
          ".xnan(vnan), .acc_in(acc_in), .acc_out(acc_out));",
          "endmodule", ""]
    return "\n".join(subs + L), accb


def generate(unit: MacUnit) -> RTL:
    """Verilog for ``unit`` (core + registered top)."""
    name = module_name(unit)
    if unit.is_mx:
        core, accb = _mx_core(name, unit)
        wb, ab, k = unit.weight.element.bits, unit.activation.element.bits, unit.weight.block
        top = [f"module {name}(input clk, input clr, input [{k * wb - 1}:0] w, input [{k * ab - 1}:0] a, "
               f"input [7:0] sw, input [7:0] sx, output reg [{accb - 1}:0] acc);",
               f"  wire [{accb - 1}:0] nxt;",
               f"  {name}_core core(.w(w), .a(a), .sw(sw), .sx(sx), .acc_in(acc), .acc_out(nxt));"]
    else:
        kind = unit.kind
        if kind == "fixed":
            core, accb = _fixed_core(name, unit)
        elif isinstance(unit.accumulator, KulischAcc):
            core, accb = _kulisch_core(name, unit)
        else:
            core, accb = _float_core(name, unit)
        wb, ab, k = unit.weight.bits, unit.activation.bits, 1
        top = [f"module {name}(input clk, input clr, input [{wb - 1}:0] w, input [{ab - 1}:0] a, "
               f"output reg [{accb - 1}:0] acc);",
               f"  wire [{accb - 1}:0] nxt;",
               f"  {name}_core core(.w(w), .a(a), .acc_in(acc), .acc_out(nxt));"]
    top += [f"  always @(posedge clk) acc <= clr ? {accb}'d0 : nxt;", "endmodule", ""]
    header = (f"// {unit.name}: generated by fmtlab.hw.rtl (Verilog-2005)\n"
              f"// core: {name}_core (combinational), top: {name} (registered accumulator)\n")
    return RTL(unit, name, f"{name}_core", header + core + "\n" + "\n".join(top), wb, ab, accb, k)
