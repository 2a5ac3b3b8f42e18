"""Hardware components with explicit gate-level formulas.

Every component is a small frozen value whose :meth:`cells` returns how many primitive cells of
each kind it needs (``FA``, ``HA``, ``AND2``, ``MUX2``, ``DFF`` ...); its area in gate
equivalents (GE, NAND2 = 1) is the sum of the cells' GE in a :class:`~fmtlab.hw.tech.CellLibrary`.
Its ``energy_class`` selects the calibrated energy per GE (see :mod:`fmtlab.hw.energy`).

Composition rules: a MAC unit is a list of parts; its area is the sum of the parts' areas and its
energy per operation the sum of the parts' energies (each part toggles once per operation).
Wiring, clock tree and placement overheads are not modelled (the same holds for the synthesis
cross-check, which counts cells only).

Formula sources (textbook structures): ripple-carry / parallel-prefix adders, array and
radix-4 Booth multipliers, logarithmic barrel shifters and leading-zero counters as in
N. Weste and D. Harris, "CMOS VLSI Design", 4th ed., ch. 11 (datapath subsystems), and
J.-M. Muller et al., "Handbook of Floating-Point Arithmetic", 2nd ed., ch. 7 (FP adders).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from typing import ClassVar, Mapping

from fmtlab.errors import parse_choice
from fmtlab.hw.tech import CellLibrary

ENERGY_CLASSES = ("arith", "mult", "shift", "logic", "reg")


class AdderStyle(enum.Enum):
    """How an adder propagates carries (cell counts: :class:`RippleAdder`, :class:`PrefixAdder`)."""

    RIPPLE = "ripple"
    BRENT_KUNG = "brent_kung"
    KOGGE_STONE = "kogge_stone"

    @classmethod
    def parse(cls, value: "AdderStyle | str") -> "AdderStyle":
        return parse_choice(cls, value, "adder style")


class MultiplierStyle(enum.Enum):
    """How a multiplier forms partial products (:class:`ArrayMultiplier`, :class:`BoothMultiplier`)."""

    ARRAY = "array"
    BOOTH = "booth"

    @classmethod
    def parse(cls, value: "MultiplierStyle | str") -> "MultiplierStyle":
        return parse_choice(cls, value, "multiplier style")


def clog2(n: int) -> int:
    """ceil(log2(n)) for n >= 1 (0 for n = 1)."""
    return max(0, (int(n) - 1).bit_length())


def ge_of(cells: Mapping[str, float], lib: CellLibrary) -> float:
    """Gate equivalents of a cell count in ``lib``."""
    return float(sum(n * lib.ge(c) for c, n in cells.items()))


@dataclasses.dataclass(frozen=True)
class Component:
    """Base class: ``cells()`` gives primitive cell counts; ``energy_class`` its energy class."""

    energy_class: ClassVar[str] = "logic"

    def cells(self) -> Counter:  # pragma: no cover - abstract
        raise NotImplementedError

    def ge(self, lib: CellLibrary) -> float:
        return ge_of(self.cells(), lib)

    def describe(self) -> str:
        def show(v):
            return v.value if isinstance(v, enum.Enum) else v

        fields = ", ".join(f"{f.name}={show(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True)
class Gates(Component):
    """A bag of random logic: explicit cell counts (decode, control, special-value logic)."""

    counts: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, **counts: float) -> "Gates":
        return cls(tuple(sorted((k, float(v)) for k, v in counts.items() if v)))

    def cells(self) -> Counter:
        return Counter(dict(self.counts))


@dataclasses.dataclass(frozen=True)
class RippleAdder(Component):
    """n-bit ripple-carry adder: n FA (n-1 FA + 1 HA without carry-in). Class: arith."""

    n: int
    carry_in: bool = False
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        n = max(int(self.n), 0)
        if n == 0:
            return Counter()
        return Counter(FA=n) if self.carry_in else Counter(FA=n - 1, HA=1)


@dataclasses.dataclass(frozen=True)
class PrefixAdder(Component):
    """n-bit parallel-prefix adder. Per bit: generate AND2 + propagate XOR2, sum XOR2; each prefix
    node one AOI21 + one AND2 (group generate and propagate). Node counts:
    Brent-Kung 2n - 2 - log2(n), Kogge-Stone n log2(n) - n + 1. Class: arith."""

    n: int
    kind: AdderStyle = AdderStyle.BRENT_KUNG
    energy_class: ClassVar[str] = "arith"

    def __post_init__(self) -> None:
        kind = AdderStyle.parse(self.kind)
        if kind is AdderStyle.RIPPLE:
            raise ValueError("a PrefixAdder is brent_kung or kogge_stone (ripple: RippleAdder)")
        object.__setattr__(self, "kind", kind)

    def cells(self) -> Counter:
        n = int(self.n)
        if n <= 1:
            return Counter(HA=n)
        lg = clog2(n)
        nodes = 2 * n - 2 - lg if self.kind is AdderStyle.BRENT_KUNG else n * lg - n + 1
        return Counter(AND2=n + nodes, XOR2=2 * n, AOI21=nodes)


def adder(n: int, style: "AdderStyle | str" = AdderStyle.RIPPLE, carry_in: bool = False) -> Component:
    """An n-bit adder of the given style: ``ripple``, ``brent_kung`` or ``kogge_stone``."""
    style = AdderStyle.parse(style)
    if style is AdderStyle.RIPPLE:
        return RippleAdder(n, carry_in)
    return PrefixAdder(n, style)


@dataclasses.dataclass(frozen=True)
class Incrementer(Component):
    """n-bit incrementer (+0/+1, e.g. rounding): n HA. Class: arith."""

    n: int
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        return Counter(HA=max(int(self.n), 0))


@dataclasses.dataclass(frozen=True)
class Comparator(Component):
    """n-bit magnitude comparator (a > b): a ripple of XNOR2 + AOI21 per bit. Class: arith."""

    n: int
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        n = max(int(self.n), 0)
        return Counter(XNOR2=n, AOI21=n)


@dataclasses.dataclass(frozen=True)
class XorRow(Component):
    """n XOR2: conditional inversion (the +1 of a negation enters an adder's carry-in)."""

    n: int
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        return Counter(XOR2=max(int(self.n), 0))


@dataclasses.dataclass(frozen=True)
class CarrySaveRows(Component):
    """Reduce k operands of w bits to two with (k - 2) rows of w FA (3:2 compressors)."""

    k: int
    w: int
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        return Counter(FA=max(int(self.k) - 2, 0) * int(self.w))


@dataclasses.dataclass(frozen=True)
class CompressorTree(Component):
    """Carry-save reduction of ``bits_in`` input bits (k operands, carry-ins, constants) to two
    rows of ``out`` bits: every FA removes one bit, so FA = bits_in - 2 * out (the same rule as
    :class:`ArrayMultiplier`'s reduction). Class: arith."""

    bits_in: int
    out: int
    energy_class: ClassVar[str] = "arith"

    def cells(self) -> Counter:
        return Counter(FA=max(int(self.bits_in) - 2 * int(self.out), 0))


@dataclasses.dataclass(frozen=True)
class ArrayMultiplier(Component):
    """n x m array (or carry-save tree) multiplier with its final carry-propagate adder.

    Partial products: n*m AND2. Reduction: every FA removes one bit of the n*m partial-product
    bits and the product keeps n+m, so FA = n*m - n - m; HA = min(n, m) (one per row).
    (n x n: n^2 AND2, n(n-2) FA, n HA, the textbook count.) Signed (Baugh-Wooley) operands
    swap some AND2 for NAND2 and add one HA for the correction constant. Class: mult.
    """

    n: int
    m: int
    signed: bool = False
    energy_class: ClassVar[str] = "mult"

    def cells(self) -> Counter:
        n, m = int(self.n), int(self.m)
        if n < 1 or m < 1:
            return Counter()
        if min(n, m) == 1:
            return Counter(AND2=n * m)
        c = Counter(AND2=n * m, FA=max(n * m - n - m, 0), HA=min(n, m))
        if self.signed:
            c["HA"] += 1
        return c


@dataclasses.dataclass(frozen=True)
class BoothMultiplier(Component):
    """Radix-4 Booth n x m multiplier (m is the recoded operand).

    r = ceil((m + 1) / 2) partial-product rows of n + 1 bits, each bit a Booth selector
    (AOI22 + XNOR2); per row an encoder (XOR2 + XNOR2 + NOR2); reduction of r rows by
    (r - 2) carry-save rows of n + 3 bits plus an (n + m)-bit final adder. Class: mult.
    """

    n: int
    m: int
    energy_class: ClassVar[str] = "mult"

    def cells(self) -> Counter:
        n, m = int(self.n), int(self.m)
        r = (m + 2) // 2
        c = Counter(AOI22=r * (n + 1), XNOR2=r * (n + 1) + r, XOR2=r, NOR2=r)
        c["FA"] += max(r - 2, 0) * (n + 3)
        c.update(RippleAdder(n + m).cells())
        return c


def multiplier(n: int, m: int, signed: bool = False,
               style: "MultiplierStyle | str" = MultiplierStyle.ARRAY) -> Component:
    """An n x m multiplier: ``array`` (default) or ``booth`` (radix 4)."""
    if MultiplierStyle.parse(style) is MultiplierStyle.ARRAY:
        return ArrayMultiplier(n, m, signed)
    return BoothMultiplier(n, m)


@dataclasses.dataclass(frozen=True)
class BarrelShifter(Component):
    """Logarithmic shifter of an n-bit input by 0..max_shift positions, k = ceil(log2(max+1))
    stages of 2:1 muxes.

    left (widening, output n + max_shift bits): stage i has w_i = min(n + 2^(i+1) - 1,
    n + max_shift) bits; the 2^i lowest and the 2^i highest of them have a constant zero on one
    side (AND2), the rest are MUX2. right (fixed width n, e.g. alignment): n bits per stage,
    2^i zero-fill (AND2); ``sticky`` ORs the shifted-out bits (one OR2 per bit and stage).
    Class: shift.
    """

    n: int
    max_shift: int
    direction: str = "left"
    sticky: bool = False
    energy_class: ClassVar[str] = "shift"

    def cells(self) -> Counter:
        n, s = int(self.n), int(self.max_shift)
        c = Counter()
        if s <= 0 or n <= 0:
            return c
        for i in range(clog2(s + 1)):
            step = 1 << i
            if self.direction == "left":
                w = min(n + 2 * step - 1, n + s)
                edge = min(2 * step, w)
                c["AND2"] += edge
                c["MUX2"] += w - edge
            else:
                zero_fill = min(step, n)
                c["AND2"] += zero_fill
                c["MUX2"] += n - zero_fill
                if self.sticky:
                    c["OR2"] += min(step, n)
        return c


@dataclasses.dataclass(frozen=True)
class LeadingZeroCounter(Component):
    """Leading-zero counter of n bits: the tree of :func:`fmtlab.hw.rtl_parts.lzc_module`, the
    input padded below its LSB with zeros to 2^k bits (k = ceil(log2 n)). Node at level l with a
    live upper half h and lower half g:

    - valid v = v_h | v_g: one NOR2/NAND2 (1 GE; abc alternates the polarity level by level, so
      the OR tree maps to inverting 2-input gates);
    - count MSB ~v_h: one INV;
    - each of the l - 1 lower count bits: v_h ? c_h : c_g. An all-zero group counts all ones, so
      this is c_h & (v_h | c_g): one OAI21 (with the alternating polarity). When g is padding
      only (c_g = 1...1, v_g = 0) the bit is c_h | ~v_h: one NOR2 and v = v_h is a wire.

    Nodes of padding only are constants (free). Fit: the project's own ``lzc_module(n)``
    synthesised alone (``fmtlab.hw.synth.run_yosys`` of the module text as the top, Yosys 0.70,
    OSU 0.18 um, GE = area / NAND2X1; session-6 note of issue 21), n = 4..48: synth 5.0 (n=4), 15.4 (8),
    27.5 (11), 35.8 (16), 44.1 (18), 60.1 (24), 71.8 (28), 80.6 (32), 106.5 (40), 129.0 (48) GE;
    this count gives 6.0, 15.5, 27.7, 35.5, 50.7, 60.2, 69.7, 76.6, 106.9, 123.2 GE: mean
    |error| 4.7% over 24 widths (mean +2.4%; max +19% at n = 4, +15% at n = 18, min -8%). The former
    count (OR2 + INV + (l - 1) MUX2 per node, no padding folding) was 1.4-2.0x synthesis.
    Class: shift."""

    n: int
    energy_class: ClassVar[str] = "shift"

    def cells(self) -> Counter:
        n = int(self.n)
        c = Counter()
        if n < 1:
            return c
        live = [True] * n + [False] * ((1 << clog2(max(n, 2))) - n)  # MSB first, zero padding
        lvl = 0
        while len(live) > 1:
            lvl += 1
            nxt = []
            for hi, lo in zip(live[0::2], live[1::2]):
                if hi:
                    c["INV"] += 1
                    if lo:
                        c["NOR2"] += 1
                        c["OAI21"] += lvl - 1
                    else:
                        c["NOR2"] += lvl - 1
                nxt.append(hi)
            live = nxt
        return c


@dataclasses.dataclass(frozen=True)
class Mux(Component):
    """n bits of a ways:1 multiplexer: (ways - 1) * n MUX2. Class: shift (data steering)."""

    n: int
    ways: int = 2
    energy_class: ClassVar[str] = "shift"

    def cells(self) -> Counter:
        return Counter(MUX2=max(int(self.ways) - 1, 0) * max(int(self.n), 0))


@dataclasses.dataclass(frozen=True)
class ConstRom(Component):
    """A read-only table of constant ``width``-bit words addressed by a code: a multiplexer tree
    on the address bits per output bit, reduced as a shared reduced ordered BDD (Bryant, "Graph-
    based algorithms for Boolean function manipulation", IEEE TC 1986; address MSB at the root):
    equal sub-tables are built once, a node whose two inputs are equal disappears, a node
    selecting 0/1 by an address bit is that bit (free) or its inverse (INV); every other node is
    one MUX2. Upper bound: ``width * (len(words) - 1)`` MUX2 (no folding). Class: shift."""

    words: tuple[int, ...]
    width: int
    energy_class: ClassVar[str] = "shift"

    def cells(self) -> Counter:
        n = len(self.words)
        if n & (n - 1) or n < 2:
            raise ValueError(f"ConstRom needs a power-of-two number of words, got {n}")
        mask = (1 << self.width) - 1
        nodes: dict[tuple, int] = {}  # (lo, hi) -> node id; ids 0 and 1 are the constants
        c = Counter()
        for bit in range(self.width):
            level = [((w & mask) >> bit) & 1 for w in self.words]
            depth = 0
            while len(level) > 1:
                nxt = []
                for lo, hi in zip(level[0::2], level[1::2]):
                    if lo == hi:
                        nxt.append(lo)
                        continue
                    key = (depth, lo, hi)
                    if key not in nodes:
                        nodes[key] = len(nodes) + 2
                        if (lo, hi) == (1, 0):
                            c["INV"] += 1
                        elif (lo, hi) != (0, 1):
                            c["MUX2"] += 1
                    nxt.append(nodes[key])
                level = nxt
                depth += 1
        return c

    def describe(self) -> str:
        return f"ConstRom(words={len(self.words)}, width={self.width})"


@dataclasses.dataclass(frozen=True)
class Decoder(Component):
    """n-to-2^n one-hot decoder: n INV and one n-input AND (n - 1 AND2) per used output."""

    n: int
    outputs: int | None = None  # only the first `outputs` lines are needed
    energy_class: ClassVar[str] = "logic"

    def cells(self) -> Counter:
        n = int(self.n)
        outs = (1 << n) if self.outputs is None else int(self.outputs)
        return Counter(INV=n, AND2=outs * max(n - 1, 1))


@dataclasses.dataclass(frozen=True)
class OrTree(Component):
    """n-input OR (zero / sticky / all-ones detection): n - 1 OR2. Class: logic."""

    n: int
    energy_class: ClassVar[str] = "logic"

    def cells(self) -> Counter:
        return Counter(OR2=max(int(self.n) - 1, 0))


@dataclasses.dataclass(frozen=True)
class Register(Component):
    """n-bit register (accumulator): n DFF, plus n AND2 for a synchronous clear. Class: reg."""

    n: int
    clear: bool = True
    energy_class: ClassVar[str] = "reg"

    def cells(self) -> Counter:
        n = max(int(self.n), 0)
        return Counter(DFF=n, AND2=n) if self.clear else Counter(DFF=n)
