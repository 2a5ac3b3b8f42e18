"""Simulate the generated RTL with Icarus Verilog and compare it bit for bit with the datapath.

One simulator run per unit: the testbench reads every test vector from a hex file
(``$readmemh``), applies it to the combinational core, and writes each ``acc_out`` to a file;
Python compares the outputs with :func:`fmtlab.hw.datapath.mac_step` (or ``mx_step``).

Vectors: for units whose operands have at most 8 bits, every (w, a) code pair once, each with
its own accumulator input drawn from a seeded generator (random words, values near -product
for cancellation, zeros, specials, values at the overflow edges); 16-bit units get random pairs.
MX units: blocks that together cover every element pair once, with random scales (a few NaN).

The simulator is ``iverilog``/``vvp`` (Debian package ``iverilog``, Icarus Verilog 11).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.hw import dp_kernels as K
from fmtlab.hw.datapath import float_params, float_to_bits, mac_step, mx_step
from fmtlab.hw.mac import MacUnit, kulisch_flag_bits, kulisch_geometry
from fmtlab.hw.operands import FloatAcc, IntAcc, KulischAcc, view
from fmtlab.hw.rtl import RTL, generate


def iverilog_available() -> bool:
    """True when both ``iverilog`` and ``vvp`` are on PATH."""
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


@dataclasses.dataclass(frozen=True)
class Vectors:
    """Test vectors: acc_in (Python ints), w and a codes (MX: one row of ``block`` per vector),
    scales for MX."""

    acc_in: list
    w: np.ndarray
    a: np.ndarray
    sw: np.ndarray | None = None
    sx: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.acc_in)


def _float_acc_inputs(rng: np.random.Generator, acc: FloatAcc, prods: np.ndarray) -> np.ndarray:
    """Accumulator inputs (bit patterns) for float units: a mix aimed at every adder path."""
    n = len(prods)
    bits = acc.bits
    kind = rng.integers(0, 8, n)
    out = rng.integers(0, 1 << min(bits, 62), n, dtype=np.int64).astype(np.uint64)  # random words
    if bits > 62:
        out |= rng.integers(0, 4, n).astype(np.uint64) << np.uint64(62)
    fin = np.isfinite(prods)
    p = np.where(fin, prods, 1.0)
    # near -p: exact cancellation and one or a few ulps off
    near = float_to_bits(_round_to(-p, acc), acc).astype(np.int64)
    delta = rng.integers(-3, 4, n)
    near_bits = (near + delta).astype(np.uint64)
    out = np.where((kind <= 2) & fin, near_bits, out)
    # near +p / near p * 2^k (alignment shifts of every size)
    k = rng.integers(-30, 30, n)
    scaled = _round_to(p * np.ldexp(1.0, k) * rng.choice([-1.0, 1.0], n), acc)
    out = np.where((kind == 3) & fin, float_to_bits(scaled, acc), out)
    # specials: +-0, +-Inf, NaN, max finite, smallest subnormal, min normal
    emax_field = (1 << acc.exp_bits) - 1
    sign = np.uint64(1 << (bits - 1))
    specials = np.array([0, int(sign), emax_field << acc.man_bits,
                         int(sign) | (emax_field << acc.man_bits),
                         (emax_field << acc.man_bits) | (1 << (acc.man_bits - 1)),
                         ((emax_field - 1) << acc.man_bits) | ((1 << acc.man_bits) - 1), 1,
                         1 << acc.man_bits, int(sign) | 1], dtype=np.uint64)
    out = np.where(kind == 4, specials[rng.integers(0, len(specials), n)], out)
    # tiny values (subnormal range)
    tiny = rng.integers(0, 1 << (acc.man_bits + 2), n).astype(np.uint64) | (rng.integers(0, 2, n).astype(np.uint64) * sign)
    out = np.where(kind == 5, tiny, out)
    return out


def _round_to(x: np.ndarray, acc: FloatAcc) -> np.ndarray:
    man, emin, emax, rtz, _ = float_params(acc)
    return np.array([K.round_fmt(float(v), man, emin, emax, rtz) for v in np.ravel(x)])


def make_vectors(unit: MacUnit, seed: int = 0, n_random: int = 20000) -> Vectors:
    """Test vectors for ``unit`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    acc = unit.accumulator
    if unit.is_mx:
        return _mx_vectors(unit, rng)
    wb, ab = unit.weight.bits, unit.activation.bits
    if wb + ab <= 16:
        ww, aa = np.meshgrid(np.arange(1 << wb), np.arange(1 << ab), indexing="ij")
        w, a = ww.reshape(-1), aa.reshape(-1)
    else:
        w = rng.integers(0, 1 << wb, n_random)
        a = rng.integers(0, 1 << ab, n_random)
    n = len(w)
    if isinstance(acc, IntAcc):
        W = acc.width
        r = rng.integers(0, 1 << min(W, 62), n, dtype=np.int64).astype(np.uint64)
        edge = np.array([0, (1 << (W - 1)) - 1, 1 << (W - 1), (1 << W) - 1, 1], dtype=np.uint64)
        pick = rng.integers(0, 6, n)
        r = np.where(pick == 0, edge[rng.integers(0, len(edge), n)], r)
        accs = [int(v) for v in r]
    elif isinstance(acc, FloatAcc):
        vw, va = view(unit.weight), view(unit.activation)
        with np.errstate(invalid="ignore"):
            prods = vw.values[w] * va.values[a]
        accs = [int(v) for v in _float_acc_inputs(rng, acc, prods)]
    else:
        vw, va = view(unit.weight), view(unit.activation)
        _, _, width = kulisch_geometry(vw, va, acc.guard)
        nf = kulisch_flag_bits(vw, va)
        accs = []
        for _ in range(n):
            reg = int(rng.integers(0, 1 << 62)) | (int(rng.integers(0, 1 << 62)) << 62)
            reg &= (1 << width) - 1
            if rng.random() < 0.2:
                reg = (1 << (width - 1)) - int(rng.integers(0, 1 << 20))  # near overflow
            flags = int(rng.integers(0, 1 << nf)) if (nf and rng.random() < 0.05) else 0
            accs.append((flags << width) | reg)
    return Vectors(accs, np.asarray(w), np.asarray(a))


def _mx_vectors(unit: MacUnit, rng: np.random.Generator, min_blocks: int = 256) -> Vectors:
    k = unit.weight.block
    eb, ab = unit.weight.element.bits, unit.activation.element.bits
    ww, aa = np.meshgrid(np.arange(1 << eb), np.arange(1 << ab), indexing="ij")
    pairs = np.stack([ww.reshape(-1), aa.reshape(-1)], 1)
    pairs = pairs[rng.permutation(len(pairs))]
    nblk = max(-(-len(pairs) // k), min_blocks)
    pad = nblk * k - len(pairs)
    if pad:
        pairs = np.concatenate([pairs, pairs[rng.integers(0, len(pairs), pad)]])
    w = pairs[:, 0].reshape(nblk, k)
    a = pairs[:, 1].reshape(nblk, k)
    sw = rng.integers(100, 155, nblk)
    sx = rng.integers(100, 155, nblk)
    ext = rng.random(nblk)
    sw = np.where(ext < 0.05, rng.integers(0, 256, nblk), sw)  # any scale, NaN included
    sx = np.where(ext > 0.95, rng.integers(0, 256, nblk), sx)
    acc: FloatAcc = unit.accumulator  # type: ignore[assignment]
    ra = rng.standard_normal(nblk) * np.ldexp(1.0, rng.integers(-20, 20, nblk))
    accs = float_to_bits(_round_to(ra, acc), acc)
    kind = rng.integers(0, 10, nblk)
    accs = np.where(kind == 0, rng.integers(0, 1 << 31, nblk).astype(np.uint64), accs)
    return Vectors([int(v) for v in accs], w, a, sw.astype(np.int64), sx.astype(np.int64))


def expected(unit: MacUnit, vec: Vectors) -> list[int]:
    """The datapath's next accumulator for every vector (Python ints)."""
    if unit.is_mx:
        out = mx_step(unit, np.array(vec.acc_in, dtype=np.uint64), vec.w, vec.a, vec.sw, vec.sx)
        return [int(v) for v in out]
    acc = unit.accumulator
    if isinstance(acc, KulischAcc):
        out = mac_step(unit, np.array(vec.acc_in, dtype=object), vec.w, vec.a)
    else:
        out = mac_step(unit, np.array(vec.acc_in, dtype=np.uint64), vec.w, vec.a)
    return [int(v) for v in out]


def testbench(rtl: RTL, n: int) -> str:
    """A testbench applying ``n`` vectors from vec.hex to the core, writing out.hex."""
    wb, ab, accb, k = rtl.w_bits, rtl.a_bits, rtl.acc_bits, rtl.block
    if k > 1:
        width = accb + 16 + k * (wb + ab)
        decl = (f"  reg [{k * wb - 1}:0] w; reg [{k * ab - 1}:0] a; reg [7:0] sw, sx;\n"
                f"  {rtl.core} dut(.w(w), .a(a), .sw(sw), .sx(sx), .acc_in(acc_in), .acc_out(acc_out));\n")
        unpack = "{acc_in, sw, sx, w, a} = mem[i];"
    else:
        width = accb + wb + ab
        decl = (f"  reg [{wb - 1}:0] w; reg [{ab - 1}:0] a;\n"
                f"  {rtl.core} dut(.w(w), .a(a), .acc_in(acc_in), .acc_out(acc_out));\n")
        unpack = "{acc_in, w, a} = mem[i];"
    return (f"module tb;\n  reg [{accb - 1}:0] acc_in; wire [{accb - 1}:0] acc_out;\n{decl}"
            f"  reg [{width - 1}:0] mem [0:{n - 1}];\n  integer i, f;\n"
            "  initial begin\n    $readmemh(\"vec.hex\", mem);\n    f = $fopen(\"out.hex\", \"w\");\n"
            f"    for (i = 0; i < {n}; i = i + 1) begin\n      {unpack}\n      #1;\n"
            "      $fdisplay(f, \"%h\", acc_out);\n    end\n    $fclose(f);\n    $finish;\n  end\nendmodule\n")


def pack_vectors(rtl: RTL, vec: Vectors) -> list[str]:
    wb, ab, k = rtl.w_bits, rtl.a_bits, rtl.block
    lines = []
    for i in range(len(vec)):
        if k > 1:
            wv = 0
            av = 0
            for j in range(k):
                wv |= int(vec.w[i, j]) << (j * wb)
                av |= int(vec.a[i, j]) << (j * ab)
            word = (((((int(vec.acc_in[i]) << 8) | int(vec.sw[i])) << 8 | int(vec.sx[i])) << (k * wb) | wv) << (k * ab)) | av
        else:
            word = (((int(vec.acc_in[i]) << wb) | int(vec.w[i])) << ab) | int(vec.a[i])
        lines.append(f"{word:x}")
    return lines


def simulate(rtl: RTL, vec: Vectors, workdir: str | None = None, timeout: float = 600) -> list[int]:
    """Run the core on every vector in Icarus Verilog; returns the acc_out words."""
    if not iverilog_available():
        raise FmtlabError("iverilog/vvp not found: install Icarus Verilog (Debian: apt-get install iverilog)")
    own = workdir is None
    d = tempfile.mkdtemp(prefix="fmtlab_sim_") if own else workdir
    try:
        with open(os.path.join(d, "dut.v"), "w") as f:
            f.write(rtl.text)
        with open(os.path.join(d, "tb.v"), "w") as f:
            f.write(testbench(rtl, len(vec)))
        with open(os.path.join(d, "vec.hex"), "w") as f:
            f.write("\n".join(pack_vectors(rtl, vec)) + "\n")
        r = subprocess.run(["iverilog", "-g2005", "-o", "sim.vvp", "-s", "tb", "tb.v", "dut.v"],
                           cwd=d, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise FmtlabError(f"iverilog failed for {rtl.top}:\n{r.stderr[-3000:]}")
        r = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=d, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise FmtlabError(f"vvp failed for {rtl.top}:\n{r.stderr[-3000:]}")
        with open(os.path.join(d, "out.hex")) as f:
            out = [int(line, 16) for line in f.read().split()]
        if len(out) != len(vec):
            raise FmtlabError(f"{rtl.top}: simulation wrote {len(out)} of {len(vec)} results")
        return out
    finally:
        if own:
            shutil.rmtree(d, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one RTL-vs-datapath comparison."""

    unit: str
    vectors: int
    mismatches: int
    first: tuple = ()  # (index, acc_in, w, a, rtl, datapath) of the first mismatches

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


def check_unit(unit: MacUnit, seed: int = 0, n_random: int = 20000) -> CheckResult:
    """Simulate ``unit``'s RTL on its vectors and compare with the datapath bit for bit."""
    rtl = generate(unit)
    vec = make_vectors(unit, seed, n_random)
    got = simulate(rtl, vec)
    want = expected(unit, vec)
    bad = [i for i, (g, e) in enumerate(zip(got, want)) if g != e]
    first = tuple((i, hex(vec.acc_in[i]), vec.w[i].tolist() if unit.is_mx else int(vec.w[i]),
                   vec.a[i].tolist() if unit.is_mx else int(vec.a[i]), hex(got[i]), hex(want[i]))
                  for i in bad[:5])
    return CheckResult(unit.name, len(vec), len(bad), first)
