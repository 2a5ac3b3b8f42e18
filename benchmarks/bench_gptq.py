"""GPTQ speed on SmolLM2-135M: all 210 Linear layers, Hessians included (issue 20's target:
<= 2 minutes on this machine for INT4 per channel and for NVFP4, 32 x 256 calibration tokens).

Run:  OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gptq.py [--n-sequences 32] [--seq-len 256]
      [--quantizers int4_per_channel,nvfp4] [--torch-threads 1]

Prints the wall time of (1) the Hessians (one forward pass of the float model over the "calib"
windows with X^T X hooks), (2) GPTQ of every layer per quantizer, and the peer measured in the
same run: RTN (the quantizer's fake_quantize) of the same layers, as a ratio; plus `uptime`'s load
(the machine is shared: 2 cores). OPENBLAS_NUM_THREADS=1 matters on a loaded 2-core machine:
OpenBLAS's threads then spin against each other (a 576 x 576 Cholesky took 2.7 s with 2 threads
under load 14, 0.04 s with 1). The same holds for torch's OpenMP pool: at load 9 a 2 x 256-token
forward of SmolLM2 took 20.9 s with 2 torch threads, 3.8 s with 1 (every elementwise op waits at a
barrier for a descheduled thread), so the default is 1 torch thread; the Hessian rank-k updates
run on a second thread beside it (fmtlab.methods.gptq.input_moments). The peer of the Hessian pass
is the plain forward over the same windows (no hooks), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sequences", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--quantizers", default="int4_per_channel,nvfp4")
    ap.add_argument("--torch-threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    from fmtlab.methods.gptq import _body, collect_hessians, fit_weights
    from fmtlab.models.loading import load_model
    from fmtlab.models.record import find_linear_layers
    from fmtlab.sim.data import default_texts, token_windows

    torch.set_num_threads(a.torch_threads)
    model, tok = load_model("smollm2")
    model.eval()
    n_layers = len(find_linear_layers(model))
    print(f"load: {os.popen('uptime').read().strip()}")
    t = time.perf_counter()
    hs = collect_hessians(model, tok, seq_len=a.seq_len, n_sequences=a.n_sequences)
    t_h = time.perf_counter() - t
    print(f"hessians: {n_layers} layers, {a.n_sequences} x {a.seq_len} calib tokens: {t_h:.1f} s")
    windows, _ = token_windows(tok, default_texts("calib"), a.seq_len, a.n_sequences)
    body = _body(model, [n for n, _, _ in find_linear_layers(model)])
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(windows), 8):
            ids = torch.tensor(windows[s:s + 8], dtype=torch.long)
            body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    t_f = time.perf_counter() - t
    print(f"peer: the same forward without hooks {t_f:.1f} s; hessians / forward = {t_h / t_f:.2f}")
    for spec in a.quantizers.split(","):
        t = time.perf_counter()
        fit_weights(model, spec, hs, method="gptq")
        t_g = time.perf_counter() - t
        t = time.perf_counter()
        fit_weights(model, spec, method="rtn")
        t_r = time.perf_counter() - t
        print(f"{spec}: gptq {t_g:.1f} s (+ hessians = {t_g + t_h:.1f} s; target 120 s), rtn {t_r:.2f} s, "
              f"gptq / rtn = {t_g / t_r:.0f}x")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
