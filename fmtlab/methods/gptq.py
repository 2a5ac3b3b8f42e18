"""GPTQ on a torch model: Hessians from forward hooks on calibration text, every Linear quantized
by :func:`fmtlab.sim.gptq.gptq`, fitted weights saved / reloaded as safetensors.

    hs = collect_hessians(model, tok)                         # "calib" texts, 32 x 256 tokens
    fitted = fit_weights(model, "int4_per_channel", hs, method="gptq")
    qmodel = apply_weights(model, fitted)                     # a copy with the fitted weights

Hessians (H = 2 X^T X / n, float64) come from ONE forward pass of the float model over the
calibration windows (the ``record`` convention: windows of exactly ``seq_len`` tokens of the
"calib" split, never the scored "eval" text); layers fed by the same tensor (q/k/v, gate/up)
share one accumulation. The reference implementation (IST-DASLab/gptq, llama.py) instead feeds
each block the outputs of the already quantized blocks before it ("sequential"); with float
inputs every layer is fitted independently, which is what a recorded trace can give and is
cheaper (one pass). Per batch X^T X is one float32 symmetric rank-k update (BLAS ssyrk), summed in
float64, on a worker thread while torch runs the forward (the output head is not run).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats.quantizer import Quantizer
from fmtlab.models.record import find_linear_layers
from fmtlab.sim.awq import awq
from fmtlab.sim.data import default_texts, token_windows
from fmtlab.sim.gptq import gptq, prepare_hessian
from fmtlab.sim.hessian import HessianAccumulator, HessianCache, calibration_key, trace_hessians
from fmtlab.sim.scale_search import searched_fake_quantize
from fmtlab.sim.quant import resolve
from fmtlab.sim.safetensors_io import SafetensorsFile, write_safetensors

__all__ = ["collect_hessians", "input_moments", "weight_quantizer", "fit_weights", "quantize_model",
           "apply_weights", "save_weights", "load_weights", "model_key", "WEIGHT_METHODS", "FittedWeights"]

#: weight methods of fit_weights / quantize_model
WEIGHT_METHODS = ("rtn", "gptq", "awq", "awq+gptq")


def _layer_weight(mod, op: str) -> np.ndarray:
    w = mod.weight.detach().float().cpu().numpy()
    return np.ascontiguousarray(w.T if op == "conv1d" else w)


def collect_hessians(model, tokenizer, texts: Sequence[str] | None = None, *, seq_len: int = 256,
                     n_sequences: int = 32, batch_size: int = 8, layers: Any = None,
                     cache_dir: str | os.PathLike | None = None, model_id: str | None = None,
                     split: str = "calib", progress: bool = False) -> dict[str, np.ndarray]:
    """{layer name: H [in, in] float64} of every Linear-like layer (``layers`` as in ``record``)
    over ``n_sequences`` windows of ``seq_len`` tokens of ``texts`` (default: the ``split`` texts,
    "calib"; "eval" is refused: scored text never calibrates). With ``cache_dir`` the Hessians are
    read from / written to a :class:`~fmtlab.sim.hessian.HessianCache` keyed on (``model_id`` or
    :func:`model_key`, the calibration data description)."""
    if split != "calib":
        raise FmtlabError(f"Hessians are calibration: split must be 'calib', got {split!r}")
    lin = find_linear_layers(model, layers)
    if not lin:
        raise FmtlabError("no Linear-like layer selected")
    src = "default:calib" if texts is None else "texts:" + _texts_digest(texts)
    if texts is None:
        texts = default_texts("calib")
    calib_desc = {"texts": src, "seq_len": seq_len, "n_sequences": n_sequences}
    cache = None
    if cache_dir is not None:
        mk = model_id or model_key(model)
        cache = HessianCache(cache_dir, calibration_key(mk, calib_desc))
        hit = {name: cache.get(name) for name, _, _ in lin}
        if all(v is not None for v in hit.values()):
            out, prev = {}, None
            for k, (H, _) in hit.items():  # shared inputs: one array again (one factor in fit_weights)
                prev = prev if prev is not None and prev.shape == H.shape and np.array_equal(prev, H) else H
                out[k] = prev
            return out
    moments = input_moments(model, tokenizer, texts, seq_len=seq_len, n_sequences=n_sequences,
                            batch_size=batch_size, layers=layers, progress=progress)
    out: dict[str, np.ndarray] = {}
    made: dict[int, np.ndarray] = {}  # layers sharing an input share one array (and its factor)
    for name, acc in moments.items():
        if id(acc) not in made:
            made[id(acc)] = acc.hessian()
        out[name] = made[id(acc)]
        if cache is not None:
            cache.put(name, out[name], acc.n)
    return out


def input_moments(model, tokenizer, texts: Sequence[str], *, seq_len: int = 256, n_sequences: int = 32,
                  batch_size: int = 8, layers: Any = None, progress: bool = False) -> dict[str, HessianAccumulator]:
    """{layer name: HessianAccumulator of its inputs} over windows of ``texts`` (no split check:
    :func:`collect_hessians` is the calibration entry; scoring uses these on "eval" text, where
    ||X W^T - X Q^T||^2 = tr((W - Q) X^T X (W - Q)^T)). Layers sharing an input share the object."""
    import torch  # lazy: torch model side

    lin = find_linear_layers(model, layers)
    if not lin:
        raise FmtlabError("no Linear-like layer selected")
    windows, _ = token_windows(tokenizer, texts, seq_len, n_sequences)
    acc: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose accumulator it shares
    seen: dict[int, tuple[Any, str]] = {}  # id -> (tensor, layer): the tensor is held so its id stays unique
    handles = []
    # the rank-k updates run on one worker thread (BLAS releases the GIL) while torch runs the
    # forward: FIFO, so the float64 sums are added in one fixed order; at most 16 batches queued
    pool = ThreadPoolExecutor(max_workers=1)
    pending: deque = deque()

    def make_hook(name: str, in_f: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            first = seen.get(id(x))
            if first is not None and first[1] != name:
                owner.setdefault(name, first[1])
                return
            seen[id(x)] = (x, name)
            owner.setdefault(name, name)
            x2 = x.detach().reshape(-1, in_f).float().cpu().numpy().copy()
            a = acc.setdefault(name, HessianAccumulator(in_f))
            while len(pending) >= 16:
                pending.popleft().result()
            pending.append(pool.submit(a.add, x2))
        return hook

    for name, mod, op in lin:
        in_f = mod.weight.shape[0] if op == "conv1d" else mod.weight.shape[1]
        handles.append(mod.register_forward_hook(make_hook(name, int(in_f)), with_kwargs=True))
    fwd = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    runner = _body(model, [name for name, _, _ in lin])
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                ids = torch.tensor(windows[start:start + batch_size], dtype=torch.long)
                seen.clear()
                runner(input_ids=ids, attention_mask=torch.ones_like(ids), **fwd)
                if progress:
                    print(f"moments: {min(start + batch_size, len(windows))}/{len(windows)} sequences", flush=True)
        while pending:
            pending.popleft().result()
    finally:
        for h in handles:
            h.remove()
        pool.shutdown(wait=True, cancel_futures=True)
    out = {}
    for name, _, _ in lin:
        src_name = owner.get(name)
        if src_name is None or src_name not in acc:
            raise FmtlabError(f"layer {name} was not run by the model's forward pass")
        out[name] = acc[src_name]
    return out


def _body(model, names: Sequence[str]):
    """The module to run for the inputs of ``names``: the base model (no output head: the LM head
    is ~25% of SmolLM2's forward FLOPs and feeds no selected layer) when every name lies in it."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is not None and base is not model and all(n.startswith(prefix + ".") for n in names):
        return base
    return model


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def model_key(model) -> str:
    """A key of the model's identity: class, model type, parameter count and a SHA-256 of its
    first and last parameters (cheap; two checkpoints of one architecture differ there)."""
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    params = list(model.parameters())
    n = sum(int(p.numel()) for p in params)
    h = hashlib.sha256()
    for p in (params[0], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return f"{type(model).__name__}:{d.get('model_type')}:{n}:{h.hexdigest()[:12]}"


def weight_quantizer(spec: Any) -> Quantizer:
    """The fmtlab Quantizer of a weight spec (preset name, Quantizer); raises for anything else
    (GPTQ needs the quantizer's scales and element rounding, not an opaque callable)."""
    qf = resolve(spec)
    if not isinstance(qf.obj, Quantizer):
        raise FmtlabError(f"weight spec {spec!r} is not an fmtlab Quantizer; GPTQ / AWQ need one")
    return qf.obj


def fit_weights(model, weights: Any, hessians: Mapping[str, np.ndarray] | None = None, *,
                method: str = "gptq", layers: Any = None, block_size: int = 128, damp: float = 0.01,
                act_order: bool = False, static_groups: bool = False, scale_search: str | None = None,
                n_grid: int = 20, log: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """{layer name: fitted float32 weight [out, in]} of every Linear-like layer (the output head
    skipped) under the weight quantizer ``weights``, by ``method``:

    "rtn": the quantizer's fake-quant (with ``scale_search``: its block scale search); "gptq":
    :func:`fmtlab.sim.gptq.gptq`; "awq" / "awq+gptq": :func:`fmtlab.sim.awq.awq` (alpha grid of
    ``n_grid``; the per-input-channel scale folded back into the weight). Every method but "rtn"
    needs ``hessians`` for every layer (:func:`collect_hessians`)."""
    q = weight_quantizer(weights)
    if method not in WEIGHT_METHODS:
        raise FmtlabError(f"fit_weights: method must be one of {WEIGHT_METHODS}, got {method!r}")
    gkw = dict(block_size=block_size, damp=damp, act_order=act_order, static_groups=static_groups,
               scale_search=scale_search)
    out = {}
    t0 = time.perf_counter()
    prepared: dict[int, Any] = {}  # id(H) -> PreparedHessian: q/k/v and gate/up share one factor
    for name, mod, op in find_linear_layers(model, layers):
        W = _layer_weight(mod, op)
        if method == "rtn":
            out[name] = searched_fake_quantize(W, q, scale_search) if scale_search else q.fake_quantize(W)
            continue
        if hessians is None or name not in hessians:
            raise FmtlabError(f"{method} needs the Hessian of layer {name}")
        H = hessians[name]
        if method == "gptq":
            if id(H) not in prepared:
                prepared = {id(H): (H, prepare_hessian(H, damp, act_order))}  # inputs come in layer order
            out[name] = gptq(W, prepared[id(H)][1], q, **gkw).weight
        else:
            out[name] = awq(W, H, q, n_grid=n_grid, method="gptq" if method == "awq+gptq" else "rtn",
                            **gkw if method == "awq+gptq" else {"scale_search": scale_search}).weight
    log(f"{method}: {len(out)} layers under {q} in {time.perf_counter() - t0:.1f} s")
    return out


def quantize_model(model, weights: Any = None, activations: Any = None, *, weight_method: str = "rtn",
                   calib: Any = None, tokenizer: Any = None, seq_len: int = 256, n_sequences: int = 32,
                   cache_dir: str | os.PathLike | None = None, fit_kw: Mapping[str, Any] | None = None,
                   **quantize_kw):
    """:func:`fmtlab.pytorch.quantize_model` with the weights fitted by ``weight_method``:

    "rtn" is that function itself; "gptq" / "awq" / "awq+gptq" fit every Linear weight under the
    quantizer ``weights`` on ``calib`` (a recorded calibration trace or its path: Hessians from
    its inputs; a sequence of texts, with ``tokenizer``; a {layer: Hessian} mapping; None: the
    "calib" texts), put the fitted weights into a copy of the model and fake-quantize only the
    activations (the weights are on the format's grid already). ``fit_kw`` go to
    :func:`fit_weights` (block_size, damp, act_order, static_groups, scale_search, n_grid);
    ``quantize_kw`` to :func:`fmtlab.pytorch.quantize_model`. Returns (model, summary)."""
    from fmtlab.pytorch import quantize_model as _quantize  # lazy: torch model side

    if weight_method == "rtn":
        return _quantize(model, weights, activations, **quantize_kw)
    if weights is None:
        raise FmtlabError(f"weight_method={weight_method!r} needs a weight quantizer (weights=...)")
    if isinstance(calib, Mapping):
        hs = calib
    elif isinstance(calib, (str, os.PathLike)) or hasattr(calib, "manifest"):
        hs = trace_hessians(calib)
    else:
        if tokenizer is None:
            raise FmtlabError("fitting weights on texts needs the tokenizer (tokenizer=...)")
        hs = collect_hessians(model, tokenizer, calib, seq_len=seq_len, n_sequences=n_sequences,
                              cache_dir=cache_dir)
    fitted = fit_weights(model, weights, hs, method=weight_method, **dict(fit_kw or {}))
    m = apply_weights(model, fitted)
    return _quantize(m, None, activations, inplace=True, **quantize_kw)


def apply_weights(model, fitted: Mapping[str, np.ndarray], *, inplace: bool = False):
    """``model`` (a deep copy unless ``inplace``) with each named layer's weight replaced by the
    fitted float32 weight (nn.Linear layout; Conv1D transposed back)."""
    import torch  # lazy: torch model side

    m = model if inplace else copy.deepcopy(model)
    mods = {name: (mod, op) for name, mod, op in find_linear_layers(m, None, include_head=True)}
    for name, w in fitted.items():
        if name not in mods:
            raise FmtlabError(f"no Linear-like layer {name!r} in the model")
        mod, op = mods[name]
        t = torch.from_numpy(np.ascontiguousarray(w.T if op == "conv1d" else w))
        if tuple(t.shape) != tuple(mod.weight.shape):
            raise FmtlabError(f"fitted weight of {name} has shape {tuple(t.shape)}, the layer {tuple(mod.weight.shape)}")
        with torch.no_grad():
            mod.weight.copy_(t.to(mod.weight.dtype))
    return m


def save_weights(path: str | os.PathLike, fitted: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write fitted weights as one safetensors file (atomic), ``meta`` (strings) in its metadata."""
    write_safetensors(os.fspath(path), {k: np.ascontiguousarray(v, np.float32) for k, v in fitted.items()},
                      {str(k): str(v) for k, v in meta.items()})


def load_weights(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> dict[str, np.ndarray] | None:
    """Fitted weights saved by :func:`save_weights`; None when the file is absent or its metadata
    differs from ``expect`` (a fit for other settings)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    f = SafetensorsFile(path)
    try:
        md = f.metadata or {}
        if expect is not None and any(md.get(str(k)) != str(v) for k, v in expect.items()):
            return None
        return {k: np.array(f.get(k), dtype=np.float32) for k in f.entries}
    finally:
        f.close()


class FittedWeights:
    """Fitted weights as a weight "quantizer" of a replay config: called with a layer's original
    float32 weight, it returns that layer's fitted weight (looked up by the SHA-256 of the
    original's bytes), so a config replays on traces of the float model with GPTQ / AWQ weights.
    A weight it was not fitted for raises FmtlabError (never a silent RTN); so does one whose
    bytes match two layers with different fits. ``name``: e.g. "int4_per_channel[gptq]"."""

    def __init__(self, fitted: Mapping[str, np.ndarray], originals: Mapping[str, np.ndarray], name: str):
        self.name = name
        self._by: dict[str, np.ndarray | None] = {}
        for layer, w in fitted.items():
            if layer not in originals:
                raise FmtlabError(f"FittedWeights: no original weight of layer {layer}")
            k = self._key(originals[layer])
            prev = self._by.get(k, ...)
            f = np.ascontiguousarray(w, np.float32)
            self._by[k] = f if prev is ... or (prev is not None and np.array_equal(prev, f)) else None

    @staticmethod
    def _key(w: np.ndarray) -> str:
        a = np.ascontiguousarray(w, np.float32)
        return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()

    def fake_quantize(self, w: np.ndarray) -> np.ndarray:
        k = self._key(w)
        if k not in self._by:
            raise FmtlabError(f"{self.name}: a weight of shape {np.shape(w)} that was not fitted (a trace of another "
                              "model, or a transform rewrote it)")
        f = self._by[k]
        if f is None:
            raise FmtlabError(f"{self.name}: two layers hold these weights with different fits")
        return f.copy()

    __call__ = fake_quantize

    def __repr__(self) -> str:
        return self.name
