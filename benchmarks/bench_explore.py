"""Scale-out benchmarks of replay (fmtlab explore's unit of work) and a scaling estimate.

Run:  python benchmarks/bench_explore.py [--layers 8] [--tokens 128] [--repeats 3] [--skip-cold]

Prints, on a synthetic trace of ``--layers`` SmolLM2-sized Linear layers (576 -> 1536, inputs with
outlier channels) and four configs (W8A8 per-token, W4A8 per-channel, MXFP4, FP8 per-tensor):
* replay throughput on a Dask LocalCluster of 2 worker processes vs 1 (same units, warmed workers);
* replay time in this process vs the float32 GEMMs it must run (X W^T once per layer, plus one
  quantized GEMM per config), and what else the time goes to (weight / activation quantization);
* cold start: a small replay in a fresh process with an empty numba cache, then in a second
  process with that cache;
* a scaling estimate for 7B and 70B models (Llama-2 shapes) at 512 and 4096 calibration tokens,
  from the per-element costs measured here: trace size, and replay time per config on N workers.
The machine is shared: the 1-minute load average is printed with each measurement.
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

CONFIGS = [("w8a8", "int8_per_channel", "int8_per_token"), ("w4a8", "int4_per_channel", "int8_per_token"),
           ("mxfp4", "mxfp4", "mxfp4"), ("fp8", "fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor")]
K, N = 576, 1536
# (name, linear params, recorded input floats per token, recorded output floats per token)
MODELS = {
    "7B (Llama-2-7B: 32 x d4096, ffn 11008)": (32 * (4 * 4096 * 4096 + 3 * 11008 * 4096),
                                               32 * (3 * 4096 + 11008), 32 * (4 * 4096 + 2 * 11008 + 4096)),
    "70B (Llama-2-70B: 80 x d8192, ffn 28672, GQA 8)": (80 * (2 * 8192 * 8192 + 2 * 1024 * 8192 + 3 * 28672 * 8192),
                                                        80 * (3 * 8192 + 28672),
                                                        80 * (2 * 8192 + 2 * 1024 + 2 * 28672 + 8192)),
}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def make_trace(path: str, layers: int, tokens: int, seq_len: int = 64) -> None:
    from fmtlab.sim.trace import TraceWriter

    rng = np.random.default_rng(0)
    wr = TraceWriter(path)
    meta = {}
    for i in range(layers):
        x = rng.standard_normal((tokens, K)).astype(np.float32)
        x[:, :3] *= 40
        wr.add(f"l{i}:input", x)
        wr.add(f"l{i}:weight", (rng.standard_normal((N, K)) * 0.03).astype(np.float32))
        meta[f"l{i}"] = {"op": "linear", "type": "proj", "block": i, "in_features": K, "out_features": N,
                         "input": f"l{i}:input", "weight": f"l{i}:weight"}
    wr.close({"seq_len": seq_len, "n_tokens": tokens, "n_sequences": tokens // seq_len, "layers": meta})


def units(path, tag: str = ""):
    from fmtlab.sim.executor import Unit, replay_tasks
    from fmtlab.sim.replay import ReplayConfig
    from fmtlab.sim.trace import open_trace

    cfgs = [ReplayConfig(*c) for c in CONFIGS]
    tr = open_trace(path)
    # a fresh label per run gives fresh keys: Dask would otherwise hand back results it still holds
    return [Unit(tr.path, None, k, names, t, (c,), label=tag) for k, names, t in replay_tasks(tr) for c in cfgs]


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_workers(path, repeats) -> None:
    from fmtlab.sim.executor import DaskExecutor, run_units

    times = {}
    for w in (1, 2):
        with DaskExecutor(workers=w) as ex:
            run_units(ex, units(path, "warm"))  # numba compile / cache load and page cache in each worker
            l0 = load()
            reps = iter(range(1000))
            times[w] = median_time(lambda: run_units(ex, units(path, f"rep{next(reps)}")), repeats)
        print(f"replay on LocalCluster, {w} worker(s): {times[w]:7.2f} s for {len(units(path))} units   ({l0})")
    print(f"  2 workers / 1 worker throughput: {times[1] / times[2]:.2f}x  (target >= 1.7x)")


def bench_gemm(path, repeats) -> dict:
    """Replay in this process (one thread for BLAS/numba would be the worker setting) vs its GEMMs."""
    from fmtlab.sim.executor import SerialExecutor, run_units
    from fmtlab.formats import get_quantizer
    from fmtlab.sim.trace import open_trace

    us = units(path)
    ex = SerialExecutor()
    run_units(ex, us)
    t_replay = median_time(lambda: run_units(ex, us), repeats)
    tr = open_trace(path)
    xs = [np.ascontiguousarray(tr.tensor(f"{n}:input")) for n in tr.layers]
    ws = [np.ascontiguousarray(tr.tensor(f"{n}:weight")) for n in tr.layers]

    def gemms():  # what replay must compute: the reference X W^T once per layer (a worker computes
        for x, w in zip(xs, ws):  # it once for the layer's units, LayerCache) + one GEMM per config
            x @ w.T
            for _ in CONFIGS:
                x @ w.T

    t_gemm = median_time(gemms, repeats)
    qw = [get_quantizer(c[1]) for c in CONFIGS]
    qa = [get_quantizer(c[2]) for c in CONFIGS]
    t_wq = median_time(lambda: [q.fake_quantize(w) for q in qw for w in ws], repeats)
    t_aq = median_time(lambda: [q.fake_quantize(x) for q in qa for x in xs], repeats)
    n_cfg_layers = len(CONFIGS) * len(ws)
    flops = 2 * (n_cfg_layers + len(ws)) * xs[0].shape[0] * K * N
    print(f"replay in-process: {t_replay:.2f} s; its float32 GEMMs alone: {t_gemm:.2f} s "
          f"-> replay / GEMM = {t_replay / t_gemm:.1f}x (target <= 2x)   ({load()})")
    print(f"  of which weight fake-quant {t_wq:.2f} s, activation fake-quant {t_aq:.2f} s, "
          f"rest (metrics, clip masks, per-sequence sums) {max(0.0, t_replay - t_gemm - t_wq - t_aq):.2f} s")
    return {"s_per_w_elem": t_wq / (len(CONFIGS) * sum(w.size for w in ws)),
            "s_per_a_elem": t_aq / (len(CONFIGS) * sum(x.size for x in xs)),
            "gemm_flops": flops / t_gemm, "overhead": t_replay / (t_gemm + t_wq + t_aq)}


COLD = """
import time, sys
t = time.perf_counter()
from fmtlab.sim.replay import replay
replay(sys.argv[1], ["w8a8_int_token", "w4a8_int_channel", "mxfp4", "fp8_e4m3"], progress=False, workers=1)
print(time.perf_counter() - t)
"""


def bench_cold(path) -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        ts = []
        for _ in range(2):
            l0 = load()
            r = subprocess.run([sys.executable, "-c", COLD, path], env=env, capture_output=True, text=True, check=True)
            ts.append((float(r.stdout.strip().splitlines()[-1]), l0))
    print(f"cold start (import + 4-config replay of 1 layer): fresh numba cache {ts[0][0]:.1f} s ({ts[0][1]}), "
          f"second process with the cache {ts[1][0]:.1f} s ({ts[1][1]})")


def scaling(costs: dict, workers=(1, 8, 64)) -> None:
    print("\nscaling estimate (per config; measured per-element costs x model shapes; fp32 trace):")
    print(f"  per weight element {costs['s_per_w_elem'] * 1e9:.2f} ns, per activation element "
          f"{costs['s_per_a_elem'] * 1e9:.2f} ns, GEMM {costs['gemm_flops'] / 1e9:.1f} GFLOP/s, "
          f"x{costs['overhead']:.2f} for the rest of replay")
    print(f"  {'model':<48}{'tokens':>7}{'trace GiB':>11}" + "".join(f"{f'{w} worker(s)':>14}" for w in workers))
    for name, (p, a_tok, o_tok) in MODELS.items():
        for t in (512, 4096):
            size = (p + t * (a_tok + o_tok)) * 4 / 2 ** 30
            sec = (p * costs["s_per_w_elem"] + t * a_tok * costs["s_per_a_elem"]
                   + 2 * 2 * t * p / costs["gemm_flops"]) * costs["overhead"]
            print(f"  {name:<48}{t:>7}{size:>11.1f}" + "".join(f"{_hms(sec / w):>14}" for w in workers))
    print("  (a worker holds one layer's weight and inputs at a time: e.g. 70B down_proj 235M weights = 0.9 GiB "
          "fp32, plus 4096 x 28672 inputs = 0.45 GiB)")


def _hms(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; {load()}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace")
        make_trace(path, args.layers, args.tokens)
        if not args.skip_cold:
            small = os.path.join(d, "small")
            make_trace(small, 1, args.tokens)
            bench_cold(small)
        costs = bench_gemm(path, args.repeats)
        if not args.skip_workers:
            bench_workers(path, args.repeats)
        scaling(costs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
