"""Accumulator accuracy (and datapath speed) of FP8 dot products: fp32, Hopper-style promoted, unpromoted.

For each K, 256 dot products of fp8_e4m3 weights (N(0,1)) with fp8_e4m3 activations (|N(0,1)|,
seed 0) through ``fmtlab.hw.datapath.matvec``; prints the median and max relative error against
the exact dot product, and the datapath time. The README quotes this table.

    python benchmarks/bench_accumulators.py [--k 512 4096] [--rows 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fmtlab.formats import get_format
from fmtlab.hw.datapath import matvec

ACCUMULATORS = ("fp32", "bf16", "hopper_fp8_mma", "hopper_fp8_mma_nopromo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--rows", type=int, default=256)
    args = ap.parse_args()
    f = get_format("fp8_e4m3")
    rng = np.random.default_rng(0)
    print("| K | accumulator | median rel err | max rel err | datapath s |")
    print("|---:|---|---:|---:|---:|")
    for k in args.k:
        W = f.encode(rng.normal(size=(args.rows, k)).astype(np.float32))
        x = f.encode(np.abs(rng.normal(size=k)).astype(np.float32))
        for acc in ACCUMULATORS:
            matvec(W[:1, :8], x[:8], "fp8_e4m3", "fp8_e4m3", acc)  # compile outside the timing
            t = time.perf_counter()
            r = matvec(W, x, "fp8_e4m3", "fp8_e4m3", acc)
            dt = time.perf_counter() - t
            rel = np.abs(r.value - r.exact) / np.abs(r.exact)
            print(f"| {k} | {acc} | {np.median(rel):.2e} | {rel.max():.2e} | {dt:.3f} |")


if __name__ == "__main__":
    main()
