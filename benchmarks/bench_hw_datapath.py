"""Speed of the bit-accurate MAC datapath: a 4096 x 4096 matrix-vector product per unit.

Prints, per unit: seconds (median of --repeats runs after one warm-up that also compiles the
numba kernels), MACs/s, and the ratio to numpy's matvec on the decoded values measured in the
same process (float32 ``W @ x`` for float units, int64 for integer ones). The bit-accurate
datapath is sequential per row (one MAC unit's order of accumulation), numpy is not: the ratio
says what bit accuracy costs.

    python benchmarks/bench_hw_datapath.py [--size 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fmtlab.formats import get_format
from fmtlab.hw.datapath import matvec, mx_dot

UNITS = [("int8", "int8", "int32"), ("dint4", "int8", "int32"), ("log4", "int8", "int32"),
         ("fp8_e4m3", "fp8_e4m3", "fp32"), ("fp8_e4m3", "fp8_e4m3", "bf16"),
         ("fp8_e4m3", "fp8_e4m3", "kulisch"), ("fp8_e5m2", "fp8_e5m2", "kulisch"),
         ("bf16", "bf16", "fp32"), ("mxfp8", "mxfp8", "fp32"), ("mxfp4", "mxfp4", "fp32")]


def timeit(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    print("| unit | size | datapath s | MACs/s | numpy s | ratio (datapath / numpy time) | max rel err |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for w, a, acc in UNITS:
        mx = w.startswith("mx")
        el = {"mxfp8": "fp8_e4m3", "mxfp4": "fp4_e2m1"}.get(w, w)
        fw, fa = get_format(el), get_format({"mxfp8": "fp8_e4m3", "mxfp4": "fp4_e2m1"}.get(a, a))
        W = fw.encode(rng.standard_normal((n, n)) * (20 if fw.family != "minifloat" else 1),
                      **({} if fw.family != "minifloat" else {})) if fw.family != "log" else fw.encode(
            np.clip(rng.standard_normal((n, n)) * 0.3, -1, 1))
        x = fa.encode(rng.standard_normal(n) * (20 if fa.family != "minifloat" else 1))
        if mx:
            sw = rng.integers(120, 130, (n, n // 32))
            sx = rng.integers(120, 130, n // 32)
            run = lambda: mx_dot(W, x, sw, sx, w, a, acc)  # noqa: E731
        else:
            run = lambda: matvec(W, x, w, a, acc)  # noqa: E731
        t = timeit(run, args.repeats)
        r = run()
        if fw.family == "minifloat":
            Wv, xv = fw.decode(W).astype(np.float32), fa.decode(x).astype(np.float32)
        else:
            Wv, xv = fw.decode(W).astype(np.int64), fa.decode(x).astype(np.int64)
        tn = timeit(lambda: Wv @ xv, args.repeats)
        err = r.summary()["max_rel_error"]
        print(f"| {w} x {a} -> {acc} | {n}x{n} | {t:.3f} | {n * n / t:.3g} | {tn:.4f} | {t / tn:.0f} | {err:.2e} |")


if __name__ == "__main__":
    main()
