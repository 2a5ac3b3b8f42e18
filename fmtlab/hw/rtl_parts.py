"""Verilog building blocks of the MAC RTL: extensions, constants, log-depth shifters and
leading-zero counters, array multipliers and the single-rounding FP adder.

Every block is a module named per unit (so each generated file is self-contained); the
structures are those :mod:`fmtlab.hw.blocks` counts. Used by :mod:`fmtlab.hw.rtl_cores`.
"""

from __future__ import annotations

from fmtlab.hw.accumulators import FloatAcc
from fmtlab.hw.components import clog2

__all__ = ["extend", "const", "lzc_module", "shr_sticky_module", "shl_module", "mult_module",
           "fp_adder_module"]


def extend(expr: str, w_from: int, w_to: int, signed: bool) -> str:
    """Zero/sign-extend a ``w_from``-bit expression to ``w_to`` bits."""
    if w_to == w_from:
        return expr
    if w_to < w_from:
        raise AssertionError(f"cannot extend {w_from} to {w_to} bits")
    if signed:
        return f"{{{{{w_to - w_from}{{{expr}[{w_from - 1}]}}}}, {expr}}}"
    return f"{{{w_to - w_from}'d0, {expr}}}"


def const(v: int, w: int) -> str:
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
# FP adder: exact operand X + accumulator -> accumulator rounded to nearest even
# ------------------------------------------------------------------------------------------


def fp_adder_module(name: str, npx: int, we: int, acc: FloatAcc, denorm: bool, ftz: bool = False) -> str:
    """Module ``name``(xs, xt, xsig, xzero, xinf, xnan, acc_in) -> acc_out.

    X = (-1)^xs * xsig * 2^(xt - npx + 1): xsig normalised (MSB set) unless X is zero, or X a
    subnormal of the accumulator format with xt = emin. Single-path algorithm: swap by
    magnitude, align with sticky, add/subtract, LZC + normalising shift limited at emin
    (``denorm``: right shift with sticky when the larger exponent lies below emin, and the
    accumulator is pre-normalised so that magnitudes compare by (exponent, significand)),
    round to nearest even on the packed exponent|fraction, Inf/NaN/overflow select.

    ``ftz``: the flush-to-zero, no-special-value adder (:mod:`fmtlab.hw.ftz`): an accumulator code
    with exponent field 0 is a zero and every other code a normal number (E = all ones included),
    xsig must be 0 when X is zero, xinf / xnan are ignored; the normalising shift is the
    leading-zero count (no emin limit), a rounded result below the smallest normal becomes a
    signed zero and one above the largest finite value saturates to it. The compare, swap,
    alignment, add, leading-zero count, normalising shift and rounding are the same lines.
    """
    if ftz and denorm:
        raise AssertionError("an FTZ adder has no denormalise path")
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
    S = lambda v: const(v, we)  # noqa: E731
    L = [f"module {name}(input xs, input signed [{we - 1}:0] xt, input [{npx - 1}:0] xsig,",
         f"    input xzero, input xinf, input xnan, input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);",
         f"  wire cs = acc_in[{ec + mc}];",
         f"  wire [{ec - 1}:0] ce = acc_in[{ec + mc - 1}:{mc}];"]
    if ftz:
        L += ["  wire czero = ~(|ce);",
              f"  wire [{pc - 1}:0] csig = czero ? {pc}'d0 : {{1'b1, acc_in[{mc - 1}:0]}};",
              f"  wire signed [{we - 1}:0] ct = $signed({extend('ce', ec, we, False)}) - {S(bias)};"]
    else:
        L += [
         f"  wire [{mc - 1}:0] cf = acc_in[{mc - 1}:0];",
         "  wire ch = |ce;",
         f"  wire [{pc - 1}:0] csig0 = {{ch, cf}};",
         "  wire cnan = (&ce) & (|cf);",
         "  wire cinf = (&ce) & ~(|cf);",
         "  wire czero = ~(|csig0);",
         f"  wire signed [{we - 1}:0] ct0 = $signed({extend('ce', ec, we, False)}) + (ch ? {S(-bias)} : {S(1 - bias)});"]
    if denorm:
        L += [f"  wire [{lzcw - 1}:0] clz; wire cv;",
              f"  {name}_clz uclz(.x(csig0), .cnt(clz), .v(cv));",
              f"  wire [{pc - 1}:0] csig;",
              f"  {name}_cnorm ucn(.x(csig0), .amt(ch ? {lzcw}'d0 : clz), .y(csig));",
              f"  wire signed [{we - 1}:0] ct = ct0 - (ch ? {S(0)} : $signed({extend('clz', lzcw, we, False)}));"]
    elif not ftz:
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
          f"  {name}_lzc ulz(.x(sum), .cnt(lz), .v(nz));"]
    if ftz:
        L += [f"  wire [{wa}:0] nl;",
              f"  {name}_norm unl(.x(sum), .amt(lz), .y(nl));",
              f"  wire signed [{we - 1}:0] eb = bt + {S(1 + bias)} - $signed({extend('lz', lzw, we, False)});"]
    else:
        L += [
          f"  wire signed [{we - 1}:0] tt = bt + {S(1)};",
          f"  wire signed [{we - 1}:0] room = tt - {S(emin)};",
          f"  wire signed [{we - 1}:0] lzs = $signed({extend('lz', lzw, we, False)});",
          f"  wire under = room[{we - 1}];",
          "  wire lzfit = lzs <= room;",
          f"  wire [{lzw - 1}:0] shl = under ? {lzw}'d0 : (lzfit ? lz : room[{lzw - 1}:0]);",
          f"  wire [{wa}:0] nl;",
          f"  {name}_norm unl(.x(sum), .amt(shl), .y(nl));",
          f"  wire signed [{we - 1}:0] tr = under ? {S(emin)} : (tt - $signed({extend('shl', lzw, we, False)}));"]
    if denorm:
        L += [f"  wire signed [{we - 1}:0] nroom = -room;",
              f"  wire [{kd - 1}:0] ramt = ~under ? {kd}'d0 : ((nroom > {S(n)}) ? {kd}'d{n} : nroom[{kd - 1}:0]);",
              f"  wire [{wa}:0] nrm; wire stk2;",
              f"  {name}_dnorm udn(.x(nl), .amt(ramt), .y(nrm), .sticky(stk2));"]
    else:
        L += [f"  wire [{wa}:0] nrm = nl;", "  wire stk2 = 1'b0;"]
    L += [f"  wire [{pc - 1}:0] keep = nrm[{wa}:{wa - pc + 1}];",
          f"  wire rb = nrm[{wa - pc}];",
          f"  wire sb = (|nrm[{wa - pc - 1}:0]) | stk2;"]
    if ftz:
        L += ["  wire inc = rb & (keep[0] | sb);",
              f"  wire [{ec + mc}:0] rnd = {{1'b0, eb[{ec - 1}:0], keep[{pc - 2}:0]}} + {{{ec + mc}'d0, inc}};",
              f"  wire flush = eb[{we - 1}] | ~(|rnd[{ec + mc - 1}:{mc}]);",
              f"  wire ovf = ~eb[{we - 1}] & ((eb > {S(allone)}) | rnd[{ec + mc}]);",
              "  wire rs = nz ? bsg : (bsg & ssg);",
              f"  assign acc_out = ~nz ? {{rs, {ec + mc}'d0}} : ovf ? {{rs, {ec}'d{allone}, {{{mc}{{1'b1}}}}}} :",
              f"                   flush ? {{rs, {ec + mc}'d0}} : {{rs, rnd[{ec + mc - 1}:0]}};",
              "endmodule", ""]
        return "\n".join(subs + L)
    L += [f"  wire signed [{we - 1}:0] eb = tr + {S(bias)};",
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


