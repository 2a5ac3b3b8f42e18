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
cheaper (one pass). Per batch X^T X is a float32 matmul, summed in float64.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats.quantizer import Quantizer
from fmtlab.models.record import find_linear_layers
from fmtlab.sim.gptq import GPTQResult, gptq, prepare_hessian
from fmtlab.sim.hessian import HessianAccumulator, HessianCache, calibration_key
from fmtlab.sim.quant import resolve
from fmtlab.sim.safetensors_io import SafetensorsFile, write_safetensors

__all__ = ["collect_hessians", "input_moments", "weight_quantizer", "fit_weights", "apply_weights", "save_weights",
           "load_weights", "WEIGHT_METHODS"]

#: weight methods of fit_weights (AWQ lives in fmtlab.methods.awq and plugs in here)
WEIGHT_METHODS = ("rtn", "gptq", "awq", "awq+gptq")


def _layer_weight(mod, op: str) -> np.ndarray:
    w = mod.weight.detach().float().cpu().numpy()
    return np.ascontiguousarray(w.T if op == "conv1d" else w)


def collect_hessians(model, tokenizer, texts: Sequence[str] | None = None, *, seq_len: int = 256,
                     n_sequences: int = 32, batch_size: int = 8, layers: Any = None,
                     cache_dir: str | os.PathLike | None = None, model_key: str | None = None,
                     split: str = "calib", progress: bool = False) -> dict[str, np.ndarray]:
    """{layer name: H [in, in] float64} of every Linear-like layer (``layers`` as in ``record``)
    over ``n_sequences`` windows of ``seq_len`` tokens of ``texts`` (default: the ``split`` texts,
    "calib"; "eval" is refused: scored text never calibrates). With ``cache_dir`` the Hessians are
    read from / written to a :class:`~fmtlab.sim.hessian.HessianCache` keyed on (``model_key`` or
    the model's class and config, the calibration data description)."""
    from fmtlab.sim.data import default_texts

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
        mk = model_key or _model_key(model)
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

    from fmtlab.sim.data import token_windows

    lin = find_linear_layers(model, layers)
    if not lin:
        raise FmtlabError("no Linear-like layer selected")
    windows, _ = token_windows(tokenizer, texts, seq_len, n_sequences)
    acc: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose accumulator it shares
    seen: dict[int, tuple[Any, str]] = {}  # id -> (tensor, layer): the tensor is held so its id stays unique
    handles = []

    def make_hook(name: str, in_f: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            first = seen.get(id(x))
            if first is not None and first[1] != name:
                owner.setdefault(name, first[1])
                return
            seen[id(x)] = (x, name)
            owner.setdefault(name, name)
            x2 = x.detach().reshape(-1, in_f).float()
            xtx = (x2.T @ x2).double().cpu().numpy()
            acc.setdefault(name, HessianAccumulator(in_f)).add_xtx(xtx, x2.shape[0])
        return hook

    for name, mod, op in lin:
        in_f = mod.weight.shape[0] if op == "conv1d" else mod.weight.shape[1]
        handles.append(mod.register_forward_hook(make_hook(name, int(in_f)), with_kwargs=True))
    fwd = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                ids = torch.tensor(windows[start:start + batch_size], dtype=torch.long)
                seen.clear()
                model(input_ids=ids, attention_mask=torch.ones_like(ids), **fwd)
                if progress:
                    print(f"moments: {min(start + batch_size, len(windows))}/{len(windows)} sequences", flush=True)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, _, _ in lin:
        src_name = owner.get(name)
        if src_name is None or src_name not in acc:
            raise FmtlabError(f"layer {name} was not run by the model's forward pass")
        out[name] = acc[src_name]
    return out


def _texts_digest(texts: Sequence[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _model_key(model) -> str:
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    n = sum(int(p.numel()) for p in model.parameters())
    import hashlib

    p0 = next(iter(model.parameters())).detach().float().cpu().numpy()
    return f"{type(model).__name__}:{d.get('model_type')}:{n}:{hashlib.sha256(p0.tobytes()).hexdigest()[:12]}"


def weight_quantizer(spec: Any) -> Quantizer:
    """The fmtlab Quantizer of a weight spec (preset name, Quantizer); raises for anything else
    (GPTQ needs the quantizer's scales and element rounding, not an opaque callable)."""
    qf = resolve(spec)
    if not isinstance(qf.obj, Quantizer):
        raise FmtlabError(f"weight spec {spec!r} is not an fmtlab Quantizer; GPTQ / AWQ need one")
    return qf.obj


def fit_weights(model, weights: Any, hessians: Mapping[str, np.ndarray] | None = None, *,
                method: str = "gptq", layers: Any = None, block_size: int = 128, damp: float = 0.01,
                act_order: bool = False, static_groups: bool = False,
                log: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """{layer name: fitted float32 weight [out, in]} for ``method`` "rtn" (the quantizer's
    fake-quant) or "gptq" (needs ``hessians`` for every layer). The output head is skipped."""
    q = weight_quantizer(weights)
    if method not in ("rtn", "gptq"):
        raise FmtlabError(f"fit_weights: method must be 'rtn' or 'gptq' here, got {method!r} "
                          "(AWQ: fmtlab.methods.awq)")
    out = {}
    t0 = time.perf_counter()
    prepared: dict[int, Any] = {}  # id(H) -> PreparedHessian: q/k/v and gate/up share one factor
    for name, mod, op in find_linear_layers(model, layers):
        W = _layer_weight(mod, op)
        if method == "rtn":
            out[name] = q.fake_quantize(W)
            continue
        if hessians is None or name not in hessians:
            raise FmtlabError(f"gptq needs the Hessian of layer {name}")
        H = hessians[name]
        if id(H) not in prepared:
            prepared = {id(H): (H, prepare_hessian(H, damp, act_order))}  # inputs come in layer order
        res: GPTQResult = gptq(W, prepared[id(H)][1], q, block_size=block_size, damp=damp,
                               act_order=act_order, static_groups=static_groups)
        out[name] = res.weight
    log(f"{method}: {len(out)} layers under {q} in {time.perf_counter() - t0:.1f} s")
    return out


def apply_weights(model, fitted: Mapping[str, np.ndarray], *, inplace: bool = False):
    """``model`` (a deep copy unless ``inplace``) with each named layer's weight replaced by the
    fitted float32 weight (nn.Linear layout; Conv1D transposed back)."""
    import copy

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
