"""GPTQ vs RTN layer-output SQNR on real SmolLM2-135M layers (issue 20's "real numbers").

Run:  OPENBLAS_NUM_THREADS=1 python benchmarks/gptq_smollm2_layers.py [--out DIR] [--n-sequences 32]
      [--seq-len 256] [--quantizers int4_per_channel,nvfp4] [--all-layers]

Calibration: a trace of the five layers' inputs recorded on the "calib" texts (32 x 256 = 8192
tokens by default), Hessians streamed from it (fmtlab.sim.hessian.trace_hessians). Scoring: a
trace of the same layers recorded on the disjoint "eval" texts; per sequence the signal energy
||X W^T||^2 and the noise energy ||X (W - Q)^T||^2; SQNR = 10 log10(sum signal / sum noise) with a
seeded bootstrap interval over eval sequences (fmtlab.sim.stats), and the paired GPTQ - RTN
difference. ``--all-layers``: every Linear layer scored from eval second moments (hooks, no
trace): tr((W - Q) X^T X (W - Q)^T), point estimates, and how many layers GPTQ improves.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import numpy as np

LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.8.self_attn.o_proj",
          "model.layers.15.mlp.gate_proj", "model.layers.22.mlp.down_proj",
          "model.layers.29.self_attn.v_proj")


def _sqnr(signal, noise) -> float:
    n = float(np.sum(noise))
    return math.inf if n == 0 else 10 * math.log10(float(np.sum(signal)) / n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for the traces (default: a temporary one)")
    ap.add_argument("--n-sequences", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--quantizers", default="int4_per_channel,nvfp4")
    ap.add_argument("--all-layers", action="store_true")
    ap.add_argument("--only-all-layers", action="store_true", help="skip the five-layer traces")
    ap.add_argument("--all-eval-sequences", type=int, default=8,
                    help="eval windows for the all-layers point estimates (default 8 x seq-len)")
    a = ap.parse_args(argv)

    import torch

    from fmtlab.methods.gptq import collect_hessians, input_moments, weight_quantizer
    from fmtlab.models.loading import load_model
    from fmtlab.models.record import find_linear_layers, record
    from fmtlab.sim.data import default_texts
    from fmtlab.sim.gptq import gptq, hessian_error, rtn
    from fmtlab.sim.hessian import trace_hessians
    from fmtlab.sim.stats import bootstrap, paired_difference

    torch.set_num_threads(1)  # a loaded 2-core machine: see bench_gptq.py
    model, tok = load_model("smollm2")
    model.eval()
    out = a.out or tempfile.mkdtemp(prefix="gptq-layers-")
    if a.only_all_layers:
        return _all_layers(a, model, tok)
    traces = {}
    for split in ("calib", "eval"):
        traces[split] = record(model, tok, default_texts(split), out=os.path.join(out, f"{split}-trace"),
                               seq_len=a.seq_len, n_sequences=a.n_sequences, layers=list(LAYERS),
                               outputs=False, overwrite=True, progress=False,
                               text_info={"source": "wiki", "split": split})
    print(f"traces recorded: {os.popen('uptime').read().strip()}", flush=True)
    hs = trace_hessians(traces["calib"], LAYERS)
    ev = traces["eval"]
    S, L = a.n_sequences, a.seq_len
    stat = lambda sig, noi: _sqnr(sig, noi)  # noqa: E731
    print(f"calibration: {S} x {L} 'calib' tokens; scored on {S} x {L} 'eval' tokens (disjoint)", flush=True)
    print("| layer | quantizer | RTN SQNR dB [95% CI] | GPTQ SQNR dB [95% CI] | GPTQ - RTN dB [95% CI] | RTN rows |")
    print("|---|---|---|---|---|---|")
    for spec in a.quantizers.split(","):
        q = weight_quantizer(spec)
        for name in LAYERS:
            W = ev.tensor(f"{name}:weight").astype(np.float32)
            X = ev.tensor(ev.layers[name]["input"]).astype(np.float64)
            res = gptq(W, hs[name], q)
            Qg = res.weight.astype(np.float64)
            Qr = rtn(W, q).astype(np.float64)
            Y = X @ W.T.astype(np.float64)
            per_seq = lambda M: np.sum(M.reshape(S, L, -1) ** 2, axis=(1, 2))  # noqa: E731
            sig = per_seq(Y)
            n_r, n_g = per_seq(Y - X @ Qr.T), per_seq(Y - X @ Qg.T)
            ir, ig = bootstrap(stat, sig, n_r), bootstrap(stat, sig, n_g)
            d = paired_difference(stat, (sig, n_g), (sig, n_r))
            print(f"| {name} | {spec} | {ir.text()} | {ig.text()} | {d.text()} | "
                  f"{int(res.fallback.sum())}/{W.shape[0]} |", flush=True)
    if a.all_layers:
        _all_layers(a, model, tok)


def _all_layers(a, model, tok) -> None:
    """Every Linear layer: calibration Hessians (hooks, cached), eval second moments (hooks), the
    eval layer-output SQNR of RTN and GPTQ as point estimates."""
    from fmtlab.methods.gptq import collect_hessians, input_moments, weight_quantizer
    from fmtlab.models.loading import cache_dir
    from fmtlab.models.record import find_linear_layers
    from fmtlab.sim.data import default_texts
    from fmtlab.sim.gptq import gptq, hessian_error, prepare_hessian, rtn

    hcal = collect_hessians(model, tok, seq_len=a.seq_len, n_sequences=a.n_sequences,
                            cache_dir=os.path.join(cache_dir(), "hessians"))
    print(f"calibration Hessians: {a.n_sequences} x {a.seq_len} 'calib' tokens", flush=True)
    mev = input_moments(model, tok, default_texts("eval"), seq_len=a.seq_len, n_sequences=a.all_eval_sequences)
    print(f"eval second moments: {a.all_eval_sequences} x {a.seq_len} 'eval' tokens", flush=True)
    for spec in a.quantizers.split(","):
        q = weight_quantizer(spec)
        better, rows, prep, fb, nrows, fb_layers = 0, [], {}, 0, 0, 0
        for name, mod, _ in find_linear_layers(model):
            W = mod.weight.detach().float().numpy()
            He = mev[name].hessian()
            H = hcal[name]
            if id(H) not in prep:
                prep = {id(H): prepare_hessian(H)}
            sig = hessian_error(W, np.zeros_like(W), He)
            res = gptq(W, prep[id(H)], q)
            fb, nrows, fb_layers = fb + int(res.fallback.sum()), nrows + W.shape[0], fb_layers + bool(res.fallback.any())
            eg = hessian_error(W, res.weight, He)
            er = hessian_error(W, rtn(W, q), He)
            better += eg < er
            rows.append((name, 10 * math.log10(sig / er), 10 * math.log10(sig / eg)))
            if name in LAYERS:
                print(f"   {spec} {name}: RTN {rows[-1][1]:.2f} dB, GPTQ {rows[-1][2]:.2f} dB", flush=True)
        print(f"{spec}: rows that kept RTN (lower calibration error): {fb}/{nrows} in {fb_layers}/{len(rows)} layers",
              flush=True)
        gains = np.array([g - r for _, r, g in rows])
        print(f"{spec}: GPTQ lowers the eval layer-output error on {better}/{len(rows)} layers; "
              f"SQNR gain median {np.median(gains):.2f} dB, min {gains.min():.2f} dB "
              f"({rows[int(np.argmin(gains))][0]}), max {gains.max():.2f} dB", flush=True)
        for name, r, g in sorted(rows, key=lambda r: r[2] - r[1])[:5]:
            print(f"   smallest gains: {name}: RTN {r:.2f} dB, GPTQ {g:.2f} dB", flush=True)


if __name__ == "__main__":
    main()
