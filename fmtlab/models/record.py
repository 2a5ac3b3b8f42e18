"""Record activations of a real model into a trace.

Forward hooks on every Linear-like layer (``torch.nn.Linear`` and GPT-2's ``Conv1D``) store the
layer input X [tokens, in_features], the output Y [tokens, out_features] and, once, the weight W in
nn.Linear layout [out_features, in_features] (Conv1D weights are transposed) and bias. Layers fed by
the same tensor object in one forward pass (q/k/v, gate/up) share one stored input. Options add the
residual stream after each block, the attention probabilities [sequences, heads, query, key] (the
model is switched to eager attention while recording), K/V (the key/value projection outputs,
before rotary embedding: statistics of the projections) and, with ``qkv=True``, what the attention
itself reads: per attention layer Q after RoPE [sequences, heads, tokens, head_dim] and the cache's
K and V after RoPE (Gemma 3: Q and K also after their q-/k-norm) [sequences, kv_heads, tokens,
head_dim], listed in the manifest's ``attention`` section with the layer's softmax scaling, logit
softcap and sliding window (:mod:`fmtlab.sim.attention_replay` replays them). Token rows are
ordered sequence-major: row = sequence * seq_len + position.

Sizes per sequence and attention layer (float32): Q heads x seq_len x head_dim x 4 bytes (as a
Linear input), K and V kv_heads x seq_len x head_dim x 4 each, P (``attention=True``) heads x
seq_len^2 x 4: SmolLM2-135M at seq_len 256 is 9 x 65,536 x 4 = 2.4 MB per layer, 71 MB per
sequence over its 30 layers (Q, K, V: 2.0 MB per sequence).

Sequences are consecutive windows of exactly ``seq_len`` tokens cut from the texts (no padding),
optionally each starting with a fixed ``prefix`` (counted in ``seq_len``), e.g. to study attention
sinks. Data go through a :class:`~fmtlab.sim.trace.TraceWriter` whose RAM buffer is capped at
``memory_limit`` bytes.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from fmtlab.errors import FmtlabError, compile_pattern
from fmtlab.models.loading import load_model, model_name
from fmtlab.models.source_grid import manifest_entry as source_grid_entry
from fmtlab.sim.data import default_texts, token_windows, window_start_info
from fmtlab.sim.trace import Trace, TraceWriter

LayerFilter = "str | Sequence[str] | Callable[[str, Any], bool] | None"
_KEY_TYPES = ("k_proj", "key", "k", "wk")
_VALUE_TYPES = ("v_proj", "value", "v", "wv")


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers without Conv1D
        return None
    return Conv1D


def linear_like(module) -> str | None:
    """``"linear"`` for nn.Linear, ``"conv1d"`` for GPT-2 Conv1D, else None."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return "linear"
    conv = _conv1d_class()
    if conv is not None and isinstance(module, conv):
        return "conv1d"
    return None


def find_blocks(model) -> list[tuple[str, Any]]:
    """The repeated transformer blocks: the longest ModuleList whose children share one class."""
    import torch

    best: list[tuple[str, Any]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > len(best):
            kids = list(mod)
            if kids and all(type(k) is type(kids[0]) for k in kids):
                best = [(f"{name}.{i}" if name else str(i), k) for i, k in enumerate(kids)]
    return best


def _block_of(name: str, block_names: Sequence[str]) -> tuple[int | None, str]:
    """(block index, layer type) of a module name; type = name without the block prefix."""
    for i, b in enumerate(block_names):
        if name.startswith(b + "."):
            return i, name[len(b) + 1:]
    return None, name


def find_linear_layers(model, layers: Any = None, include_head: bool = False) -> list[tuple[str, Any, str]]:
    """(name, module, op) for each Linear-like layer selected by ``layers``.

    ``layers`` is None (all), a regular expression searched in each name, a sequence of exact
    names, or a callable ``(name, module) -> bool``. The output head (``get_output_embeddings()``)
    is skipped unless ``include_head``.
    """
    head = None
    if not include_head and hasattr(model, "get_output_embeddings"):
        try:
            head = model.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            head = None
    out = []
    names = set(layers) if isinstance(layers, (list, tuple, set, frozenset)) else None
    pattern = compile_layers(layers) if isinstance(layers, str) else None
    for name, mod in model.named_modules():
        op = linear_like(mod)
        if op is None or mod is head:
            continue
        if names is not None and name not in names:
            continue
        if pattern is not None and not pattern.search(name):
            continue
        if callable(layers) and not layers(name, mod):
            continue
        out.append((name, mod, op))
    if names is not None:
        missing = names - {n for n, _, _ in out}
        if missing:
            raise FmtlabError(f"no Linear-like layer named {sorted(missing)[:5]}")
    return out


def compile_layers(pattern: str, option: str = "layers") -> "re.Pattern[str]":
    """``re.compile(pattern)``; FmtlabError naming ``option`` if it is not a valid regular expression."""
    return compile_pattern(pattern, option)


def context_length(model) -> int | None:
    """The model's maximum sequence length from its config (max_position_embeddings, n_positions, ...)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_seq_len(model, seq_len: int) -> None:
    """FmtlabError if ``seq_len`` exceeds the model's context length (positions beyond it are
    out of range for learned position tables and out of distribution for rotary ones)."""
    n = context_length(model)
    if n is not None and seq_len > n:
        raise FmtlabError(f"seq_len {seq_len} exceeds the model's context length {n}; use --seq-len <= {n}")


def _weight_linear_layout(module, op: str) -> np.ndarray:
    w = module.weight.detach().float().cpu().numpy()
    return np.ascontiguousarray(w.T if op == "conv1d" else w)


def _to_rows(t, width: int | None = None) -> np.ndarray:
    a = t.detach().float().cpu().clone().numpy()
    return a.reshape(-1, a.shape[-1] if width is None else width)


def _set_eager(model) -> Callable[[], None]:
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "_attn_implementation", None)
    if old in (None, "eager"):
        return lambda: None
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        return lambda: model.set_attn_implementation(old)
    cfg._attn_implementation = "eager"
    return lambda: setattr(cfg, "_attn_implementation", old)


def _attach_qkv_taps(model, blocks, block_names, state, put, attn_meta, with_probs: bool) -> Callable[[], None]:
    """Run ``model``'s attention through ``fmtlab_quant`` (the eager computation; a spec already
    attached stays, its taps see the float operands) with a tap per attention layer that stores
    Q, K, V (after RoPE, float32) and fills ``attn_meta``; returns the undo."""
    from fmtlab.pytorch.attention import TAP, _attention_modules, attach_attention  # lazy: torch

    if not blocks:
        raise FmtlabError("qkv=True but no repeated block list was found in the model")
    mods = _attention_modules(model)
    if not mods:
        raise FmtlabError(f"qkv=True: {type(model).__name__} has no transformers attention layers "
                          "(layer_idx, num_key_value_groups)")
    names = {id(m): n for n, m in model.named_modules()}
    own = "fmtlab_attention_prev" not in model.__dict__
    if own:
        attach_attention(model, "none")
    state["qkv_modules"] = [names[id(m)] for m in mods]
    state["qkv_done"] = set()

    def make_tap(lname: str):
        blk, _ = _block_of(lname, block_names)

        def tap(module, query, key, value, probs, scaling=None, softcap=None, **kwargs):
            if lname in state["qkv_done"]:
                return
            state["qkv_done"].add(lname)
            arrs = {r: t.detach().float().cpu().clone().numpy() for r, t in (("q", query), ("k", key), ("v", value))}
            for r, a in arrs.items():
                put(f"{lname}:attn_{r}", a, kind=f"attn_{r}", layer=lname)
            if state["first"]:
                sw = kwargs.get("sliding_window", getattr(module, "sliding_window", None))  # < 4.53: the attribute
                attn_meta[lname] = {
                    "block": blk, "q": f"{lname}:attn_q", "k": f"{lname}:attn_k", "v": f"{lname}:attn_v",
                    "probs": f"{lname}:attn_probs" if with_probs else None,  # the name record's P hook uses
                    "heads": int(arrs["q"].shape[1]), "kv_heads": int(arrs["k"].shape[1]),
                    "head_dim": int(arrs["q"].shape[3]), "scaling": float(scaling),
                    "softcap": None if softcap is None else float(softcap),
                    "sliding_window": int(sw) if isinstance(sw, int) and not isinstance(sw, bool) else None,
                    "layout": "sequences x heads x tokens x head_dim (q after RoPE; k, v: the cache's, kv heads)"}
        return tap

    for m in mods:
        m.__dict__[TAP] = make_tap(names[id(m)])

    def undo() -> None:
        for m in mods:
            m.__dict__.pop(TAP, None)
        if own:
            attach_attention(model, None)
    return undo


def _model_summary(model, tokenizer) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "vocab_size", "n_embd", "n_layer")
    return {"name": model_name(model), "class": type(model).__name__,
            "config": {k: getattr(cfg, k) for k in keys if isinstance(getattr(cfg, k, None), (int, str))},
            "tokenizer": type(tokenizer).__name__ if tokenizer is not None else None}


def record(model, tokenizer=None, texts: Sequence[str] | None = None, out: str | os.PathLike = "trace", *,
           seq_len: int = 128, n_sequences: int = 8, batch_size: int = 1, prefix: str | None = None,
           layers: Any = None, include_head: bool = False, inputs: bool = True, outputs: bool = True,
           weights: bool = True, residual: bool = False, attention: bool = False, kv: bool = False,
           qkv: bool = False, memory_limit: int = 256 << 20, max_bytes: int | None = None, overwrite: bool = False,
           progress: bool = True, text_info: dict[str, Any] | None = None, kv_prefix: Any = None,
           window_start: str = "request") -> Trace:
    """Run ``model`` on ``n_sequences`` windows of ``seq_len`` tokens from ``texts``; write a trace at ``out``.

    ``model`` may also be a name or path understood by :func:`fmtlab.models.loading.load_model`.
    ``texts`` defaults to :func:`fmtlab.sim.data.default_texts` ("calib" split). Returns the
    opened :class:`Trace`. ``kv_prefix`` (a :class:`fmtlab.pytorch.kv_prefix.KVPrefix`, e.g. a
    CushionCache): every window runs behind it and only the window's tokens are recorded (not with
    ``attention=True``). ``window_start``: "request" (default) frames each window as the tokenizer
    frames a request (Gemma's ``<bos>``; nothing for SmolLM2), "text" cuts bare text windows
    (:func:`fmtlab.sim.data.token_windows`); the manifest states which, and, for a GGUF model, each
    layer's stored weight type (``source_grid``). Raises FmtlabError when the texts are too short, no layer matches, or
    the estimated trace size exceeds ``max_bytes``.
    """
    import torch
    from tqdm.auto import tqdm

    if not isinstance(model, torch.nn.Module):
        model, tokenizer = load_model(model, tokenizer)
    if tokenizer is None:
        raise FmtlabError("record() needs the model's tokenizer")
    if batch_size < 1:
        raise FmtlabError(f"batch_size must be >= 1, got {batch_size=}")
    check_seq_len(model, seq_len + (kv_prefix.length if kv_prefix is not None else 0))
    if kv_prefix is not None and attention:
        raise FmtlabError("attention=True does not combine with kv_prefix (the probabilities would not be square)")
    if kv_prefix is not None and qkv:
        raise FmtlabError("qkv=True does not combine with kv_prefix (the recorded keys would include the prefix)")
    if texts is None:
        texts = default_texts("calib")
        text_info = text_info or {"source": "wiki", "split": "calib"}
    if isinstance(texts, str):
        texts = [texts]
    windows, prefix_len = token_windows(tokenizer, texts, seq_len, n_sequences, prefix=prefix, start=window_start)
    n_sequences = len(windows)

    blocks = find_blocks(model)
    block_names = [b for b, _ in blocks]
    lin = find_linear_layers(model, layers, include_head)
    if not lin and not residual and not attention and not qkv:
        raise FmtlabError("no Linear-like layer selected and no residual/attention recording asked for")

    writer = TraceWriter(os.fspath(out), memory_limit=memory_limit, overwrite=overwrite)
    try:  # any exception or interrupt from here on (weights, forward passes, close) drops the partial
        layer_meta: dict[str, dict[str, Any]] = {}
        act_meta: dict[str, dict[str, Any]] = {}
        handles = []
        state: dict[str, Any] = {"first": True, "seen": {}, "probs_done": set(), "batch_bytes": 0, "n_tok": 0}
        weight_bytes = 0

        def put(name: str, arr: np.ndarray, **attrs: Any) -> None:
            state["batch_bytes"] += arr.nbytes
            writer.add(name, arr, **attrs)

        # ---- Linear-like layers
        for name, mod, op in lin:
            blk, ltype = _block_of(name, block_names)
            w = mod.weight
            out_f, in_f = (w.shape[1], w.shape[0]) if op == "conv1d" else (w.shape[0], w.shape[1])
            meta: dict[str, Any] = {"op": op, "type": ltype, "block": blk, "in_features": int(in_f),
                                    "out_features": int(out_f), "input": None, "output": None,
                                    "weight": None, "bias": None}
            short = ltype.rsplit(".", 1)[-1]
            if kv and short in _KEY_TYPES + _VALUE_TYPES:
                meta["kv"] = "key" if short in _KEY_TYPES else "value"
            layer_meta[name] = meta
            if weights:
                meta["weight"] = f"{name}:weight"
                wt = _weight_linear_layout(mod, op)
                writer.add(meta["weight"], wt, kind="weight", layer=name)
                weight_bytes += wt.nbytes
                if getattr(mod, "bias", None) is not None:
                    meta["bias"] = f"{name}:bias"
                    bias = mod.bias.detach().float().cpu().numpy().reshape(1, -1)
                    writer.add(meta["bias"], bias, kind="bias", layer=name)
                    weight_bytes += bias.nbytes

            def hook(module, args, kwargs, output, _name=name, _meta=meta, _op=op):
                x = args[0] if args else kwargs.get("input", kwargs.get("x"))
                if inputs and x is not None:
                    seen = state["seen"]
                    canon = seen.get(id(x))
                    if state["first"]:
                        _meta["per_token"] = bool(x.numel() // x.shape[-1] == state["n_tok"])
                        if canon is None:
                            tname = f"{_name}:input"
                            seen[id(x)] = (x, tname)
                            _meta["input"] = tname
                            put(tname, _to_rows(x, _meta["in_features"]), kind="input", layer=_name)
                        else:
                            _meta["input"] = canon[1]
                    else:
                        tname = _meta["input"]
                        if tname == f"{_name}:input":
                            seen[id(x)] = (x, tname)
                            put(tname, _to_rows(x, _meta["in_features"]), kind="input", layer=_name)
                        elif canon is None or canon[1] != tname:
                            raise FmtlabError(f"layer {_name}: its input was shared with {tname} in the first "
                                              "batch but not now; record with batch_size matching the model's dataflow")
                y = output[0] if isinstance(output, tuple) else output
                if outputs:
                    if state["first"]:
                        _meta["output"] = f"{_name}:output"
                    put(f"{_name}:output", _to_rows(y, _meta["out_features"]), kind="output", layer=_name)
                role = _meta.get("kv")
                if role and not outputs:
                    tname = f"{_name}:{role}"
                    put(tname, _to_rows(y, _meta["out_features"]), kind=role, layer=_name)
                    if state["first"]:
                        act_meta[tname] = {"kind": role, "block": _meta["block"], "layer": _name, "tensor": tname}
                elif role and state["first"]:
                    act_meta[f"{_name}:{role}"] = {"kind": role, "block": _meta["block"], "layer": _name,
                                                   "tensor": f"{_name}:output"}
                if kv and _op == "conv1d" and _meta["type"].rsplit(".", 1)[-1] == "c_attn":
                    rows = _to_rows(y, _meta["out_features"])
                    e = rows.shape[1] // 3
                    for j, role2 in ((1, "key"), (2, "value")):
                        tname = f"{_name}:{role2}"
                        put(tname, np.ascontiguousarray(rows[:, j * e:(j + 1) * e]), kind=role2, layer=_name)
                        if state["first"]:
                            act_meta[tname] = {"kind": role2, "block": _meta["block"], "layer": _name, "tensor": tname}

            handles.append(mod.register_forward_hook(hook, with_kwargs=True))

        # ---- residual stream after each block
        if residual:
            if not blocks:
                raise FmtlabError("residual=True but no repeated block list was found in the model")
            for i, (bname, bmod) in enumerate(blocks):
                def rhook(module, args, output, _i=i, _b=bname):
                    y = output[0] if isinstance(output, tuple) else output
                    tname = f"{_b}:residual"
                    put(tname, _to_rows(y), kind="residual", layer=_b)
                    if state["first"]:
                        act_meta[tname] = {"kind": "residual", "block": _i, "layer": _b, "tensor": tname}
                handles.append(bmod.register_forward_hook(rhook))

        # ---- attention probabilities
        restore_attn = lambda: None  # noqa: E731
        if attention:
            if not blocks:
                raise FmtlabError("attention=True but no repeated block list was found in the model")
            restore_attn = _set_eager(model)
            for i, (bname, bmod) in enumerate(blocks):
                for sub_name, sub in bmod.named_modules():
                    if "Attention" not in type(sub).__name__:
                        continue

                    def ahook(module, args, output, _i=i, _n=f"{bname}.{sub_name}" if sub_name else bname):
                        if _i in state["probs_done"] or not isinstance(output, tuple):
                            return
                        for o in output[1:]:
                            if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-1] == o.shape[-2]:
                                state["probs_done"].add(_i)
                                tname = f"{_n}:attn_probs"
                                put(tname, o.detach().float().cpu().clone().numpy(), kind="attn_probs", layer=_n)
                                if state["first"]:
                                    act_meta[tname] = {"kind": "attn_probs", "block": _i, "layer": _n, "tensor": tname,
                                                       "layout": "sequences x heads x query x key"}
                                return
                    handles.append(sub.register_forward_hook(ahook))

        # ---- Q, K, V as the attention reads them (after RoPE)
        attn_meta: dict[str, dict[str, Any]] = {}
        restore_qkv = _attach_qkv_taps(model, blocks, block_names, state, put, attn_meta, attention) if qkv \
            else (lambda: None)

        fwd_kwargs: dict[str, Any] = {}
        if hasattr(getattr(model, "config", None), "use_cache"):
            fwd_kwargs["use_cache"] = False
        estimate_done = False
        bar = tqdm(total=n_sequences, unit="seq", desc="record", disable=not progress)
        from fmtlab.pytorch.kv_prefix import kv_prefix_attached  # lazy: torch; `fmtlab replay` imports this module (compile_layers) torch-free

        try:
            with torch.no_grad(), kv_prefix_attached(model, kv_prefix):
                for start in range(0, n_sequences, batch_size):
                    ids = torch.tensor(windows[start:start + batch_size], dtype=torch.long)
                    state["seen"] = {}
                    state["probs_done"] = set()
                    state["batch_bytes"] = 0
                    state["n_tok"] = ids.numel()
                    model(input_ids=ids, attention_mask=torch.ones_like(ids), **fwd_kwargs)
                    if qkv and len(state["qkv_done"]) < len(state["qkv_modules"]):
                        raise FmtlabError("qkv=True but the attention of "
                                          f"{len(state['qkv_modules']) - len(state['qkv_done'])} layer(s) did not run "
                                          "through the recording attention function")
                    state["qkv_done"] = set()
                    if attention and len(state["probs_done"]) < len(blocks):
                        raise FmtlabError("attention=True but the model returned no attention probabilities "
                                          f"for {len(blocks) - len(state['probs_done'])} block(s)")
                    put("tokens:input_ids", ids.numpy().astype(np.int64), kind="tokens")
                    put("tokens:sequence", np.repeat(np.arange(start, start + ids.shape[0], dtype=np.int32), seq_len),
                        kind="tokens")
                    put("tokens:position", np.tile(np.arange(seq_len, dtype=np.int32), ids.shape[0]), kind="tokens")
                    if not estimate_done and max_bytes is not None:
                        n_batches = -(-n_sequences // batch_size)
                        est = weight_bytes + state["batch_bytes"] * n_batches
                        if est > max_bytes:
                            raise FmtlabError(
                                f"the trace would take about {est / 2**20:.0f} MiB, over max_bytes="
                                f"{max_bytes / 2**20:.0f} MiB; record fewer sequences, a shorter seq_len, "
                                "fewer layers, or without outputs")
                        estimate_done = True
                    state["first"] = False
                    state["seen"] = {}
                    bar.update(ids.shape[0])
                    bar.set_postfix_str(f"{(writer.bytes_written + writer.buffered_bytes) / 2**20:.0f} MiB")
        finally:
            bar.close()
            for h in handles:
                h.remove()
            restore_qkv()
            restore_attn()

        vocab = {}
        try:
            uniq = sorted({t for w in windows for t in w})
            vocab = {str(t): s for t, s in zip(uniq, tokenizer.convert_ids_to_tokens(uniq))}
        except Exception:  # a tokenizer without convert_ids_to_tokens: token strings are optional
            vocab = {}
        manifest = {
            "model": _model_summary(model, tokenizer),
            "text": {**(text_info or {"source": "user texts"}), "n_documents": len(texts), "prefix": prefix,
                     "window_start": window_start_info(tokenizer, window_start)},
            "source_grid": source_grid_entry(model),
            "seq_len": int(seq_len), "n_sequences": int(n_sequences), "n_tokens": int(seq_len * n_sequences),
            "prefix_len": int(prefix_len), "batch_size": int(batch_size),
            "kv_prefix": None if kv_prefix is None else {"tokens": list(kv_prefix.tokens), "tuned": kv_prefix.tuned},
            "blocks": block_names,
            "options": {"inputs": inputs, "outputs": outputs, "weights": weights, "residual": residual,
                        "attention": attention, "kv": kv, "qkv": qkv, "include_head": include_head},
            "row_order": "row = sequence * seq_len + position",
            "layers": layer_meta, "activations": act_meta, "vocab": vocab,
        }
        if qkv:
            manifest["attention"] = attn_meta
        return writer.close(manifest)
    except BaseException:
        writer.abort()
        for h in handles:  # hooks registered before an error in the weight phase
            h.remove()
        raise
