"""Fake-quant throughput of fmtlab's fused kernels beside ml_dtypes and torch casts (same run).

    python benchmarks/bench_formats.py                 # 2**24 float32 values, 1 and 2 threads
    python benchmarks/bench_formats.py --n 20 --reps 5 --threads 1 2 --json out.json

For each input distribution (normal, sigma 10; heavy tail: normal * exp(2 * normal), sigma-10
scaled) and each thread count (numba.set_num_threads and torch.set_num_threads), it measures
elements/s as the median (and the best) of ``--reps`` timed runs (candidates interleaved
round-robin after one warm-up each, so machine noise hits all of them alike) of:
  fmtlab  static   Quantizer(fmt, PerTensor(), Static(amax / fmt.max)).fake_quantize(x): the
                   fused kernel alone (x / s, round, clamp, * s in one pass)
  fmtlab  dynamic  the per-tensor absmax quantizer: an amax pass plus the fused pass
  fmtlab  blocks   MXFP8 (E4M3), MXFP4 and NVFP4 fake-quant (block amax, scale, elements fused)
  ml_dtypes        x.astype(dtype).astype(float32) (single-threaded by design)
  torch            torch.from_numpy(x).to(float8).float()
and a float32 copy (``x.copy()``, the memory-bound limit), and prints ratios against torch's FP8
E4M3 round trip, against ml_dtypes' round trip of the same format (E4M3 where ml_dtypes has no
such format) and against the copy, all measured in the same run. Issue 22's targets for every
element format (static and dynamic): >= 4x torch, >= 5x ml_dtypes, and within 2x of the copy
("x float32 copy" >= 0.5). The issue sets none for the block formats; they keep the older >= 2x
torch. The "target met" column says "yes", or "no:" followed by each target missed (measured <
target, medians). The machine may be shared: read the ratios, not the times; the load average
before and after each table is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

#: issue 22's targets for element fake-quant (medians, same run): x torch fp8_e4m3 round trip,
#: x ml_dtypes round trip, x float32 copy (within 2x of the memory-bound copy).
ELEMENT_TARGETS = {"torch": 4.0, "ml_dtypes": 5.0, "copy": 0.5}
#: block formats: no target in issue 22; the older >= 2x torch is kept.
BLOCK_TARGETS = {"torch": 2.0}

ELEMENT_FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8", "int4",
                   "dint4", "log4", "bf16", "fp16"]
BLOCK_PRESETS = ["mxfp8_e4m3", "mxfp4", "nvfp4"]


def make_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = (rng.standard_normal(n) * 10).astype(np.float32)
    heavy = (rng.standard_normal(n) * np.exp(2 * rng.standard_normal(n)) * 10).astype(np.float32)
    return {"normal(10)": normal, "heavy-tail": heavy}


def build_candidates(x: np.ndarray):
    """name -> (group, zero-argument callable)."""
    import ml_dtypes
    import torch

    from fmtlab.formats import PerTensor, Quantizer, Static, get_format, get_quantizer

    cands = {}
    t = torch.from_numpy(x)
    cands["float32 copy"] = ("copy", lambda: x.copy())  # the memory-bound limit (read + write n floats)
    cands["torch fp8_e4m3"] = ("torch", lambda: t.to(torch.float8_e4m3fn).float())
    cands["torch fp8_e5m2"] = ("torch", lambda: t.to(torch.float8_e5m2).float())
    ml = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
          "fp6_e3m2": ml_dtypes.float6_e3m2fn, "fp6_e2m3": ml_dtypes.float6_e2m3fn,
          "fp4_e2m1": ml_dtypes.float4_e2m1fn, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}
    def ml_roundtrip(dt):
        with np.errstate(over="ignore"):  # heavy tails overflow the narrow formats
            return x.astype(dt).astype(np.float32)

    for name, dt in ml.items():
        cands[f"ml_dtypes {name}"] = ("ml_dtypes", lambda dt=dt: ml_roundtrip(dt))
    amax = float(np.max(np.abs(x)))
    for name in ELEMENT_FORMATS:
        fmt = get_format(name)
        qs = Quantizer(fmt, PerTensor(), Static(amax / fmt.max))
        qd = Quantizer(fmt, PerTensor())
        cands[f"fmtlab {name} static"] = ("static", lambda q=qs: q.fake_quantize(x))
        cands[f"fmtlab {name} dynamic"] = ("dynamic", lambda q=qd: q.fake_quantize(x))
    for name in BLOCK_PRESETS:
        q = get_quantizer(name)
        cands[f"fmtlab {name}"] = ("block", lambda q=q: q.fake_quantize(x))
    return cands


def measure(cands: dict, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """(median, best) seconds per candidate; candidates interleaved round-robin."""
    for _, fn in cands.values():  # warm-up (and numba compile / cache load)
        fn()
    times = {k: [] for k in cands}
    for _ in range(reps):
        for k, (_, fn) in cands.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return ({k: statistics.median(v) for k, v in times.items()}, {k: min(v) for k, v in times.items()})


def table(n: int, med: dict[str, float], best: dict[str, float]) -> list[dict]:
    rate = {k: n / v for k, v in med.items()}
    brate = {k: n / v for k, v in best.items()}
    torch_ref, torch_best = rate["torch fp8_e4m3"], brate["torch fp8_e4m3"]
    rows = []

    def row(op, key, ml_key, targets):
        r, b = rate[key], brate[key]
        ml = rate.get(ml_key) if ml_key else None
        return dict(op=op, rate=r, best=b, vs_torch=r / torch_ref, vs_torch_best=b / torch_best,
                    vs_copy=r / rate["float32 copy"],
                    vs_ml=None if ml is None else r / ml, ml_peer=ml_key and ml_key.split()[-1],
                    targets=targets)

    for name in ELEMENT_FORMATS:
        ml_key = f"ml_dtypes {name}" if f"ml_dtypes {name}" in rate else "ml_dtypes fp8_e4m3"
        for kind in ("static", "dynamic"):
            rows.append(row(f"{name} ({kind})", f"fmtlab {name} {kind}", ml_key, ELEMENT_TARGETS))
    for name in BLOCK_PRESETS:
        rows.append(row(name, f"fmtlab {name}", "ml_dtypes fp8_e4m3", BLOCK_TARGETS))
    for k in ("float32 copy", "torch fp8_e4m3", "torch fp8_e5m2", "ml_dtypes fp8_e4m3", "ml_dtypes fp4_e2m1", "ml_dtypes bf16",
              "ml_dtypes fp16"):
        rows.append(row(k, k, None, None))
    for r in rows:
        r["missed"] = missed_targets(r)
    return rows


def missed_targets(r: dict) -> list[str] | None:
    """The targets of row ``r`` it misses, as "name measured<target" (None: the row has no targets)."""
    if not r["targets"]:
        return None
    measured = {"torch": r["vs_torch"], "ml_dtypes": r["vs_ml"], "copy": r["vs_copy"]}
    out = []
    for name, target in r["targets"].items():
        v = measured[name]
        if v is None:
            out.append(f"{name} not measured")
        elif v < target:
            out.append(f"{name} {v:.2f}<{target:g}")
    return out


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    print("| operation | Melem/s (median) | Melem/s (best) | x torch fp8_e4m3 (median) | x torch (best/best) "
          "| x ml_dtypes (median, peer) | x float32 copy (median) "
          "| target met (>= 4x torch, >= 5x ml_dtypes, >= 0.5x copy; blocks >= 2x torch) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ml = "" if r["vs_ml"] is None else f"{r['vs_ml']:.1f} ({r['ml_peer']})"
        ok = ""
        if r["missed"] is not None:
            ok = "yes" if not r["missed"] else "**no**: " + ", ".join(r["missed"])
        print(f"| {r['op']} | {r['rate'] / 1e6:,.0f} | {r['best'] / 1e6:,.0f} | {r['vs_torch']:.2f} "
              f"| {r['vs_torch_best']:.2f} | {ml} | {r['vs_copy']:.2f} | {ok} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="log2 of the number of values (default 24)")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per candidate (median)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dist", nargs="+", default=None, help="distributions (default: all)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import numba
    import torch

    n = 1 << args.n
    inputs = make_inputs(n)
    unknown = sorted(set(args.dist or ()) - set(inputs))
    if unknown:
        ap.error(f"unknown --dist {unknown}; choose from {sorted(inputs)}")
    results = {"n": n, "reps": args.reps, "python": sys.version.split()[0], "machine": platform.machine(),
               "cpus": os.cpu_count(), "numba": numba.__version__, "torch": torch.__version__, "runs": []}
    print(f"fmtlab fake-quant benchmark: n = 2**{args.n} float32, median of {args.reps} runs, "
          f"{os.cpu_count()} CPUs, numba {numba.__version__}, torch {torch.__version__}")
    for dist, x in inputs.items():
        if args.dist and dist not in args.dist:
            continue
        cands = build_candidates(x)
        for th in args.threads:
            numba.set_num_threads(th)
            torch.set_num_threads(th)
            load0 = os.getloadavg()[0]
            med, best = measure(cands, args.reps)
            rows = table(n, med, best)
            load1 = os.getloadavg()[0]
            print_table(f"{dist}, {th} thread{'s' if th > 1 else ''} (load average {load0:.1f} -> {load1:.1f})",
                        rows)
            results["runs"].append({"dist": dist, "threads": th, "rows": rows})
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
