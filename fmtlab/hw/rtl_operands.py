"""Verilog operand decoders, one per format family, registered as RTL handlers.

The RTL cores (:mod:`fmtlab.hw.rtl_cores`) ask :func:`operand_decoder` for each operand; it
returns the family's handler registered under
:data:`fmtlab.formats.capabilities.Subsystem.RTL` (this module registers ``minifloat``,
``int``, ``dint`` and ``log``), or the generic decode-LUT decoder when the operand is seen
through a decode LUT (:func:`fmtlab.hw.operands.decode_lut_view`). A family with a hardware
view but no RTL handler raises NotSupportedError.

A decoder is ``decode(p, v, src) -> list[str]``: Verilog wire declarations named ``{p}_*`` for
the operand view ``v`` read from the input port ``src``. Contracts:

- float (:func:`float_decode`): ``{p}_s``, ``{p}_sig``, ``{p}_ee``, ``{p}_nan``, ``{p}_inf``,
  ``{p}_zero``; NaN / Inf recognised from the format's code sets (see
  :class:`fmtlab.hw.operands.SpecialDecode`), never from a rule's name;
- fixed (:func:`fixed_decode`): INT/UINT: none (the code is the multiplier input);
  dINT/log: sign ``{p}_s``, magnitude ``{p}_m``, ``{p}_zero``; dINT also ``{p}_int`` (the
  integer significand ``m - nd``) and ``{p}_den`` (a denormal level);
- LUT (:func:`lut_decode`): ``{p}_lut``, the signed ``sig_bits``-wide fixed-point word.
"""

from __future__ import annotations

from typing import Callable

from fmtlab.formats.capabilities import Subsystem, get_handler, register_handler
from fmtlab.hw.operands import FixedKind, FixedView, FloatView, SpecialDecode

__all__ = ["float_decode", "float_product", "fixed_decode", "lut_decode", "operand_decoder"]

Decoder = Callable[[str, "FixedView | FloatView", str], list[str]]


def _code_compare(src: str, bits: int, codes) -> str:
    """OR of equality compares of ``src`` with each code (1'b0 for none)."""
    terms = [f"({src} == {bits}'d{c})" for c in sorted(codes)]
    return " | ".join(terms) if terms else "1'b0"


def float_decode(p: str, v: FloatView, src: str) -> list[str]:
    """Wires {p}_s, {p}_sig [P-1:0], {p}_ee [E-1:0] (= max(E, 1): the LSB ORed with ~hidden),
    {p}_zero/_inf/_nan (NaN and Inf from the format's code sets)."""
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
    how = v.special_decode
    if how is SpecialDecode.IEEE:
        nan, inf = f"(&{p}_E) & {fnz}", f"(&{p}_E) & ~{fnz}"
    elif how is SpecialDecode.ALL_ONES:
        nan, inf = f"(&{p}_E) & {fall}", "1'b0"
    elif how is SpecialDecode.NEG_ZERO:
        nan, inf = f"{src} == {{1'b1, {e + m}'d0}}", "1'b0"
    elif how is SpecialDecode.NONE:
        nan, inf = "1'b0", "1'b0"
    else:  # SpecialDecode.CODES
        nan = _code_compare(src, v.bits, v.nan_codes)
        inf = _code_compare(src, v.bits, v.inf_codes)
    L.append(f"  wire {p}_nan = {nan};")
    L.append(f"  wire {p}_inf = {inf};")
    L.append(f"  wire {p}_zero = ~(|{p}_sig);")
    return L


def fixed_decode(p: str, v: FixedView, src: str) -> list[str]:
    """Sign-magnitude decode of dINT / log operands (INT / UINT need none; see module doc)."""
    if v.kind in (FixedKind.INT, FixedKind.UINT):
        return []
    mb = v.bits - 1
    L = [f"  wire {p}_s = {src}[{mb}];",
         f"  wire [{mb - 1}:0] {p}_m = {src}[{mb - 1}:0];",
         f"  wire {p}_zero = ~(|{p}_m);"]
    if v.kind is FixedKind.DINT:
        nd = len(v.denormal_ivals)
        L.append(f"  wire [{mb - 1}:0] {p}_int = {p}_m - {mb}'d{nd};")
        L.append(f"  wire {p}_den = ({p}_m <= {mb}'d{nd}) & ~{p}_zero;")
    return L


def lut_decode(p: str, v: FixedView, src: str) -> list[str]:
    """The decode LUT as a case ROM: ``{p}_lut`` = ival[code] (signed, ``sig_bits`` wide)."""
    w = v.sig_bits
    L = [f"  reg signed [{w - 1}:0] {p}_lut;", f"  always @* case ({src})"]
    for c, iv in enumerate(v.ivals):
        L.append(f"    {v.bits}'d{c}: {p}_lut = {w}'d{iv % (1 << w)};")
    L += [f"    default: {p}_lut = {w}'d0;", "  endcase"]
    return L


def operand_decoder(v: "FixedView | FloatView") -> Decoder:
    """The Verilog decoder for an operand view (module doc); NotSupportedError if none."""
    if isinstance(v, FixedView) and v.kind is FixedKind.LUT:
        return lut_decode
    return get_handler(Subsystem.RTL, v.fmt,
                       f"register an RTL operand decoder for family {v.fmt.family!r} with "
                       "fmtlab.formats.capabilities.register_handler(Subsystem.RTL, family, "
                       "decode) (contract: fmtlab.hw.rtl_operands)")


def float_product(a: FloatView, b: FloatView, mult: str) -> list[str]:
    """Decode w and a; product significand ``ps`` [NP-1:0] (via the multiplier module ``mult``,
    see :func:`fmtlab.hw.rtl_parts.mult_module`), sign ``psn``, flags."""
    np_ = a.sig_bits + b.sig_bits
    L = operand_decoder(a)("da", a, "w") + operand_decoder(b)("db", b, "a")
    L += [f"  wire [{np_ - 1}:0] ps;",
          f"  {mult} umul(.a(da_sig), .b(db_sig), .y(ps));",
          "  wire psn = da_s ^ db_s;",
          "  wire pnan = da_nan | db_nan | (da_inf & db_zero) | (db_inf & da_zero);",
          "  wire pinf = (da_inf | db_inf) & ~pnan;",
          "  wire pzero = (da_zero | db_zero) & ~pnan & ~pinf;"]
    return L


register_handler(Subsystem.RTL, "minifloat", float_decode)
for _family in ("int", "dint", "log"):
    register_handler(Subsystem.RTL, _family, fixed_decode)
