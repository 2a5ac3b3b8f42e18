"""Numerical sensitivity (issue 24, item 6). Run: python benchmarks/numerical_sensitivity.py

Item 6: the same W8A8 per-token config through a second arithmetic: the whole model (and so the
quantizer's x / s and rounding) in float64 instead of float32; and exact int32 sums (accumulator)."""
import sys, time
import numpy as np
import torch
sys.path.insert(0, "benchmarks")
from ppl_beyond_linear import eval_ids
from fmtlab.models.loading import load_model
from fmtlab.pytorch import evaluate_perplexity, quantize_model
from fmtlab.sim.stats import bootstrap, paired_difference, perplexity_of
torch.set_num_threads(1)
model, tok = load_model("smollm2"); model.eval()
ids = eval_ids(tok, 4, 256)
kw = dict(weights="int8_per_channel", activations="int8_per_token")
res = {}
for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
    qm, _ = quantize_model(model.to(dtype), **kw)  # quantize_model copies the model; .to is in place
    t = time.perf_counter()
    r = evaluate_perplexity(qm, ids, progress=False)
    nll = np.array(r.seq_nll); toks = np.full(len(nll), r.seq_len - 1)
    res[name] = (nll, toks)
    iv = bootstrap(perplexity_of, nll, toks)
    print(f"W8A8 per-token, model in {name}: ppl {r.ppl:.4f} [{iv.lo:.4f}, {iv.hi:.4f}] {time.perf_counter() - t:.0f} s", flush=True)
d = paired_difference(perplexity_of, res["float64"], res["float32"])
print(f"float64 - float32: {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] ({100 * d.value / perplexity_of(*res['float32']):+.2f}%)")
