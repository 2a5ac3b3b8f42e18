"""Speed of fmtlab's torch fake-quant against torch's own casts (x.to(dtype).float()).

For each format with a torch dtype twin, float32 inputs of several sizes (normal, scaled to the
format's range so most values are in range) go through
  torch cast     x.to(torch_dtype).float()                 (the peer)
  fmtlab torch   fmtlab.pytorch.quantize(x, fmt)            (auto: arithmetic path where it exists)
  fmtlab table   fmtlab.pytorch.quantize(x, fmt, method="table")   (generic searchsorted path)
  fmtlab numba   fmt.quantize(x.numpy())                    (the numpy/numba path, for reference)
and the table prints elements/s (medians of --repeats runs) and ratios time/time_cast (so 5.0
means five times slower than torch's cast). "same" says whether the fmtlab result has the same
bits as the torch cast on the in-range inputs (|x| < max; overflow conventions differ beyond).
"auto" uses torch's cast itself for in-range inputs of these twins (CPU, nearest-even), so its
ratio there measures the cost of fmtlab's range/NaN/overflow rules on top of the cast.

A second table times quantizers (format x granularity x scale rule, MX, NVFP4): the torch
twin (``TorchQuantizer.fake_quantize``) against the numpy/numba ``Quantizer.fake_quantize`` on a
[rows, 4096] float32 tensor (ratio = torch time / numba time).

    python benchmarks/bench_pytorch.py [--sizes 65536 1048576] [--repeats 7] [--device cpu|cuda]
                                       [--threads N] [--quantizer-rows 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fmtlab.formats import get_format, get_quantizer
from fmtlab.pytorch import TorchQuantizer, quantize

QUANTIZERS = ["int8_per_tensor", "int8_per_channel", "int8_per_token", "int4_g128", "int4_g128_asym",
              "fp8_e4m3_per_token", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "log4_per_channel"]

PAIRS = [
    ("fp8_e4m3", "float8_e4m3fn"), ("fp8_e5m2", "float8_e5m2"),
    ("fp8_e4m3fnuz", "float8_e4m3fnuz"), ("fp8_e5m2fnuz", "float8_e5m2fnuz"),
    ("fp16", "float16"), ("bf16", "bfloat16"), ("e8m0", "float8_e8m0fnu"),
    ("int8", None), ("fp4_e2m1", None), ("log4", None),
]


def _median_time(fn, repeats: int, sync) -> float:
    fn()  # warm-up (caches, lazy tables)
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1 << 16, 1 << 20])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-numba", action="store_true", help="skip the numba reference column")
    ap.add_argument("--method", default="auto", help="fmtlab torch method for the main column")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quantizer-rows", type=int, default=256, help="rows of the [rows, 4096] quantizer input")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, "
          f"medians of {args.repeats} runs; ratio = time / time(torch cast)")
    head = (f"{'format':<14}{'size':>9}  {'cast Me/s':>10}  {'fmtlab Me/s':>11}  {'ratio':>6}  "
            f"{'table ratio':>11}  {'numba ratio':>11}  same")
    print(head)
    print("-" * len(head))
    warm = torch.randn(1 << 16, device=dev)
    for name, _ in PAIRS:  # warm-up: thread pools, lazy tables, numba compilation
        quantize(warm.abs() + 1e-3, name)
        if not args.no_numba:
            get_format(name).quantize((warm.abs() + 1e-3).cpu().numpy())
    for name, tname in PAIRS:
        fmt = get_format(name)
        for n in args.sizes:
            g = torch.Generator().manual_seed(n)
            span = fmt.max if fmt.family != "e8m0" else 1.0
            x = (torch.randn(n, generator=g) * (span / 4)).to(dev)
            if fmt.family == "e8m0":
                x = x.abs() + 1e-3
            t_f = _median_time(lambda: quantize(x, fmt, method=args.method), args.repeats, sync)
            t_t = _median_time(lambda: quantize(x, fmt, method="table"), args.repeats, sync)
            t_n = float("nan")
            if not args.no_numba:
                xn = x.cpu().numpy()
                t_n = _median_time(lambda: fmt.quantize(xn), args.repeats, lambda: None)
            if tname is not None:
                tdt = getattr(torch, tname)
                t_c = _median_time(lambda: x.to(tdt).float(), args.repeats, sync)
                inr = x.abs() < fmt.max  # overflow conventions differ beyond the range
                same = torch.equal(quantize(x, fmt)[inr].view(torch.int32), x.to(tdt).float()[inr].view(torch.int32))
                cast = f"{n / t_c / 1e6:>10.1f}"
                ratio = f"{t_f / t_c:>6.1f}"
                tr = f"{t_t / t_c:>11.1f}"
                nr = f"{t_n / t_c:>11.1f}"
                same_s = "yes" if same else "no"
            else:
                cast, ratio, tr, nr, same_s = f"{'-':>10}", f"{'-':>6}", f"{t_t / t_f:>10.1f}*", f"{t_n / t_f:>10.1f}*", "-"
            print(f"{name:<14}{n:>9}  {cast}  {n / t_f / 1e6:>11.1f}  {ratio}  {tr}  {nr}  {same_s}")
    print("* no torch dtype: ratios to the fmtlab torch path instead")
    _bench_quantizers(args, dev, sync)
    return 0


def _bench_quantizers(args, dev, sync) -> None:
    n_rows = args.quantizer_rows
    x = torch.randn(n_rows, 4096, generator=torch.Generator().manual_seed(0)).to(dev)
    xn = x.cpu().numpy()
    print()
    head = f"{'quantizer':<22}{'shape':>12}  {'torch Me/s':>10}  {'numba Me/s':>10}  {'torch/numba':>11}  same"
    print(head)
    print("-" * len(head))
    for name in QUANTIZERS:
        q = get_quantizer(name)
        tq = TorchQuantizer(q)
        t_t = _median_time(lambda: tq.fake_quantize(x), args.repeats, sync)
        t_n = _median_time(lambda: q.fake_quantize(xn), args.repeats, lambda: None)
        same = np.array_equal(tq.fake_quantize(x).cpu().numpy().view(np.int32), q.fake_quantize(xn).view(np.int32))
        n = x.numel()
        print(f"{name:<22}{str(tuple(x.shape)):>12}  {n / t_t / 1e6:>10.1f}  {n / t_n / 1e6:>10.1f}  "
              f"{t_t / t_n:>11.1f}  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    raise SystemExit(main())
