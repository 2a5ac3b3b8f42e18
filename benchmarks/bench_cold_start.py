"""Cold start of the numba kernels: import time and the first encode / fake-quant per format, in a
fresh process, with an empty numba cache (first process) and with the cache it left (second).

    python benchmarks/bench_cold_start.py            # temp NUMBA_CACHE_DIR, 2 processes each
    python benchmarks/bench_cold_start.py --runs 3

The first process compiles every kernel it touches and writes the cache; a second process loads
machine code from the cache (cache=True) and must not recompile: its first-call times are the
cache-load times. Prints one line per process: import ms, first-call ms per format, total, and
the numba dispatchers' cache statistics (hits: loaded from the cache; misses: compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

FORMATS = ["fp8_e4m3", "int8", "dint4", "log4", "bf16", "mxfp4"]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import fmtlab.formats as F
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
out = {"import_numpy_ms": (t1 - t0) * 1e3, "import_fmtlab_formats_ms": (t2 - t1) * 1e3,
       "numba_after_import": "numba" in sys.modules}
for name in json.loads(sys.argv[1]):
    t = time.perf_counter()
    if name.startswith("mx"):
        F.get_quantizer(name).fake_quantize(x)
    else:
        fmt = F.get_format(name)
        fmt.encode(x)
        F.Quantizer(fmt, F.PerGroup(32)).fake_quantize(x)
    out[name] = (time.perf_counter() - t) * 1e3
hits = misses = 0  # numba dispatchers' cache statistics: a miss is a compilation
for mod in [m for n, m in list(sys.modules.items()) if n.startswith("fmtlab.formats.")]:
    for obj in list(vars(mod).values()):
        st = getattr(obj, "stats", None)
        if st is not None and hasattr(st, "cache_hits") and getattr(obj, "__module__", "") == mod.__name__:
            hits += sum(st.cache_hits.values())
            misses += sum(st.cache_misses.values())
out["cache_hits"], out["cache_misses"] = hits, misses
print(json.dumps(out))
"""


def run_child(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(FORMATS)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="processes per cache state")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fmtlab-numba-cache-") as d:
        rows = [("cold (empty cache)", run_child(d))]
        for i in range(args.runs):
            rows.append((f"warm cache, process {i + 2}", run_child(d)))
    cols = ["import_fmtlab_formats_ms", *FORMATS]
    print("| process | numba after import | " + " | ".join(cols) + " | first calls total ms "
          "| kernels loaded from cache / compiled |")
    print("|---|:---:|" + "---:|" * (len(cols) + 2))
    for label, r in rows:
        tot = sum(r[f] for f in FORMATS)
        print(f"| {label} | {r['numba_after_import']} | " + " | ".join(f"{r[c]:.0f}" for c in cols)
              + f" | {tot:.0f} | {r['cache_hits']} / {r['cache_misses']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
