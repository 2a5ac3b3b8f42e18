"""A self-checking Icarus Verilog testbench that runs a generated operand decoder on the golden
decode vectors of ``fmtlab vectors`` (``NAME.decode.hex``).

The decoder is the one the MAC RTL uses (:func:`fmtlab.hw.rtl_operands.operand_decoder` for the
format's hardware view), wrapped in a module with ports ``x`` (the code) and ``s``, ``sig``,
``ee``, ``nan``, ``inf``, ``zero``. The testbench reads ``{code, value_f64}`` words with
``$readmemh``, applies each code and checks, in Verilog real arithmetic:

- expected NaN (exponent all ones, fraction nonzero): ``nan`` set;
- expected +/-Inf: ``inf`` set, ``nan`` clear, ``s`` equal to the expected sign;
- otherwise: ``nan``/``inf`` clear, ``s`` equal to the sign bit (so -0 is checked),
  ``zero`` set iff the value is zero, and ``sig * 2**(ee - bias - man_bits)`` equal to the
  magnitude (``$bitstoreal``; exact: every minifloat value is a float64).

It prints ``RESULT <vectors> <mismatches>`` and, per mismatch, ``BAD <code>``. Float views
(minifloats, signed P3109) only; formats with unused codes (flushed subnormals) are refused.

How an RTL team uses the files (the README shows the same)::

    fmtlab vectors fp8_e4m3 --out vec
    # in the testbench: reg [71:0] mem [0:255]; $readmemh("vec/fp8_e4m3.decode.hex", mem);
    #   x = mem[i][71:64]; want = mem[i][63:0];  // {code[7:0], value_f64[63:0]}
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from fmtlab.errors import FmtlabError
from fmtlab.formats import Format, get_format
from fmtlab.formats.capabilities import NotSupportedError
from fmtlab.hw.operands import FloatView, view
from fmtlab.hw.rtl_operands import operand_decoder
from fmtlab.hw.sim import iverilog_available

__all__ = ["decoder_module", "decode_testbench", "run_decode_vectors"]


def _float_view(fmt: Format) -> FloatView:
    v = view(fmt)
    if not isinstance(v, FloatView):
        raise NotSupportedError(f"{fmt.name}: the decode-vector testbench covers float operand views "
                                "(minifloats, signed P3109), not fixed-point ones")
    if fmt.unused_codes:
        raise FmtlabError(f"{fmt.name} has unused codes {sorted(fmt.unused_codes)[:4]}...: their "
                          "hardware decode is not a value of the format")
    return v


def decoder_module(fmt: "Format | str", name: str = "dec") -> str:
    """Verilog module ``name`` wrapping the format's generated operand decoder."""
    fmt = get_format(fmt)
    v = _float_view(fmt)
    e, p = v.exp_bits, v.sig_bits
    body = operand_decoder(v)("d", v, "x")
    return (f"module {name}(input [{v.bits - 1}:0] x, output s, output [{p - 1}:0] sig, "
            f"output [{e - 1}:0] ee, output nan, output inf, output zero);\n"
            + "\n".join(body) + "\n"
            "  assign s = d_s; assign sig = d_sig; assign ee = d_ee;\n"
            "  assign nan = d_nan; assign inf = d_inf; assign zero = d_zero;\nendmodule\n")


def decode_testbench(fmt: "Format | str", hex_path: str, name: str = "dec") -> str:
    """The self-checking testbench of the module docstring for ``hex_path``."""
    fmt = get_format(fmt)
    v = _float_view(fmt)
    b, e, p = v.bits, v.exp_bits, v.sig_bits
    cw = 4 * ((b + 3) // 4)
    n = 1 << b
    return f"""module tb;
  reg [{b - 1}:0] x; wire s; wire [{p - 1}:0] sig; wire [{e - 1}:0] ee; wire nan, inf, zero;
  {name} dut(.x(x), .s(s), .sig(sig), .ee(ee), .nan(nan), .inf(inf), .zero(zero));
  reg [{cw + 63}:0] mem [0:{n - 1}];
  reg [63:0] want; real got, wantr; integer i, k, bad, ok;
  initial begin
    $readmemh("{hex_path}", mem);
    bad = 0;
    for (i = 0; i < {n}; i = i + 1) begin
      x = mem[i][{64 + b - 1}:64]; want = mem[i][63:0];
      #1;
      ok = 1;
      if (want[62:52] == 11'h7FF && want[51:0] != 0) begin
        if (!nan) ok = 0;
      end else if (want[62:52] == 11'h7FF) begin
        if (!inf || nan || s != want[63]) ok = 0;
      end else begin
        k = ee;
        k = k - {v.bias} - {v.man_bits};
        got = sig * (2.0 ** k);
        wantr = $bitstoreal({{1'b0, want[62:0]}});
        if (nan || inf || s != want[63] || got != wantr || zero != (want[62:0] == 0)) ok = 0;
      end
      if (!ok) begin bad = bad + 1; $display("BAD %h", x); end
    end
    $display("RESULT %0d %0d", {n}, bad);
    $finish;
  end
endmodule
"""


def run_decode_vectors(fmt: "Format | str", hex_path: str, timeout: float = 120) -> tuple[int, int]:
    """Simulate the decoder on ``hex_path``; returns (vectors, mismatches)."""
    if not iverilog_available():
        raise FmtlabError("iverilog/vvp not found: install Icarus Verilog (Debian: apt-get install iverilog)")
    fmt = get_format(fmt)
    d = tempfile.mkdtemp(prefix="fmtlab_vec_")
    try:
        with open(os.path.join(d, "dut.v"), "w") as f:
            f.write(decoder_module(fmt))
        with open(os.path.join(d, "tb.v"), "w") as f:
            f.write(decode_testbench(fmt, os.path.abspath(hex_path)))
        r = subprocess.run(["iverilog", "-g2005", "-o", "sim.vvp", "-s", "tb", "tb.v", "dut.v"],
                           cwd=d, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise FmtlabError(f"iverilog failed for {fmt.name}:\n{r.stderr[-3000:]}")
        r = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=d, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise FmtlabError(f"vvp failed for {fmt.name}:\n{r.stderr[-3000:]}")
        for line in r.stdout.splitlines():
            if line.startswith("RESULT"):
                _, n, bad = line.split()
                return int(n), int(bad)
        raise FmtlabError(f"{fmt.name}: the testbench printed no RESULT line:\n{r.stdout[-2000:]}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
