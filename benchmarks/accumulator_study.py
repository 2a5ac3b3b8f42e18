"""The accumulator in the accuracy path on SmolLM2 (issue 24): perplexity per accumulator, where the
dot products overflow, and the agreement of the emulation with the bit-accurate datapath.

Run:  python benchmarks/accumulator_study.py [--windows 4] [--seq-len 256] [--accs int32,int24,...]

1. Perplexity (held-out text as benchmarks/ppl_beyond_linear.py; 95% bootstrap intervals and the
   paired difference to the first accumulator) of W8A8 (int8 per channel x int8 per token) under
   each integer accumulator, and of FP8 E4M3 (per channel x per token) under float accumulators;
   the share of overflowing dot products over all layers (``QuantLinear.acc_counts``).
2. Where int16 overflows: on the float model's Linear inputs of one window, every layer's output
   under int16 equals the int32 output exactly where no dot product overflows, and differs
   where one does (counts printed).
3. Agreement with ``fmtlab.hw.datapath.dot`` on sampled rows of real layers (64 tokens x 32 outputs
   of 4 layers): int16 / int16_sat / int20 on W8A8 codes and bf16 / fp16 / hopper_fp8_mma on FP8
   codes, k = 1: bit-equal values and overflow flags (counts of mismatches printed).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

W8A8 = {"weights": "int8_per_channel", "activations": "int8_per_token"}
FP8 = {"weights": "fp8_e4m3_per_channel", "activations": "fp8_e4m3_per_token"}


def _ppl(model, ids, kw, acc, base_nll=None):
    from fmtlab.pytorch import QuantLinear, evaluate_perplexity, quantize_model
    from fmtlab.sim.stats import bootstrap, paired_difference, perplexity_of

    qm, _ = quantize_model(model, **kw, accumulator=acc)
    t0 = time.perf_counter()
    r = evaluate_perplexity(qm, ids, progress=False)
    dt = time.perf_counter() - t0
    nll = np.array(r.seq_nll)
    toks = np.full(len(nll), r.seq_len - 1)
    iv = bootstrap(perplexity_of, nll, toks)
    counts = np.array([m.acc_counts for m in qm.modules() if isinstance(m, QuantLinear)]) if acc else None
    share = "" if counts is None else f"  overflowing dot products {counts[:, 0].sum()}/{counts[:, 1].sum()} " \
        f"({counts[:, 0].sum() / counts[:, 1].sum():.2e}; layers with any: {(counts[:, 0] > 0).sum()}/{len(counts)})"
    diff = ""
    if base_nll is not None:
        d = paired_difference(perplexity_of, (nll, toks), (base_nll, toks))
        diff = f"  vs first: {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
    print(f"  {str(acc):16s} ppl {r.ppl:9.4f} [{iv.lo:.4f}, {iv.hi:.4f}]{diff}  {dt:6.1f} s{share}", flush=True)
    return nll


def _layer_inputs(model, ids):
    import torch

    from fmtlab.pytorch.model import linear_kind

    acts, hooks = {}, []
    for n, m in model.named_modules():
        if linear_kind(m) == "linear" and "lm_head" not in n:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: acts.__setitem__(n, inp[0][0].detach().float().numpy().copy())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return acts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--accs", default="int32,int24,int20,int18,int16,int16_sat")
    p.add_argument("--float-accs", default="fp32_k32,bf16_k32,fp16_k32")
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--skip-int", action="store_true", help="part 1 without the W8A8 integer accumulators")
    p.add_argument("--skip-rows", action="store_true", help="only part 1")
    args = p.parse_args(argv)
    import torch

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from ppl_beyond_linear import eval_ids

    from fmtlab.formats import get_quantizer
    from fmtlab.hw.datapath import dot
    from fmtlab.models.loading import load_model
    from fmtlab.sim.accumulate import accumulate, accumulated_matmul, operand

    torch.set_num_threads(1)
    model, tok = load_model("smollm2")
    model.eval()
    ids = eval_ids(tok, args.windows, args.seq_len)
    if not args.skip_ppl:
        print(f"# 1. perplexity, {ids.shape[0]} x {ids.shape[1]} held-out tokens; W8A8 (int8 per channel x per token)")
        base = None
        for acc in ([] if args.skip_int else [None] + args.accs.split(",")):
            nll = _ppl(model, ids, W8A8, acc, base)
            base = nll if base is None else base
        print("# FP8 E4M3 (per channel x per token)")
        base = None
        for acc in [None] + args.float_accs.split(","):
            nll = _ppl(model, ids, FP8, acc, base)
            base = nll if base is None else base

    if args.skip_rows:
        return 0
    print("# 2. int16 vs int32 on the float model's Linear inputs (window 0), all layers")
    acts = _layer_inputs(model, ids[:1])
    qa, qw = get_quantizer("int8_per_token"), get_quantizer("int8_per_channel")
    mods = dict(model.named_modules())
    tot = {"dots": 0, "ovf": 0, "diff": 0, "diff_no_ovf": 0, "ovf_same": 0}
    worst = []
    for n, x in acts.items():
        w = mods[n].weight.detach().float().numpy()
        wo = operand(qw, w)
        y32, o32 = accumulated_matmul(x, w, qa, None, "int32", w_operand=wo)
        y16, o16 = accumulated_matmul(x, w, qa, None, "int16", w_operand=wo)
        assert not o32.any()
        d = y16 != y32
        tot["dots"] += d.size
        tot["ovf"] += int(o16.sum())
        tot["diff"] += int(d.sum())
        tot["diff_no_ovf"] += int((d & ~o16).sum())
        tot["ovf_same"] += int((o16 & ~d).sum())
        worst.append((int(o16.sum()), n))
    print(f"  {tot['dots']} dot products: int16 overflows {tot['ovf']}, outputs differ from int32 at {tot['diff']}; "
          f"differ without overflow: {tot['diff_no_ovf']}; overflow without a difference: {tot['ovf_same']}")
    worst.sort(reverse=True)
    print("  most overflowing layers: " + ", ".join(f"{n} ({c})" for c, n in worst[:5]))

    print("# 3. k = 1 emulation vs fmtlab.hw.datapath.dot on sampled rows (64 tokens x 32 outputs)")
    rng = np.random.default_rng(0)
    layers = [n for _, n in worst[:2]] + [n for n in acts if n.endswith("model.layers.0.mlp.down_proj")][:1] \
        + [n for n in acts if n.endswith("model.layers.29.self_attn.q_proj")][:1]
    fa, fw = get_quantizer("fp8_e4m3_per_token"), get_quantizer("fp8_e4m3_per_channel")
    for n in layers:
        x = acts[n]
        w = mods[n].weight.detach().float().numpy()
        rows = np.sort(rng.choice(x.shape[0], 64, replace=False))
        cols = np.sort(rng.choice(w.shape[0], 32, replace=False))
        xs, ws = x[rows], w[cols]
        parts = []
        for (qx, qwt, fmt, accs) in ((qa, qw, "int8", ("int16", "int16_sat", "int20")),
                                     (fa, fw, "fp8_e4m3", ("bf16", "fp16", "hopper_fp8_mma"))):
            # codes of the whole sequence's scales (dynamic per token: a row's scale is its own)
            cx = qx.quantize(x).codes[rows]
            cw = qwt.quantize(w).codes[cols]
            xo = operand(qx, x)
            wo = operand(qwt, w)
            xo = type(xo)(xo.values[rows], xo.row_scale[rows], xo.integer)
            wo = type(wo)(wo.values[cols], wo.row_scale[cols], wo.integer)
            W = np.broadcast_to(cw[None], (len(rows),) + cw.shape)
            X = np.broadcast_to(cx[:, None], (len(rows), len(cols), cx.shape[1]))
            for acc in accs:
                r = accumulate(xo, wo, acc)
                ref = dot(W, X, fmt, fmt, acc)
                bad_v = int((r.acc.view(np.int64) != ref.value.view(np.int64)).sum())
                if acc.startswith("int") and not acc.endswith("_sat"):
                    lo, hi = -(2.0 ** (int(acc[3:]) - 1)), 2.0 ** (int(acc[3:]) - 1)
                    want = (ref.exact < lo) | (ref.exact >= hi)
                else:
                    want = ref.overflows > 0
                bad_o = int((r.overflow != want).sum())
                parts.append(f"{acc}: {bad_v} value / {bad_o} overflow-flag mismatches, {int(r.overflow.sum())} ovf")
        print(f"  {n} (K={x.shape[1]}, {len(rows) * len(cols)} dots): " + "; ".join(parts), flush=True)
    del xs, ws
    return 0


if __name__ == "__main__":
    sys.exit(main())
