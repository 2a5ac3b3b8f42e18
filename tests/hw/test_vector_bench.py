"""A generated RTL operand decoder passes the golden decode vectors of `fmtlab vectors` in Icarus."""

from __future__ import annotations

import pytest

from fmtlab.formats.vectors import write_vectors
from fmtlab.hw.sim import iverilog_available
from fmtlab.hw.vector_bench import decode_testbench, decoder_module, run_decode_vectors

needs_iverilog = pytest.mark.skipif(not iverilog_available(),
                                    reason="Icarus Verilog (iverilog, vvp) is not installed")


@needs_iverilog
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "binary8p3se", "binary8p4sf"])
def test_decoder_passes_golden_decode_vectors(tmp_path, name):
    write_vectors(name, tmp_path, n=0)
    n, bad = run_decode_vectors(name, str(tmp_path / f"{name}.decode.hex"))
    assert (n, bad) == (256, 0)


@needs_iverilog
def test_testbench_catches_a_wrong_vector(tmp_path):
    """A corrupted expected value is reported (the bench can fail)."""
    write_vectors("fp8_e4m3", tmp_path, n=0)
    p = tmp_path / "fp8_e4m3.decode.hex"
    lines = p.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("01"))
    lines[i] = "01" + "3FF0000000000000"  # code 0x01 claimed to be 1.0
    p.write_text("\n".join(lines) + "\n")
    assert run_decode_vectors("fp8_e4m3", str(p)) == (256, 1)


def test_bench_text_names_the_hex_file():
    tb = decode_testbench("fp8_e4m3", "v/fp8_e4m3.decode.hex")
    assert '$readmemh("v/fp8_e4m3.decode.hex", mem)' in tb and "RESULT" in tb
    assert decoder_module("fp8_e4m3").startswith("module dec(input [7:0] x")
