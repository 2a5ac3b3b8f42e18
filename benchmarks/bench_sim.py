"""Simulator speed: trace reads, metric kernels and replay throughput, as ratios to peers.

Run:  python benchmarks/bench_sim.py [--rows 4096] [--cols 1536] [--repeats 5] [--real]

Prints, for a synthetic activation of rows x cols float32 values (Gaussian plus a few outlier
channels):
* trace read: fmtlab's memory-mapped reader vs ``safetensors.numpy.load_file`` of the same shard;
* error metrics: the one-pass numba kernel vs the same metrics in plain numpy;
* replay: tensors/s and elements/s of a W8A8 config on a synthetic trace (1 and 2 threads);
* with ``--real``: ``fmtlab record`` + ``fmtlab replay`` of the embedded SmolLM2 at the CLI
  defaults, timed end to end (what the issue's "under 10 minutes" refers to).
Medians of ``--repeats`` runs; the machine is shared, so ratios matter more than absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()  # warm (numba compile, page cache)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _numpy_metrics(x, q, mask):
    x64 = x.astype(np.float64)
    e = q.astype(np.float64) - x64
    nz = x != 0
    under = nz & (q == 0)
    sig = float(np.dot(x64.ravel(), x64.ravel()))
    noise = float(np.dot(e.ravel(), e.ravel()))
    return (np.count_nonzero(under) / max(1, np.count_nonzero(nz)), float(np.sum(x64[under] ** 2)) / sig,
            np.count_nonzero(mask) / x.size, float(np.sum(x64[mask] ** 2)) / sig,
            float(np.sum(e[mask] ** 2)) / noise, noise / x.size, 10 * np.log10(sig / noise), float(np.abs(e).max()))


def _data(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, :4] *= 50
    return x


def _absmax_int8(x):
    s = np.abs(x).max() / 127.0
    return (np.clip(np.rint(x / s), -127, 127) * s).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--real", action="store_true", help="also time fmtlab record + replay on SmolLM2")
    args = ap.parse_args()

    from safetensors.numpy import load_file

    from fmtlab.sim.metrics import error_stats
    from fmtlab.sim.replay import ReplayConfig, replay
    from fmtlab.sim.trace import Trace, TraceWriter

    x = _data(args.rows, args.cols)
    n = x.size
    print(f"{'operation':<44}{'size':>12}{'elements/s':>14}{'peer elements/s':>17}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as d:
        wr = TraceWriter(os.path.join(d, "t"))
        wr.add("L:input", x)
        wr.add("L:weight", _data(1024, args.cols, 1) * 0.02)
        tr = wr.close({"seq_len": args.rows, "n_tokens": args.rows,
                       "layers": {"L": {"op": "linear", "type": "proj", "block": 0, "in_features": args.cols,
                                        "out_features": 1024, "input": "L:input", "weight": "L:weight"}}})
        shard = os.path.join(tr.path, tr.manifest["shards"][0]["file"])

        def ours():
            t = Trace(tr.path)
            float(t.tensor("L:input").sum())  # touch every byte
            t.close()

        def peer():
            float(load_file(shard)["L:input#0"].sum())

        a, b = _median_time(ours, args.repeats), _median_time(peer, args.repeats)
        print(f"{'trace read + sum (mmap vs safetensors load)':<44}{n:>12}{n / a:>14.3g}{n / b:>17.3g}{b / a:>8.2f}")

        q = _absmax_int8(x)
        mask = np.abs(x) > 100
        a = _median_time(lambda: error_stats(x, q, mask), args.repeats)
        b = _median_time(lambda: _numpy_metrics(x, q, mask), args.repeats)
        print(f"{'error metrics (numba one pass vs numpy)':<44}{n:>12}{n / a:>14.3g}{n / b:>17.3g}{b / a:>8.2f}")

        cfg = ReplayConfig("w8a8", _absmax_int8, _absmax_int8)
        for workers in (1, 2):
            t = _median_time(lambda: replay(tr, cfg, progress=False, workers=workers), max(1, args.repeats // 2))
            print(f"{f'replay 1 layer, {workers} thread(s)':<44}{n:>12}{n / t:>14.3g}{'':>17}{'':>8}")

    if args.real:
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fmtlab", "record", "--out", f"{d}/trace", "--quiet"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            t1 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fmtlab", "replay", f"{d}/trace", "--out", f"{d}/rep", "--quiet"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            t2 = time.perf_counter()
            print(f"\nfmtlab record (defaults): {t1 - t0:.1f} s; fmtlab replay (default configs): {t2 - t1:.1f} s; "
                  f"total {t2 - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
