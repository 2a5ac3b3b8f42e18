"""End-to-end check: perplexity of a causal LM under W/A fake quantization, per replay config.

Every Linear-like layer except the output head (embeddings and norms stay fp32) is swapped, for
the duration of the evaluation, for a :class:`SimLinear` that computes the layer with the *same*
numpy quantizers and transforms as :func:`fmtlab.sim.replay.replay`, under the same protocol:

* dynamic scales and dynamic transforms see one sequence (one batch element) at a time, so the
  logits of a sequence do not depend on the batch it is evaluated in (the layer's GEMM, and the
  output head's, run per sequence too);
* static activation scales (``act_calib``) and fitted transforms (SmoothQuant, AQAS) are fitted
  per layer on the inputs recorded in a *calibration* trace (``calib=``, recorded on the "calib"
  texts, disjoint from the "eval" texts scored here); such configs without ``calib`` raise.

Perplexity is exp(total NLL / predicted tokens) over fixed windows of the held-out ``"eval"``
texts; the per-sequence NLL sums are returned too, for bootstrap intervals (:mod:`fmtlab.sim.stats`).

:func:`rank_agreement` compares the configs' perplexity order with the order of a replay metric
(by default the pooled layer-output SQNR over all Linear layers) and lists the disagreeing pairs.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.models.record import find_linear_layers
from fmtlab.pytorch.kv_prefix import kv_prefix_attached
from fmtlab.sim.accumulate import accumulated_matmul, operand
from fmtlab.sim.blas_threads import blas_threads
from fmtlab.sim.data import default_texts, token_windows
from fmtlab.sim.quant import QuantFn
from fmtlab.sim.replay import make_config
from fmtlab.sim.replay_engine import Resolved, fit_layer, needs_calibration, resolve_config
from fmtlab.sim.trace import open_trace
from fmtlab.sim.transform_base import Context, Decomposition, linear_input_map
from fmtlab.sim.transforms import Hadamard


def _torch_module_base():
    import torch

    return torch.nn.Module


class SimLinear(_torch_module_base()):
    """A Linear-like layer computed per sequence with numpy quantizers (see the module doc).

    ``w`` is the weight in nn.Linear layout [out, in]; ``bias`` a torch tensor or None. ``ft`` is
    the (already fitted) transform, ``aq``/``wq`` the activation/weight quantizers.

    ``gemm``: where the float32 GEMMs of a layer without a transform or with the Hadamard rotation
    run. ``"torch"`` (default; torch's BLAS, on torch's threads): the quantizers and W' are replay's,
    but X R and the output GEMM sum in another order than numpy's, so X R differs from replay's by
    at most twice the float32 GEMM error bound, 2 gamma_K sum_k |x_k| |r_kj| (gamma_K = K u / (1 - K u),
    u = 2^-24), and an activation code differs only where X R lies that close to a rounding boundary
    (tests/models/test_simlinear_hadamard.py). ``"numpy"``: the Hadamard layer output is replay's,
    bit for bit (other transforms always compute in numpy, as replay does).
    """

    def __init__(self, w: np.ndarray, bias, ft, aq: QuantFn, wq: QuantFn, hp_dtype: Any, name: str = "",
                 accumulator: Any = None, gemm: str = "torch"):
        super().__init__()
        if gemm not in ("torch", "numpy"):
            raise FmtlabError(f"SimLinear gemm must be 'torch' or 'numpy', got {gemm!r}")
        self.gemm = gemm
        self.r_torch = None
        self.accumulator = accumulator  # fmtlab.sim.accumulate: dot products as this accumulator computes them
        self.w_op = None
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.bias_t = None if bias is None else bias.detach().to("cpu", copy=True)
        self.ft, self.aq, self.wq, self.hp_dtype, self.layer_name = ft, aq, wq, hp_dtype, name
        self.wq_fixed = None if ft is not None else wq(self.w)  # W' of a row-wise transform: see _seq
        # without a transform the GEMM runs in torch (float32, one sequence at a time)
        self.wq_torch = None if ft is not None or gemm != "torch" else torch_from(np.ascontiguousarray(self.wq_fixed.T))

    def _seq(self, xs: np.ndarray, out=None):
        """Layer output [S, N] of one sequence's rows xs [S, K] (GEMMs in torch without a transform
        and for the Hadamard rotation when ``gemm == "torch"``, else numpy)."""
        if self.ft is None and self.accumulator is not None:
            if self.w_op is None:
                self.w_op = operand(None if self.wq.identity else self.wq.obj, self.w)
            y, _ = accumulated_matmul(xs, self.w, None if self.aq.identity else self.aq.obj, None,
                                      self.accumulator, w_operand=self.w_op)
            return torch_from(y)
        if self.ft is None and self.gemm == "torch":
            return _mm(torch_from(self.aq(xs)), self.wq_torch, out)
        if self.ft is None:
            return self.aq(xs) @ self.wq_fixed.T
        if type(self.ft) is Hadamard:  # X R per sequence; W R (and its quantization) once per layer
            r = self.ft.matrix(xs.shape[1])
            if self.wq_fixed is None:
                self.wq_fixed = self.wq(self.w @ r)  # = wq(decompose(x, w).w): the same W R product
            if self.gemm == "torch":  # no hp terms, no row scale: Y = Q_a(X R) Q_w(W R)^T
                if self.r_torch is None:
                    self.r_torch = torch_from(r)
                    self.wq_torch = torch_from(np.ascontiguousarray(self.wq_fixed.T))
                xr = (torch_from(xs) @ self.r_torch).numpy()
                return _mm(torch_from(self.aq(xr)), self.wq_torch, out)
            xr = xs @ r
            return Decomposition(xr, self.w).output(xq=self.aq(xr), wq=self.wq_fixed, hp_dtype=self.hp_dtype)
        ctx = Context(positions=np.arange(xs.shape[0]), act_q=None if self.aq.identity else self.aq,
                      weight_q=None if self.wq.identity else self.wq)
        d: Decomposition = self.ft.decompose(xs, self.w, ctx)
        if self.ft.weight_depends_on_x:
            wq = self.wq(d.w)
        else:  # W' = f(W) only (SmoothQuant, AQAS, Hadamard, ...): quantize once
            if self.wq_fixed is None:
                self.wq_fixed = self.wq(d.w)
            wq = self.wq_fixed
        return d.output(xq=self.aq(d.x), wq=wq, hp_dtype=self.hp_dtype)

    @property
    def writes_into_out(self) -> bool:
        """Whether :meth:`_seq` can write a sequence's output into a given torch slice (the torch
        GEMM paths: no transform, or the Hadamard rotation)."""
        return self.gemm == "torch" and (self.ft is None and self.accumulator is None
                                         or type(self.ft) is Hadamard)

    def forward(self, x):
        import torch

        shape = x.shape
        a = x.detach().to(torch.float32).cpu().numpy()
        a = a.reshape(1, *a.shape) if a.ndim == 2 else a.reshape(-1, shape[-2], shape[-1])
        if self.writes_into_out:  # each sequence's GEMM writes its slice: no stacking copy (the head's
            out = torch.empty(a.shape[0], a.shape[1], self.w.shape[0], dtype=torch.float32)  # 25 MB each)
            for b in range(a.shape[0]):
                self._seq(np.ascontiguousarray(a[b]), out=out[b])
        else:
            out = torch.stack([torch_from(y) if isinstance(y, np.ndarray) else y
                               for y in (self._seq(np.ascontiguousarray(a[b])) for b in range(a.shape[0]))])
        if self.bias_t is not None:
            out = out + self.bias_t.to(torch.float32)
        return out.reshape(*shape[:-1], out.shape[-1]).to(x.device, x.dtype)


def _mm(a, b, out=None):
    """a @ b (float32 torch), written into ``out`` when given (same kernel, same bits)."""
    import torch

    return a @ b if out is None else torch.matmul(a, b, out=out)


def torch_from(a: np.ndarray):
    """A float32 torch tensor sharing (or copying) ``a``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _calib_inputs(calib, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    layers = calib.layers
    if name not in layers or not layers[name].get("input"):
        raise FmtlabError(f"the calibration trace {calib.path} has no input of layer {name!r}; record it "
                          "with all Linear layers")
    x = np.ascontiguousarray(calib.tensor(layers[name]["input"]), dtype=np.float32)
    pos = calib.tensor("tokens:position") if "tokens:position" in calib.manifest["tensors"] else None
    pos = None if pos is None or len(pos) != x.shape[0] else np.asarray(pos, dtype=np.int64)
    return x, pos


@contextlib.contextmanager
def sim_quantized(model, config: Any, calib=None, per_sequence_head: bool = True,
                  gemm: str = "torch",
                  weight_fit: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None) -> Iterator[Any]:
    """Within the block, ``model``'s Linear-like layers are :class:`SimLinear` layers of ``config``.

    ``calib``: a trace (or path) recorded from this model on calibration text; required when the
    config has static scales or a fitted transform. The output head is kept in fp32 (computed per
    sequence when ``per_sequence_head``). The original modules are restored on exit. ``gemm``: see
    :class:`SimLinear` ("torch", or "numpy" for replay's Hadamard layer outputs bit for bit).

    ``weight_fit(layer, W', A) -> Q'`` (a config with a transform only, e.g. ``+gptq`` behind
    AQAS): after the layer's transform is fitted as usual, its quantized weight is Q' instead of
    the weight quantizer's RTN of W'; W' is the transformed weight and A the input map (X' = X A,
    :func:`fmtlab.sim.transform_base.linear_input_map`, which refuses transforms that are not one).

    numpy's OpenBLAS runs on one thread within the block (:func:`fmtlab.sim.blas_threads.blas_threads`):
    its GEMMs run inside torch's forward pass, and the two thread pools competing for the cores
    made fp32 perplexity 2.5x slower on 2 cores (issue 22).
    """
    with blas_threads(1):
        with _sim_quantized(model, config, calib, per_sequence_head, gemm, weight_fit) as m:
            yield m


@contextlib.contextmanager
def _sim_quantized(model, config: Any, calib, per_sequence_head: bool, gemm: str,
                   weight_fit: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None) -> Iterator[Any]:
    r: Resolved = resolve_config(make_config(config))
    cal = open_trace(calib) if calib is not None else None
    why = needs_calibration(r)
    if why and cal is None:
        raise FmtlabError(f"config {r.cfg.name!r} uses {why}: the perplexity check needs a calibration "
                          "trace (calib=...) recorded on calibration text")
    identity = r.wq.identity and r.aq.identity and r.transform is None and getattr(r.cfg, "accumulator", None) is None
    chosen = [] if identity else find_linear_layers(model)
    if per_sequence_head:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = {id(m): n for n, m in model.named_modules()}
        if head is not None and id(head) in names and type(head).__name__ == "Linear":
            chosen = chosen + [(names[id(head)], head, "head")]
    swapped = []
    try:
        for name, mod, op in chosen:
            w = mod.weight.detach().to("cpu").float().numpy()
            w = np.ascontiguousarray(w.T if op == "conv1d" else w)
            if op == "head":
                new = SimLinear(w, mod.bias, None, QuantFn("fp32", None), QuantFn("fp32", None), None, name,
                                gemm=gemm)
            else:
                xcal = cpos = None
                if why:
                    xcal, cpos = _calib_inputs(cal, name)
                ctx = Context(positions=cpos, act_q=None if r.aq.identity else r.aq,
                              weight_q=None if r.wq.identity else r.wq)
                ft, aq = fit_layer(r, w, xcal, ctx, f" (layer {name})")
                new = SimLinear(w, mod.bias, ft, aq, r.wq, r.hp_dtype, name, getattr(r.cfg, "accumulator", None),
                                gemm=gemm)
                if weight_fit is not None:
                    if ft is None:
                        raise FmtlabError(f"config {r.cfg.name!r}: weight_fit is for configs with a transform")
                    A, wt = linear_input_map(ft, w)
                    new.wq_fixed = np.ascontiguousarray(weight_fit(name, wt, A), np.float32)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            swapped.append((parent, attr, mod))
        yield model
    finally:
        for parent, attr, mod in reversed(swapped):
            setattr(parent, attr, mod)


def sequence_nll(model, ids, batch_size: int = 4, progress: bool = False, desc: str = "perplexity",
                 kv_prefix=None):
    """(per-sequence NLL sums [n] float64, predicted tokens per sequence [n]) of token ids [n, T];
    ``kv_prefix`` (a :class:`fmtlab.pytorch.kv_prefix.KVPrefix`): every window runs behind it."""
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise FmtlabError(f"batch_size must be >= 1, got {batch_size=}")
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise FmtlabError(f"token ids must be [sequences, >= 2 tokens], got shape {tuple(ids.shape)}")
    was_training = model.training
    model.eval()
    out = np.zeros(ids.shape[0], dtype=np.float64)
    try:
        with torch.no_grad(), kv_prefix_attached(model, kv_prefix):
            for start in tqdm(range(0, ids.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
                batch = ids[start:start + batch_size]
                res = model(batch)
                logits = res.logits if hasattr(res, "logits") else res
                logp = torch.log_softmax(logits[:, :-1].to(torch.float32), dim=-1)
                nll = -logp.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)
                out[start:start + batch.shape[0]] = nll.to(torch.float64).sum(dim=1).numpy()
    finally:
        model.train(was_training)
    return out, np.full(ids.shape[0], ids.shape[1] - 1, dtype=np.int64)


def eval_windows(tokenizer, seq_len: int = 256, n_sequences: int = 16, texts: Sequence[str] | None = None):
    """[n_sequences, seq_len] token ids from ``texts`` (default: the held-out "eval" split)."""
    import torch

    wins, _ = token_windows(tokenizer, list(texts) if texts is not None else default_texts("eval"),
                            seq_len, n_sequences)
    return torch.tensor(wins, dtype=torch.long)


def perplexity(model, tokenizer, config: Any = "fp32", *, texts: Sequence[str] | None = None,
               seq_len: int = 256, n_sequences: int = 16, batch_size: int = 4, progress: bool = True,
               ids=None, calib=None, kv_prefix=None,
               weight_fit: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Perplexity of ``model`` with ``config`` (a replay config / preset name) on held-out text.

    ``calib``: calibration trace for static scales / fitted transforms (see :func:`sim_quantized`).
    ``kv_prefix``: a KV prefix (CushionCache) every window runs behind; its tokens are not scored.
    ``weight_fit``: fitted weights in a transform's space (see :func:`sim_quantized`).
    Returns a dict: config, description, ppl, nll, tokens, seconds, seq_nll and seq_tokens (per
    sequence, for bootstrap intervals).
    """
    cfg = make_config(config)
    if ids is None:
        ids = eval_windows(tokenizer, seq_len, n_sequences, texts)
    t0 = time.perf_counter()
    with sim_quantized(model, cfg, calib, weight_fit=weight_fit) as qmodel:
        nll, tok = sequence_nll(qmodel, ids, batch_size=batch_size, progress=progress, desc=cfg.name,
                                kv_prefix=kv_prefix)
    total, count = float(nll.sum()), int(tok.sum())
    return {"config": cfg.name, "description": cfg.describe(), "ppl": math.exp(total / count),
            "nll": total / count, "tokens": count, "seconds": time.perf_counter() - t0,
            "seq_nll": nll.tolist(), "seq_tokens": tok.tolist()}


def perplexity_table(model, tokenizer, configs: Sequence[Any], **kw: Any) -> list[dict[str, Any]]:
    """:func:`perplexity` for each config on the same token windows."""
    ids = kw.pop("ids", None)
    if ids is None:
        ids = eval_windows(tokenizer, kw.pop("seq_len", 256), kw.pop("n_sequences", 16), kw.pop("texts", None))
    else:
        for k in ("seq_len", "n_sequences", "texts"):
            kw.pop(k, None)
    return [perplexity(model, tokenizer, c, ids=ids, **kw) for c in configs]


def ranks(values: Sequence[float]) -> np.ndarray:
    """0-based ranks of ``values`` (float64), ties given the average of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    out = np.empty(len(v))
    i = 0
    while i < len(v):  # average ranks over ties
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        out[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return out


def rank_agreement(ppl: dict[str, float], metric: dict[str, float], higher_is_better: bool = True) -> dict[str, Any]:
    """Spearman correlation between perplexity (lower better) and a replay metric, and the
    config pairs whose order the two disagree on. Configs missing from either side are skipped."""
    names = [n for n in ppl if n in metric and math.isfinite(ppl[n])]
    m = [metric[n] for n in names]
    m = [(1e9 if x == math.inf else x) for x in m]
    bad = -np.asarray(m, dtype=np.float64) if higher_is_better else np.asarray(m, dtype=np.float64)
    if len(names) < 2:
        return {"configs": names, "spearman": math.nan, "disagreements": []}
    rp, rm = ranks([ppl[n] for n in names]), ranks(bad)
    rho = float(np.corrcoef(rp, rm)[0, 1]) if np.std(rp) > 0 and np.std(rm) > 0 else math.nan
    dis = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            dp = np.sign(ppl[a] - ppl[b])
            dm = np.sign(bad[i] - bad[j])
            if dp != 0 and dm != 0 and dp != dm:
                dis.append((a, b))
    return {"configs": names, "spearman": rho, "disagreements": dis}
