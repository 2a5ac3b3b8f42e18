"""`fmtlab report` end to end, cold and warm: stage times (the report's own ``timings_s``), wall time
and peak RSS of each run (issue 22: at most 4 min cold, 2 min warm, 2.5 GB peak RSS).

    python benchmarks/bench_report.py                      # the default report, cold then warm
    python benchmarks/bench_report.py --layers 'layers\\.0\\.' --ppl-sequences 2   # a quick check
    python benchmarks/bench_report.py --keep /tmp/br        # keep the work folder

What "cold" means here (each run is a fresh process):
* cold: an empty numba cache (``NUMBA_CACHE_DIR`` = a new folder: every kernel compiles), a new
  output folder (no traces: record, replay and perplexity all run), and ``FMTLAB_CACHE`` = a new
  folder holding only the converted embedded model (a symlink to the one in your fmtlab cache, or
  converted on first use if there is none: pass ``--convert`` to time that conversion too);
* warm: the same command again: numba kernels load from the cache the cold run wrote and the
  traces recorded by the cold run are reused (``<out>/traces``).
The Python bytecode cache and the OS page cache are not cleared (not "cold" in that sense).
Peak RSS is the report process's own maximum resident set (``os.wait4``), not its children's.
The machine may be shared: the 1-minute load average is printed before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MODEL_CACHE = "smollm2-135m-instruct"  # fmtlab.models.loading._SMOLLM2_CACHE


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _user_cache() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("FMTLAB_CACHE") or "~/.cache/fmtlab"))


def run_once(label: str, args: list[str], env: dict[str, str], out: str) -> dict:
    cmd = [sys.executable, "-m", "fmtlab", "report", "--out", out, "--quiet", *args]
    l0 = _load()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = p.stdout.read(), p.stderr.read()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"{label} run failed (exit {rc}): {' '.join(cmd)}")
    with open(os.path.join(out, "tables", "report.json")) as f:
        timings = json.load(f)["summary"]["timings_s"]
    rss_gb = ru.ru_maxrss * 1024 / 1e9  # Linux: KiB
    return {"label": label, "wall_s": wall, "rss_gb": rss_gb, "cpu_s": ru.ru_utime + ru.ru_stime, "timings": timings, "load": f"{l0}->{_load()}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", default=None, help="work folder to use and keep (default: a temporary one)")
    ap.add_argument("--convert", action="store_true",
                    help="cold run converts the embedded model too (no symlink to the converted cache)")
    ap.add_argument("--runs", default="cold,warm", help="which runs, in order (default: %(default)s)")
    args, report_args = ap.parse_known_args()
    work = args.keep or tempfile.mkdtemp(prefix="bench_report_")
    os.makedirs(work, exist_ok=True)
    numba_cache = os.path.join(work, "numba_cache")
    fm_cache = os.path.join(work, "fmtlab_cache")
    out = os.path.join(work, "report")
    for d in (numba_cache, fm_cache, out):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(numba_cache)
    os.makedirs(fm_cache)
    src = os.path.join(_user_cache(), MODEL_CACHE)
    model_note = "converted in the cold run"
    if not args.convert and os.path.isdir(src):
        os.symlink(src, os.path.join(fm_cache, MODEL_CACHE))
        model_note = f"converted model linked from {src}"
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_cache, FMTLAB_CACHE=fm_cache)
    print(f"{os.cpu_count()} CPUs; load {_load()}; report args: {report_args or '(defaults)'}; {model_note}")
    results = [run_once(r, report_args, env, out) for r in args.runs.split(",")]
    stages = list(dict.fromkeys(k for r in results for k in r["timings"]))
    print(f"\n{'stage (s)':<34}" + "".join(f"{r['label']:>12}" for r in results))
    for k in stages:
        print(f"{k:<34}" + "".join(f"{r['timings'].get(k, float('nan')):>12.1f}" for r in results))
    print(f"{'wall (process)':<34}" + "".join(f"{r['wall_s']:>12.1f}" for r in results))
    print(f"{'peak RSS (GB)':<34}" + "".join(f"{r['rss_gb']:>12.2f}" for r in results))
    print(f"{'load avg (before->after)':<34}" + "".join(f"{r['load']:>12}" for r in results))
    print(f"{'user+sys CPU (s)':<34}" + "".join(f"{r['cpu_s']:>12.1f}" for r in results))
    print("\ntargets (issue 22): cold <= 240 s, warm <= 120 s, peak RSS <= 2.5 GB")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
