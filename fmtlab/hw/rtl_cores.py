"""The combinational cores of the MAC RTL, one generator per unit kind.

Each ``*_core(name, unit) -> (verilog, accumulator bits)`` writes ``<name>_core``
(``acc_out = f(acc_in, w, a)``; the MX core also takes a block of elements and the two E8M0
scales) and the sub-modules it instantiates. Operands are decoded by the family's RTL handler
(:func:`fmtlab.hw.rtl_operands.operand_decoder`). Structures and widths are those of
:mod:`fmtlab.hw.blocks` and :mod:`fmtlab.hw.mac`; the FP paths round to nearest even only.
"""

from __future__ import annotations

from fmtlab.formats.capabilities import NotSupportedError
from fmtlab.hw.accumulators import AccOverflow, AccRounding, FloatAcc, IntAcc, KulischAcc
from fmtlab.hw.blocks import fixed_product_bits
from fmtlab.hw.ftz import ftz_geometry
from fmtlab.hw.mac import (MacUnit, fp_acc_geometry, fp_adder_we, kulisch_flag_bits,
                           kulisch_geometry, mx_geometry)
from fmtlab.hw.operands import FixedKind, FixedView, FloatView, view
from fmtlab.hw.rtl_operands import float_product, operand_decoder
from fmtlab.hw.rtl_parts import (const, extend, fp_adder_module, lzc_module, mult_module,
                                 shl_module)

__all__ = ["fixed_core", "kulisch_core", "float_core", "mx_core"]


def fixed_core(name: str, unit: MacUnit) -> tuple[str, int]:
    w: FixedView = view(unit.weight)  # type: ignore[assignment]
    a: FixedView = view(unit.activation)  # type: ignore[assignment]
    acc: IntAcc = unit.accumulator  # type: ignore[assignment]
    if acc.overflow is not AccOverflow.WRAP:
        raise NotSupportedError("the RTL generator implements wrapping integer accumulators only")
    W = acc.width
    P = fixed_product_bits(w, a)
    subs: list[str] = []
    L = [f"module {name}_core(input [{w.bits - 1}:0] w, input [{a.bits - 1}:0] a, "
         f"input [{W - 1}:0] acc_in, output [{W - 1}:0] acc_out);"]

    dec_w, dec_a = operand_decoder(w), operand_decoder(a)
    logs = [(p, v, s) for p, v, s in (("dw", w, "w"), ("da", a, "a")) if v.kind is FixedKind.LOG]
    if len(logs) == 2:
        L += dec_w("dw", w, "w") + dec_a("da", a, "a")
        mb = w.bits - 1
        top = w.max_shift + a.max_shift  # product = 1 << (mw + ma - 2)
        L += [f"  wire [{mb}:0] e = {extend('dw_m', mb, mb + 1, False)} + {extend('da_m', mb, mb + 1, False)};",
              f"  wire [{top + 2}:0] oh = {{{top + 2}'d0, 1'b1}} << e;",
              f"  wire [{P - 1}:0] pm = (dw_zero | da_zero) ? {P}'d0 : {extend(f'oh[{top + 2}:2]', top + 1, P, False)};",
              "  wire neg = dw_s ^ da_s;"]
    elif len(logs) == 1:
        lp, lv, ls = logs[0]
        op, ov, os_ = ("da", a, "a") if lp == "dw" else ("dw", w, "w")
        if ov.kind not in (FixedKind.INT, FixedKind.UINT):
            raise NotSupportedError(f"log x {ov.kind.value} units ({unit.name}) are modelled but "
                                    "have no RTL generator")
        L += operand_decoder(lv)(lp, lv, ls)
        ob = ov.bits
        sig = ov.kind is FixedKind.INT
        wide = ob + lv.max_shift + 1
        xin = f"$signed({os_})" if sig else f"$signed({{1'b0, {os_}}})"
        xw = ob if sig else ob + 1
        L += [f"  wire signed [{xw - 1}:0] xo = {xin};",
              f"  wire signed [{wide}:0] sh = {extend('xo', xw, wide + 1, True)} <<< {lp}_m;",
              f"  wire [{P - 1}:0] pm = {lp}_zero ? {P}'d0 : sh[{P}:1];",
              f"  wire neg = {lp}_s;"]
    else:
        def operand(p: str, v: FixedView, src: str, dec) -> tuple[str, int, bool]:
            """(bits expression, width, two's complement?) of a multiplier input."""
            L.extend(dec(p, v, src))
            if v.kind in (FixedKind.INT, FixedKind.UINT):
                return src, v.bits, v.kind is FixedKind.INT
            if v.kind is FixedKind.LUT:
                return f"{p}_lut", v.sig_bits, True
            return f"{p}_int[{v.sig_bits - 1}:0]", v.sig_bits, False

        if w.kind is FixedKind.DINT and a.kind is FixedKind.DINT:
            raise NotSupportedError("dINT x dINT units are modelled but have no RTL generator")
        bw_, nw, sw_ = operand("dw", w, "w", dec_w)
        ba_, na, sa_ = operand("da", a, "a", dec_a)
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
            if v.kind is not FixedKind.DINT:
                continue
            mb = v.bits - 1
            L.append(f"  wire signed [{P - 1}:0] {p}_ip = {extend(expr, width, P, True) if width <= P else f'{expr}[{P - 1}:0]'} <<< {v.frac};")
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
            L.append(f"  wire [{P - 1}:0] pm = {extend(expr, width, P, True)};")
        negs = [f"{p}_s" for p, v in (("dw", w), ("da", a)) if v.kind is FixedKind.DINT]
        L.append(f"  wire neg = {' ^ '.join(negs) if negs else '1b0'};".replace("1b0", "1'b0"))
    sm = w.sign_magnitude or a.sign_magnitude
    signed_p = w.kind is not FixedKind.UINT or a.kind is not FixedKind.UINT
    pe = extend("pm", P, W, signed_p)
    if sm:
        L += [f"  wire [{W}:0] t = {{acc_in, 1'b1}} + {{({pe}) ^ {{{W}{{neg}}}}, neg}};",
              f"  assign acc_out = t[{W}:1];"]
    else:
        L.append(f"  assign acc_out = acc_in + {pe};")
    L += ["endmodule", ""]
    return "\n".join(subs + L), W


def kulisch_core(name: str, unit: MacUnit) -> tuple[str, int]:
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
    L += [f"  wire [{sw - 1}:0] sh = {extend('da_ee', a.exp_bits, sw, False)} + {extend('db_ee', b.exp_bits, sw, False)};",
          f"  wire [{mag + 1}:0] pm2 = {extend('ps', np_, mag + 2, False)} << sh;",
          f"  wire [{mag - 1}:0] pmag = (pnan | pinf) ? {mag}'d0 : pm2[{mag + 1}:2];",
          f"  wire [{W - 1}:0] reg0 = acc_in[{W - 1}:0];",
          f"  wire [{W}:0] t = {{reg0, 1'b1}} + {{{extend('pmag', mag, W, False)} ^ {{{W}{{psn}}}}, psn}};"]
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


def float_core(name: str, unit: MacUnit) -> tuple[str, int]:
    a: FloatView = view(unit.weight)  # type: ignore[assignment]
    b: FloatView = view(unit.activation)  # type: ignore[assignment]
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    if acc.rounding is not AccRounding.NEAREST_EVEN:
        raise NotSupportedError("the RTL generator implements nearest-even FP accumulation only")
    accb = acc.bits
    subs = [mult_module(f"{name}_mul", a.sig_bits, b.sig_bits, False)]
    L = [f"module {name}_core(input [{a.bits - 1}:0] w, input [{b.bits - 1}:0] a, "
         f"input [{accb - 1}:0] acc_in, output [{accb - 1}:0] acc_out);"]
    if unit.styles.ftz:
        return ftz_float_core(name, a, b, acc, subs, L)
    g = fp_acc_geometry(a, b, acc)
    np_, we = g["np"], g["we"]
    L += float_product(a, b, f"{name}_mul")
    # exponent of product bit np-1: (max(Ea,1) - ba) + (max(Eb,1) - bb) + 1
    off = 1 - a.bias - b.bias
    L.append(f"  wire signed [{we - 1}:0] pt0 = $signed({extend('da_ee', a.exp_bits, we, False)}) + "
             f"$signed({extend('db_ee', b.exp_bits, we, False)}) + {const(off, we)};")
    if a.subnormals or b.subnormals:
        lz_txt, lzw = lzc_module(f"{name}_plz", np_)
        subs += [lz_txt, shl_module(f"{name}_pnorm", np_, lzw)]
        L += [f"  wire [{lzw - 1}:0] plz; wire pv;",
              f"  {name}_plz uplz(.x(ps), .cnt(plz), .v(pv));",
              f"  wire [{np_ - 1}:0] pn;",
              f"  {name}_pnorm upn(.x(ps), .amt(plz), .y(pn));",
              f"  wire signed [{we - 1}:0] pt = pt0 - $signed({extend('plz', lzw, we, False)});"]
    else:
        L += [f"  wire [{np_ - 1}:0] pn = ps[{np_ - 1}] ? ps : {{ps[{np_ - 2}:0], 1'b0}};",
              f"  wire signed [{we - 1}:0] pt = ps[{np_ - 1}] ? pt0 : pt0 - {const(1, we)};"]
    subs.append(fp_adder_module(f"{name}_fpadd", np_, we, acc, g["denormalise"]))
    L += [f"  {name}_fpadd uadd(.xs(psn), .xt(pt), .xsig(pn), .xzero(pzero), .xinf(pinf), "
          ".xnan(pnan), .acc_in(acc_in), .acc_out(acc_out));", "endmodule", ""]
    return "\n".join(subs + L), accb


def ftz_float_core(name: str, a: FloatView, b: FloatView, acc: FloatAcc, subs: list[str],
                   L: list[str]) -> tuple[str, int]:
    """The flush-to-zero, no-special-value core (:mod:`fmtlab.hw.ftz`): operands with exponent
    field 0 are zeros, the hidden bit is a constant 1 (the multiplier's top inputs are constants),
    the product lies in [1, 4) (1-bit normalisation, its carry folded into the exponent sum), and
    the shared FP adder with ``ftz=True`` adds it into the accumulator; widths from
    :func:`fmtlab.hw.ftz.ftz_geometry`."""
    g = ftz_geometry(a, b, acc)
    np_, we = g["np"], g["we"]
    off = -a.bias - b.bias
    for p, v, src in (("da", a, "w"), ("db", b, "a")):
        e, m = v.exp_bits, v.man_bits
        L += [f"  wire {p}_s = {src}[{e + m}];",
              f"  wire [{e - 1}:0] {p}_E = {src}[{e + m - 1}:{m}];",
              f"  wire [{m}:0] {p}_sig = {{1'b1, {src}[{m - 1}:0]}};",
              f"  wire {p}_z = ~(|{p}_E);"]
    L += [f"  wire [{np_ - 1}:0] ps;",
          f"  {name}_mul umul(.a(da_sig), .b(db_sig), .y(ps));",
          "  wire psn = da_s ^ db_s;",
          "  wire pzero = da_z | db_z;",
          f"  wire [{np_ - 1}:0] pn = pzero ? {np_}'d0 : ps[{np_ - 1}] ? ps : {{ps[{np_ - 2}:0], 1'b0}};",
          f"  wire signed [{we - 1}:0] pt = $signed({extend('da_E', a.exp_bits, we, False)}) + "
          f"$signed({extend('db_E', b.exp_bits, we, False)}) + (ps[{np_ - 1}] ? {const(off + 1, we)} : {const(off, we)});"]
    subs.append(fp_adder_module(f"{name}_fpadd", np_, we, acc, False, ftz=True))
    L += [f"  {name}_fpadd uadd(.xs(psn), .xt(pt), .xsig(pn), .xzero(pzero), .xinf(1'b0), "
          ".xnan(1'b0), .acc_in(acc_in), .acc_out(acc_out));", "endmodule", ""]
    return "\n".join(subs + L), acc.bits


def mx_core(name: str, unit: MacUnit) -> tuple[str, int]:
    ew: FloatView = view(unit.weight.element)  # type: ignore[union-attr]
    ea: FloatView = view(unit.activation.element)  # type: ignore[union-attr]
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    if acc.rounding is not AccRounding.NEAREST_EVEN:
        raise NotSupportedError("the RTL generator implements nearest-even FP accumulation only")
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
    elem += [f"  wire [{sw - 1}:0] sh = {extend('da_ee', ew.exp_bits, sw, False)} + {extend('db_ee', ea.exp_bits, sw, False)};",
             f"  wire [{mag + 1}:0] pm2 = {extend('ps', np_, mag + 2, False)} << sh;",
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
          f"  wire signed [{we1 - 1}:0] bt = $signed({extend('sw', 8, we1, False)}) + $signed({extend('sx', 8, we1, False)})"
          f" - $signed({extend('blz', lzw, we1, False)}) + {const(base - 254 + sb - 1, we1)};",
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
          f"  wire signed [{we2 - 1}:0] vt = $signed({extend('ve', ec, we2, False)}) + (vh ? {const(-acc.bias, we2)} : {const(1 - acc.bias, we2)});",
          f"  {name}_fpadd uadd(.xs(bval[{ec + mc}]), .xt(vt), .xsig(vsig), .xzero(~(|vsig)), .xinf(vinf), "
          ".xnan(vnan), .acc_in(acc_in), .acc_out(acc_out));",
          "endmodule", ""]
    return "\n".join(subs + L), accb


