"""FPTQuant: function-preserving transforms for Llama-architecture models, fitted and merged.

After van Breugel et al. 2025, "FPTQuant: Function-Preserving Transforms for LLM Quantization".
Every transform below is exactly invertible and merged into the weights, so the merged float model
computes the same function as the original (to float32 rounding; checked by
:func:`function_preserving`). Conventions: nn.Linear layout W [out, in]; activations are rows.

Transforms (per decoder layer, with H query heads, G key/value heads, head size D, n = H / G):

- **residual rotation** R (hidden x hidden, fixed, not trained): the RMSNorm gains are folded into
  the Linear layers that read the normalised residual (``W diag(g)``, gains set to 1), then
  ``W <- W R`` for q/k/v/gate/up, ``W <- R^T W`` (bias ``R^T b``) for o/down, ``E <- E R`` for
  the embedding and ``H <- H diag(g_final) R`` for the head (a tied head is untied).
  R is :func:`fmtlab.sim.transforms.hadamard_matrix` (random signs from ``seed``; block-diagonal
  where ``hidden`` has a small power-of-two factor: 576 = 9 x 64 gives 64 x 64 blocks), the same
  matrix the replay side's Hadamard uses. RMS(xR) = RMS(x) because R is orthonormal. As in the
  public implementation, this rotation is part of FPTQuant; on its own it is our "Hadamard" baseline.
- **(a) pre-RoPE query/key transform** Tk: per KV head g and RoPE pair i (dims i and i + D/2, the
  ``rotate_half`` layout), keys get ``exp(a) R(phi)`` and queries (every query head of group g)
  get ``exp(-a) R(phi)``. A 2x2 rotation commutes with RoPE's rotation, so
  ``q'^T R_pos k' = q^T R(-phi) R_pos R(phi) k = q^T R_pos k`` and the attention scores are unchanged.
- **(b) value/output transform** Tv: per KV head an invertible M_g = I + A_g (D x D):
  ``W_v <- M_g W_v`` (bias too) and the o_proj columns of every query head h of group g
  ``W_o[:, h] <- W_o[:, h] M_g^-1`` (attention mixes tokens, not channels, so M commutes with it).
- **(c) up/down scale** Tu: ``W_up <- diag(s) W_up`` (bias too), ``W_down <- W_down diag(1/s)``,
  s = exp(u) per intermediate channel (SwiGLU: silu(gate) * up is linear in up per channel).
- **(d) dynamic per-token scale**: applied at quantization time, not merged (see
  :mod:`fmtlab.methods.fptquant_quant`).

Fitting (:func:`fit_fptquant`) follows the public implementation (AIMET's FPTQuant local
optimizer): data-free, minimise the sum over layers of ``mean(|W'|^p)^(1/p)`` of the merged weights
W' (p = 4) with AdamW (lr 1e-2, default weight decay, 200 steps), transforms initialised at the
identity. The layers' terms share no parameters and AdamW is elementwise, so we optimise one
layer at a time: the same result as the joint run, with one layer's weights in memory; the terms of
weights no enabled transform changes (gate_proj, and e.g. v/o without Tv) are constants and left
out. Our readings: M = I + A is trained unconstrained (invertibility is not enforced; at lr 1e-2 it
stays near I); the public implementation's extra non-mergeable online Hadamard before down_proj is
not included (everything here merges, except the per-token scale).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fmtlab.errors import FmtlabError
from fmtlab.sim.transforms import hadamard_matrix

__all__ = ["FPTQuantTransforms", "LlamaShape", "llama_shape", "fit_fptquant", "merge_fptquant",
           "function_preserving", "merged_layer_weights", "merged_state", "base_layer_weights", "lp_loss",
           "changed_keys", "LocalLoss", "residual_rotation", "PROJECTIONS", "LP_WEIGHTS", "MAX_V_CONDITION"]

#: merging refuses a value transform M whose condition number exceeds this (its inverse would
#: amplify float32 rounding of W_o by as much)
MAX_V_CONDITION = 1e6
#: the merged weights whose L_p norms make the local loss (gate_proj does not change)
LP_WEIGHTS = ("q", "k", "v", "o", "up", "down")

#: decoder-layer Linear layers by short key: (block attribute, Linear attribute)
PROJECTIONS = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
         "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
         "down": ("mlp", "down_proj")}


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The sizes FPTQuant needs: layers, hidden, intermediate, query heads H, KV heads G, head size D."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _linear(mod: Any, what: str) -> nn.Linear:
    if not isinstance(mod, nn.Linear):
        raise FmtlabError(f"FPTQuant needs a float nn.Linear at {what}, found {type(mod).__name__} "
                          "(merge the transforms before quantize_model)")
    return mod


def llama_shape(model: nn.Module) -> LlamaShape:
    """Check that ``model`` is a Llama-architecture causal LM (model.model.layers with self_attn
    q/k/v/o and mlp gate/up/down Linear layers, RMSNorms, RoPE) and return its sizes."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    cfg = getattr(model, "config", None)
    if layers is None or cfg is None or not hasattr(inner, "embed_tokens") or not hasattr(inner, "norm") \
            or not hasattr(model, "lm_head"):
        raise FmtlabError(f"FPTQuant supports Llama-architecture causal LMs (model.model.layers, "
                          f"embed_tokens, norm, lm_head); got {type(model).__name__}")
    heads, kv = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    d = int(getattr(cfg, "head_dim", None) or hidden // heads)
    if d % 2 or heads % kv:
        raise FmtlabError(f"FPTQuant needs an even head size and heads divisible by KV heads; "
                          f"got {d=}, {heads=}, {kv=}")
    if not layers:
        raise FmtlabError("the model has no decoder layers")
    for i, layer in enumerate(layers):
        for key, (blk, name) in PROJECTIONS.items():
            _linear(getattr(getattr(layer, blk, None), name, None), f"layer {i} {blk}.{name}")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            if getattr(getattr(layer, norm, None), "weight", None) is None:
                raise FmtlabError(f"layer {i} has no {norm} with a weight (RMSNorm expected)")
    inter = int(layers[0].mlp.up_proj.out_features)
    q = layers[0].self_attn.q_proj
    if q.out_features != heads * d or layers[0].self_attn.k_proj.out_features != kv * d:
        raise FmtlabError(f"q/k projections do not match {heads=} x {d=} / {kv=} x {d=}")
    return LlamaShape(len(layers), hidden, inter, heads, kv, d)


def residual_rotation(hidden: int, seed: int | None = 0) -> torch.Tensor:
    """The float64 residual rotation: :func:`fmtlab.sim.transforms.hadamard_matrix` (orthonormal)."""
    return torch.from_numpy(hadamard_matrix(hidden, seed)).to(torch.float64)


class FPTQuantTransforms(nn.Module):
    """Fitted FPTQuant transforms of one model (parameters per layer; identity at init).

    ``layers[i]`` holds ``qk_log_scale`` and ``qk_angle`` [G, D/2] (a), ``v_delta`` [G, D, D] with
    M = I + v_delta (b), ``up_log_scale`` [intermediate] (c), each present only when enabled.
    ``rotation``: the residual rotation (float64 buffer) or None. ``history``: the local loss per
    step of each layer ([layers][steps + 1], the last entry after the final step; empty without
    trainable transforms), summed over the weights the enabled transforms change (:func:`changed_keys`).
    """

    def __init__(self, shape: LlamaShape, *, qk: bool = True, v: bool = True, up: bool = True,
                 residual: bool = True, seed: int | None = 0) -> None:
        super().__init__()
        self.shape, self.seed = shape, seed
        self.enabled = {"qk": bool(qk), "v": bool(v), "up": bool(up), "residual": bool(residual)}
        g, half, d = shape.kv_heads, shape.head_dim // 2, shape.head_dim
        self.layers = nn.ModuleList()
        for _ in range(shape.layers):
            p = nn.ParameterDict()
            if qk:
                p["qk_log_scale"] = nn.Parameter(torch.zeros(g, half))
                p["qk_angle"] = nn.Parameter(torch.zeros(g, half))
            if v:
                p["v_delta"] = nn.Parameter(torch.zeros(g, d, d))
            if up:
                p["up_log_scale"] = nn.Parameter(torch.zeros(shape.intermediate))
            self.layers.append(p)
        self.register_buffer("rotation", residual_rotation(shape.hidden, seed) if residual else None)
        self.history: list[list[float]] = []

    @property
    def name(self) -> str:
        on = [k for k, v in self.enabled.items() if v]
        return "fptquant(" + ",".join(on) + ")" if on else "fptquant(none)"

    def extra_repr(self) -> str:
        return f"{self.name}, {self.shape}"


def _params(p: nn.ParameterDict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in p.items()}


def _blocks(r: torch.Tensor) -> torch.Tensor | None:
    """The diagonal blocks [n, b, b] of a block-diagonal r (b: the largest power of two dividing
    its size, as in hadamard_matrix), or None when r has nonzeros off those blocks."""
    k = r.shape[0]
    b = k & -k
    if b == k:
        return None
    blocks = torch.stack([r[j:j + b, j:j + b] for j in range(0, k, b)])
    return blocks if torch.count_nonzero(r).item() == torch.count_nonzero(blocks).item() else None


def _times_r(w: torch.Tensor, r: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
    """w @ r, blockwise when r is block-diagonal (the same products without the zero blocks)."""
    if blocks is None:
        return w @ r
    n, b, _ = blocks.shape
    return torch.einsum("onb,nbc->onc", w.reshape(w.shape[0], n, b), blocks).reshape(w.shape)


def _rt_times(w: torch.Tensor, r: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
    """r^T @ w (w [k, ...] or a vector [k]), blockwise when r is block-diagonal."""
    if blocks is None:
        return r.t() @ w
    n, b, _ = blocks.shape
    tail = w.shape[1:]
    return torch.einsum("nbc,nb...->nc...", blocks, w.reshape(n, b, *tail)).reshape(w.shape)


def base_layer_weights(model: nn.Module, i: int, rotation: torch.Tensor | None,
                       dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Layer i's weights (``"q"``.. ``"down"``; biases as ``"q.bias"``..) after norm folding and the
    residual rotation (none without ``rotation``), before the trainable transforms; detached."""
    layer = model.model.layers[i]
    out: dict[str, torch.Tensor] = {}
    blocks = None if rotation is None else _blocks(rotation)
    with torch.no_grad():
        g_att = layer.input_layernorm.weight.detach().to(torch.float64)
        g_mlp = layer.post_attention_layernorm.weight.detach().to(torch.float64)
        for key, (blk, name) in PROJECTIONS.items():
            lin = getattr(getattr(layer, blk), name)
            w = lin.weight.detach().to(torch.float64)
            b = None if lin.bias is None else lin.bias.detach().to(torch.float64)
            if rotation is not None:
                if key in ("o", "down"):  # writes the residual: W <- R^T W, b <- R^T b
                    w = _rt_times(w, rotation, blocks)
                    b = None if b is None else _rt_times(b, rotation, blocks)
                else:  # reads the normalised residual: W <- W diag(g) R
                    w = _times_r(w * (g_att if key in ("q", "k", "v") else g_mlp)[None, :], rotation, blocks)
            out[key] = w.to(dtype)
            if b is not None:
                out[key + ".bias"] = b.to(dtype)
    return out


def _pair_rotate(w: torch.Tensor, scale: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rows of w [heads, D, ...]: per head and RoPE pair (i, i + D/2), scale * R(phi) @ [w_i; w_i+D/2]."""
    half = w.shape[1] // 2
    a, b = w[:, :half], w[:, half:]
    ext = (...,) + (None,) * (w.dim() - 2)
    s, c, n = scale[ext], cos[ext], sin[ext]
    return torch.cat((s * (c * a - n * b), s * (n * a + c * b)), dim=1)


def merged_layer_weights(base: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
                         shape: LlamaShape) -> dict[str, torch.Tensor]:
    """Apply the trainable transforms (a)-(c) of one layer to its base weights (differentiable in
    ``params``; computed in the dtype of ``base``)."""
    G, H, D, n = shape.kv_heads, shape.heads, shape.head_dim, shape.group
    w = dict(base)
    if "qk_log_scale" in params:
        ls, phi = params["qk_log_scale"], params["qk_angle"]
        cos, sin = torch.cos(phi), torch.sin(phi)
        rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731 - KV head g serves query heads g*n..g*n+n-1
        for key, heads, sc, c, s in (("k", G, torch.exp(ls), cos, sin),
                                     ("q", H, rep(torch.exp(-ls)), rep(cos), rep(sin))):
            hid = base[key].shape[1]
            w[key] = _pair_rotate(base[key].reshape(heads, D, hid), sc, c, s).reshape(heads * D, hid)
            if key + ".bias" in base:
                w[key + ".bias"] = _pair_rotate(base[key + ".bias"].reshape(heads, D), sc, c, s).reshape(-1)
    if "v_delta" in params:
        m = torch.eye(D, dtype=base["v"].dtype) + params["v_delta"]
        hid = base["v"].shape[1]
        w["v"] = (m @ base["v"].reshape(G, D, hid)).reshape(G * D, hid)
        if "v.bias" in base:
            w["v.bias"] = (m @ base["v.bias"].reshape(G, D, 1)).reshape(-1)
        minv = torch.linalg.inv(m).repeat_interleave(n, dim=0)  # [H, D, D]
        wo = base["o"].reshape(base["o"].shape[0], H, D)
        w["o"] = torch.einsum("ohd,hde->ohe", wo, minv).reshape(base["o"].shape[0], H * D)
    if "up_log_scale" in params:
        s = torch.exp(params["up_log_scale"])
        w["up"] = base["up"] * s[:, None]
        if "up.bias" in base:
            w["up.bias"] = base["up.bias"] * s
        w["down"] = base["down"] / s[None, :]
    return w


def lp_loss(weights: dict[str, torch.Tensor], p: float = 4.0, keys: Sequence[str] = LP_WEIGHTS) -> torch.Tensor:
    """Sum over ``keys`` of ``mean(|W|^p)^(1/p)`` (the public implementation's local loss)."""
    def norm(w: torch.Tensor) -> torch.Tensor:
        if p == 4:  # the default: two squarings are several times faster than pow
            sq = w * w
            return (sq * sq).mean().pow(0.25)
        return w.abs().pow(p).mean().pow(1.0 / p)

    return torch.stack([norm(weights[k]) for k in keys]).sum()


def changed_keys(transforms: "FPTQuantTransforms") -> tuple[str, ...]:
    """The keys of :data:`LP_WEIGHTS` that the enabled trainable transforms change."""
    on = transforms.enabled
    keys = ({"q", "k"} if on["qk"] else set()) | ({"v", "o"} if on["v"] else set()) \
        | ({"up", "down"} if on["up"] else set())
    return tuple(k for k in LP_WEIGHTS if k in keys)


class LocalLoss:
    """One layer's local loss ``lp_loss(merged_layer_weights(base, params), p, keys)`` as a function
    of ``params``, computed fast for p = 4 and equal to it up to float rounding (held by the tests).

    For p = 4 the row scales and the 2x2 pair rotations have closed forms in per-row (per-pair)
    fourth moments of the base weights, computed once: ``sum_c (s w_rc)^4 = s^4 sum_c w_rc^4`` for
    up/down, and for a pair (a, b) of rows rotated by phi, ``sum (c a - s b)^4 + (s a + c b)^4 =
    (c^4 + s^4)(A40 + A04) + 4cs(s^2 - c^2)(A31 - A13) + 12 c^2 s^2 A22`` (A_jk = sum a^j b^k).
    v/o (a dense per-head matrix and its inverse) are computed directly. Other p: the direct path.
    """

    def __init__(self, base: dict[str, torch.Tensor], shape: LlamaShape, keys: Sequence[str], p: float = 4.0):
        self.base, self.shape, self.keys, self.p = base, shape, tuple(keys), float(p)
        self.numel = {k: base[k].numel() for k in self.keys}
        self.moments: dict[str, torch.Tensor] = {}
        if self.p != 4:
            return
        half = shape.head_dim // 2
        with torch.no_grad():
            for key, heads in (("q", shape.heads), ("k", shape.kv_heads)):
                if key in self.keys:
                    w = base[key].reshape(heads, shape.head_dim, -1)
                    a, b = w[:, :half], w[:, half:]
                    a2, b2 = a * a, b * b
                    self.moments[key] = torch.stack([(a2 * a2 + b2 * b2).sum(-1), (a2 * a * b - a * b2 * b).sum(-1),
                                                     (a2 * b2).sum(-1)])  # [3, heads, D/2]
            if "up" in self.keys:
                self.moments["up"] = (base["up"] ** 4).sum(dim=1)
                self.moments["down"] = (base["down"] ** 4).sum(dim=0)

    def __call__(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.p != 4:
            return lp_loss(merged_layer_weights(self.base, params, self.shape), self.p, self.keys)
        terms = []
        if "qk_log_scale" in params:
            ls, phi = params["qk_log_scale"], params["qk_angle"]
            c, s = torch.cos(phi), torch.sin(phi)
            c2, s2 = c * c, s * s
            poly = torch.stack([c2 * c2 + s2 * s2, 4 * c * s * (s2 - c2), 12 * c2 * s2])  # [3, G, D/2]
            n = self.shape.group
            for key, scale4, pk in (("k", torch.exp(4 * ls), poly),
                                    ("q", torch.exp(-4 * ls).repeat_interleave(n, 0), poly.repeat_interleave(n, 1))):
                m = self.moments[key]
                terms.append(((pk * m).sum(0) * scale4).sum().div(self.numel[key]).pow(0.25))
        if "v_delta" in params:
            sub = {k: self.base[k] for k in ("v", "o")}
            w = merged_layer_weights(sub, {"v_delta": params["v_delta"]}, self.shape)
            terms.append(lp_loss(w, 4.0, ("v", "o")))
        if "up_log_scale" in params:
            u = params["up_log_scale"]
            terms.append((torch.exp(4 * u) * self.moments["up"]).sum().div(self.numel["up"]).pow(0.25))
            terms.append((torch.exp(-4 * u) * self.moments["down"]).sum().div(self.numel["down"]).pow(0.25))
        return torch.stack(terms).sum()


def _check_fit_args(steps: int, lr: float, p: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise FmtlabError(f"steps must be an integer >= 0, got {steps=!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise FmtlabError(f"lr must be a finite number > 0, got {lr=!r}")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise FmtlabError(f"p must be a finite number >= 1 (an L_p norm), got {p=!r}")


def fit_fptquant(model: nn.Module, calib_batches: Iterable[torch.Tensor] | None = None, steps: int = 200,
                 lr: float = 1e-2, p: float = 4.0, *, qk: bool = True, v: bool = True, up: bool = True,
                 residual: bool = True, seed: int | None = 0, weight_decay: float = 0.01,
                 progress: bool = False) -> FPTQuantTransforms:
    """Fit FPTQuant's transforms to ``model`` (a float Llama-architecture LM, left unchanged).

    Local step (always): ``steps`` AdamW steps (``lr``, ``weight_decay``) per layer on the L_p loss
    (:func:`lp_loss`) of the merged weights; data-free, as in the public implementation, so
    ``calib_batches`` is not read (kept for a uniform fit signature). ``qk``/``v``/``up`` enable the
    transforms (a)/(b)/(c), ``residual`` the residual rotation (random Hadamard signs from ``seed``).
    The optional end-to-end step is :func:`fmtlab.methods.fptquant_quant.train_end_to_end` (run on
    the returned transforms; :func:`~fmtlab.methods.fptquant_quant.prepare_static` does both).
    Deterministic: the same arguments give bit-identical transforms on the same machine.
    """
    _check_fit_args(steps, lr, p)
    shape = llama_shape(model)
    tr = FPTQuantTransforms(shape, qk=qk, v=v, up=up, residual=residual, seed=seed)
    keys = changed_keys(tr)
    for i in tqdm(range(shape.layers), desc="fptquant local fit", disable=not progress, leave=False):
        base = base_layer_weights(model, i, tr.rotation, torch.float32)
        params = list(tr.layers[i].values())
        hist: list[float] = []
        if params:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            local = LocalLoss(base, shape, keys, p)
            with torch.enable_grad():  # also when called under torch.no_grad()
                for _ in range(steps):
                    opt.zero_grad()
                    loss = local(dict(tr.layers[i]))
                    hist.append(float(loss.detach()))
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                hist.append(float(lp_loss(merged_layer_weights(base, dict(tr.layers[i]), shape), p, keys)))
        tr.history.append(hist)
    return tr


def _set(lin: nn.Linear, w: torch.Tensor, b: torch.Tensor | None) -> None:
    lin.weight = nn.Parameter(w.to(lin.weight.dtype).contiguous(), requires_grad=lin.weight.requires_grad)
    if b is not None:
        lin.bias = nn.Parameter(b.to(lin.bias.dtype).contiguous(), requires_grad=lin.bias.requires_grad)


def merged_state(model: nn.Module, transforms: FPTQuantTransforms) -> dict[str, torch.Tensor]:
    """Every weight that merging changes, by parameter name of ``model`` (float64, detached)."""
    out: dict[str, torch.Tensor] = {}
    r = transforms.rotation
    with torch.no_grad():
        for i in range(transforms.shape.layers):
            w = merged_layer_weights(base_layer_weights(model, i, r), _params(transforms.layers[i], torch.float64),
                                     transforms.shape)
            for key, t in w.items():
                k, _, what = key.partition(".")
                blk, name = PROJECTIONS[k]
                out[f"model.layers.{i}.{blk}.{name}.{what or 'weight'}"] = t
        if r is not None:
            blocks = _blocks(r)
            out["model.embed_tokens.weight"] = _times_r(model.model.embed_tokens.weight.detach().to(torch.float64),
                                                        r, blocks)
            g = model.model.norm.weight.detach().to(torch.float64)
            out["lm_head.weight"] = _times_r(model.lm_head.weight.detach().to(torch.float64) * g[None, :], r, blocks)
    return out


def merge_fptquant(model: nn.Module, transforms: FPTQuantTransforms, *, inplace: bool = False) -> nn.Module:
    """Write ``transforms`` into the weights of ``model``; returns the merged model.

    Default: a deep copy (``model`` unchanged); ``inplace=True`` rewrites ``model`` itself. Merged
    weights are computed in float64 from the float weights and rounded once to the model's dtype.
    With the residual rotation, the RMSNorm gains become 1 and a tied lm_head is untied
    (``config.tie_word_embeddings`` set to False).
    """
    if not isinstance(transforms, FPTQuantTransforms):
        raise FmtlabError(f"transforms must be FPTQuantTransforms (from fit_fptquant), got {type(transforms).__name__}")
    shape = llama_shape(model)
    if shape != transforms.shape:
        raise FmtlabError(f"the transforms were fitted to a model of shape {transforms.shape}, not {shape}")
    for i, p in enumerate(transforms.layers):
        if "v_delta" in p:
            m = torch.eye(shape.head_dim, dtype=torch.float64) + p["v_delta"].detach().to(torch.float64)
            cond = torch.linalg.cond(m)
            if not bool(torch.isfinite(cond).all()) or float(cond.max()) > MAX_V_CONDITION:
                raise FmtlabError(f"layer {i}: the value transform M = I + v_delta is (nearly) singular "
                                  f"(condition number {float(cond.max()):.3g} > {MAX_V_CONDITION:g}); cannot merge")
    state = merged_state(model, transforms)
    if not inplace:
        model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for pname, t in state.items():
            mname, _, what = pname.rpartition(".")
            if what == "bias":
                continue
            mod = mods[mname]
            if isinstance(mod, nn.Embedding):
                mod.weight = nn.Parameter(t.to(mod.weight.dtype).contiguous())
            else:
                _set(mod, t, state.get(mname + ".bias"))
        if transforms.rotation is not None:
            for layer in model.model.layers:
                layer.input_layernorm.weight.fill_(1.0)
                layer.post_attention_layernorm.weight.fill_(1.0)
            model.model.norm.weight.fill_(1.0)
            for cfg in (model.config, getattr(model.config, "text_config", None)):
                if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
                    cfg.tie_word_embeddings = False
    return model


@torch.no_grad()
def function_preserving(model_a: nn.Module, model_b: nn.Module, batch: torch.Tensor) -> float:
    """Max |logits_a - logits_b| over token ids ``batch`` [sequences, tokens] (both in eval mode)."""
    if not isinstance(batch, torch.Tensor) or batch.dim() != 2 or batch.numel() == 0:
        raise FmtlabError(f"batch must be a non-empty [sequences, tokens] tensor of token ids, got {batch!r:.80}")
    outs = []
    for m in (model_a, model_b):
        was = m.training
        m.eval()
        try:
            out = m(batch)
        finally:
            m.train(was)
        outs.append((out.logits if hasattr(out, "logits") else out).to(torch.float64))
    return float((outs[0] - outs[1]).abs().max())
