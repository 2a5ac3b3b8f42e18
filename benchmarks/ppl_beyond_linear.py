"""Perplexity beyond the Linear layers: KV cache and attention formats on SmolLM2 (issue 24).

Run:  python benchmarks/ppl_beyond_linear.py [--configs fp32,kv_int8_token,...] [--windows 4] [--seq-len 256]

Held-out text: the last 8 articles of at least 2,000 characters of gensim's Wikipedia sample
(the "eval" half of ``fmtlab.sim.data``), cut into ``--windows`` x ``--seq-len`` token windows.
Static KV scales (``@static`` configs) are calibrated on the first 8 windows of 256 tokens of the
calibration split (``default_texts("calib")``), disjoint from the scored text. Prints one line per
config: perplexity, its 95% bootstrap interval over windows (``fmtlab.sim.stats``, seed 0) and the
seconds of the evaluation (wall clock, shared machine); after the first config, the paired
difference of perplexity to the first config with its 95% interval (same windows resampled).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

#: name -> quantize_model keyword arguments
CONFIGS: dict[str, dict] = {
    "fp32": {},
    "kv_int8_token": {"kv_cache": "int8_sym_per_token"},
    "kv_int4_token": {"kv_cache": "int4_sym_per_token"},
    "kv_int4_token_asym": {"kv_cache": "int4_per_token_asym"},
    "kv_fp8_tensor": {"kv_cache": "fp8_e4m3_per_tensor"},
    "kv_fp8_tensor_static": {"kv_cache": "fp8_e4m3_per_tensor@static"},
    "kv_kivi4": {"kv_cache": "kivi4"},
    "kv_nvfp4": {"kv_cache": "nvfp4"},
    "w8a8": {"weights": "int8_per_channel", "activations": "int8_per_token"},
    "w8a8_kv8": {"weights": "int8_per_channel", "activations": "int8_per_token", "kv_cache": "int8_sym_per_token"},
    "w8a8_kv4": {"weights": "int8_per_channel", "activations": "int8_per_token", "kv_cache": "int4_sym_per_token"},
    "w8a8_kvfp8": {"weights": "int8_per_channel", "activations": "int8_per_token",
                   "kv_cache": "fp8_e4m3_per_tensor"},
    "attn_fp8": {"attention": "fp8_fa3"},
    "attn_sage": {"attention": "sage_int8_fp8"},
    "attn_mxfp8": {"attention": "mxfp8"},
    "w8a8_attn_fp8": {"weights": "int8_per_channel", "activations": "int8_per_token", "attention": "fp8_fa3"},
}
DEFAULT = "fp32,kv_int8_token,kv_int4_token,kv_fp8_tensor,attn_fp8"


def eval_ids(tokenizer, windows: int, seq_len: int):
    import torch

    from fmtlab.sim.data import _wiki_articles, token_windows

    texts = [a for a in _wiki_articles() if len(a) >= 2000][-8:]
    wins, _ = token_windows(tokenizer, texts, seq_len, windows)
    return torch.tensor(wins, dtype=torch.long)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=DEFAULT)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from fmtlab.models.loading import load_model
    from fmtlab.pytorch import calibrate, evaluate_perplexity, quantize_model
    from fmtlab.sim.data import default_texts
    from fmtlab.sim.stats import bootstrap, paired_difference, perplexity_of

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2")
    model.eval()
    ids = eval_ids(tok, args.windows, args.seq_len)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    print(f"# SmolLM2-135M, {ids.shape[0]} x {ids.shape[1]} held-out tokens (last 8 wiki articles >= 2000 chars)")
    base = None
    for name in names:
        kw = CONFIGS[name]
        qm, _ = quantize_model(model, **kw) if kw else (model, None)
        if "@static" in str(kw.get("kv_cache", "")):
            calibrate(qm, default_texts("calib"), tok, seq_len=256, n_sequences=8)
        t0 = time.perf_counter()
        r = evaluate_perplexity(qm, ids, progress=False, batch_size=4)
        dt = time.perf_counter() - t0
        nll = np.array(r.seq_nll)
        toks = np.full(len(nll), r.seq_len - 1)
        iv = bootstrap(perplexity_of, nll, toks)
        diff = ""
        if base is None:
            base = (nll, toks)
        else:
            d = paired_difference(perplexity_of, (nll, toks), base)
            diff = f"  vs {names[0]}: {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
        print(f"{name:22s} ppl {r.ppl:8.4f}  95% CI [{iv.lo:.4f}, {iv.hi:.4f}]{diff}  {dt:6.1f} s  {kw}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
