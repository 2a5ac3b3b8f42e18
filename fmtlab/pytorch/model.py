"""One call that rewires a model's Linear layers to weight/activation fake-quant.

``quantize_model(model, weights="int4", activations="fp8_e4m3")`` wraps every ``nn.Linear`` and
GPT-2 ``Conv1D`` (``transformers.pytorch_utils.Conv1D``) in a :class:`QuantLinear` computing

    y = Q_a(x) @ Q_w(W)^T + b          (W in nn.Linear layout [out_features, in_features])

Axis conventions (shared with fmtlab.formats and fmtlab.sim): activations are quantized as 2-D
[tokens, in_features] matrices, weights as [out_features, in_features]; per-token / per-channel
scales are one per row, groups and blocks run along the last (reduction) axis. A Conv1D's weight
[in, out] is transposed to that layout first. Batch: an input [..., tokens, in_features] holds
one sequence per leading index (a 2-D input is one sequence) and dynamic activation scales are
computed per sequence, never over the batch (see :mod:`fmtlab.pytorch.activations`); with
``activation_scales="static"`` they are calibrated once (:func:`fmtlab.pytorch.calibrate`).

Specs (``weights=``, ``activations=``, override values): None (no quantization); a quantizer
preset name or object (see :func:`fmtlab.pytorch.specs.resolve`); a format name / Format,
which gets a default absmax quantizer (per-channel for weights, per-token for activations).
Gradients flow by straight-through estimator (``grad="clipped"`` zeroes them outside the
representable range), so the rewired model also trains (QAT).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import re
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fmtlab.errors import FmtlabError
from fmtlab.formats import Static
from fmtlab.pytorch.activations import (ActivationScales, StaticActivation, padding_mask, quantize_per_sequence,
                                        sequences_of, track_padding)
from fmtlab.pytorch.attention import attach_attention
from fmtlab.pytorch.autograd import check_grad
from fmtlab.pytorch.kv_cache import attach_kv_cache
from fmtlab.pytorch.kv_prefix import attach_kv_prefix
from fmtlab.pytorch.specs import resolve, spec_name

__all__ = ["LayerConfig", "QuantLinear", "QuantizeSummary", "quantize_model", "linear_kind"]


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """What one layer gets: weight and activation specs (None = leave in float) and the gradient."""

    weights: Any = None
    activations: Any = None
    grad: str = "ste"


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers absent
        return None
    return Conv1D


def linear_kind(module: nn.Module) -> str | None:
    """"linear" for nn.Linear, "conv1d" for GPT-2 Conv1D, else None."""
    if isinstance(module, QuantLinear):
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    conv = _conv1d_class()
    if conv is not None and isinstance(module, conv):
        return "conv1d"
    return None


class QuantLinear(nn.Module):
    """A Linear-like layer with fake-quantized weights and inputs (see the module docstring).

    ``inner`` keeps the original module (and its parameters); ``weight_q`` / ``act_q`` are torch
    quantizers (``TorchQuantizer`` or callables; ``act_q`` may be a :class:`StaticActivation`)
    or None; dynamic ``act_q`` runs per sequence. With ``transform`` (an fmtlab.sim
    outlier transform) the layer computes the transform's decomposition instead (numpy, no
    gradient, one sequence at a time); a transform that fits statistics is fitted by
    :func:`fmtlab.pytorch.calibrate` (else on the first input the layer sees).
    In eval mode without autograd the fake-quantized weight is cached until the weight changes.
    """

    def __init__(self, inner: nn.Module, kind: str, weight_q=None, act_q=None, grad: str = "ste",
                 transform=None, name: str = "") -> None:
        super().__init__()
        self.inner = inner
        self.kind = kind
        self.weight_q = weight_q
        self.act_q = act_q
        self.grad = check_grad(grad)
        self.transform = transform
        self.layer_name = name
        self._fitted = None
        self.collect: list[np.ndarray] | None = None  # set by calibrate() to gather inputs
        self._wcache: tuple[Any, torch.Tensor] | None = None
        self.accumulator = None  # an fmtlab.sim.accumulate.Accumulator: dot products as it computes them
        self.acc_counts = [0, 0]  # [overflowing dot products, dot products] under the accumulator
        self._wop: tuple[Any, Any] | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    @property
    def in_features(self) -> int:
        return self.inner.weight.shape[0 if self.kind == "conv1d" else 1]

    @property
    def out_features(self) -> int:
        return self.inner.weight.shape[1 if self.kind == "conv1d" else 0]

    def linear_weight(self) -> torch.Tensor:
        """The weight in nn.Linear layout [out, in]."""
        w = self.inner.weight
        return w.t() if self.kind == "conv1d" else w

    def quantized_weight(self) -> torch.Tensor:
        """Q_w(W) in [out, in] layout (differentiable by STE)."""
        w = self.linear_weight()
        if self.weight_q is None:
            return w
        if (torch.is_grad_enabled() and w.requires_grad) or torch.compiler.is_compiling():
            self._wcache = None
            return self.weight_q(w, grad=self.grad)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._wcache is None or self._wcache[0] != key:
            self._wcache = (key, self.weight_q(w, grad=self.grad))
        return self._wcache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            return self._forward_transform(x)
        if self.accumulator is not None and not getattr(self.act_q, "observing", False):
            return self._forward_accumulated(x)
        if isinstance(self.act_q, StaticActivation):
            x = self.act_q(x, grad=self.grad)
        elif self.act_q is not None:
            x = quantize_per_sequence(self.act_q, x, self.grad)
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def _forward_transform(self, x: torch.Tensor) -> torch.Tensor:
        """The transform's decomposition, one sequence at a time (its dynamic activation scales
        are per sequence). The transform is fitted by :func:`fmtlab.pytorch.calibrate` on the
        calibration split; without calibration, on the first input the layer sees."""
        from fmtlab.sim.transform_base import Context  # lazy: fmtlab.sim loads numba and scipy; only transforms need it

        if padding_mask() is not None:
            raise FmtlabError(f"layer {self.layer_name!r}: a transform's dynamic scales cannot leave padded "
                              "positions out; run its sequences unpadded (batch_size=1 or equal lengths)")
        shape = x.shape
        w = self.linear_weight().detach().to(torch.float32).cpu().numpy()
        seqs = sequences_of(x.detach()).to(torch.float32).cpu().numpy()
        act, wq = _numpy_q(self.act_q), _numpy_q(self.weight_q)
        positions = np.arange(seqs.shape[1])
        if self.collect is not None:  # calibration: gather float inputs, compute in float
            self.collect.append(seqs.reshape(-1, seqs.shape[-1]))
            return F.linear(x, self.linear_weight(), self.bias)
        ctx = Context(positions=positions, act_q=act, weight_q=wq)
        if self._fitted is None:
            flat = seqs.reshape(-1, seqs.shape[-1])
            self._fitted = self.transform.fit(
                flat, w, Context(positions=np.tile(positions, seqs.shape[0]), act_q=act, weight_q=wq))
        ys = [np.ascontiguousarray(self._fitted.decompose(s, w, ctx).output(act, wq), dtype=np.float32)
              for s in seqs]
        y = torch.from_numpy(np.stack(ys)).to(x.device)
        if self.bias is not None:
            y = y + self.bias.detach().to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], y.shape[-1])

    def _forward_accumulated(self, x: torch.Tensor) -> torch.Tensor:
        """Q_a(x) Q_w(W)^T with every dot product accumulated as ``self.accumulator`` does
        (:mod:`fmtlab.sim.accumulate`: numpy, no gradient, one sequence at a time)."""
        from fmtlab.sim.accumulate import accumulated_matmul, operand  # lazy: fmtlab.sim loads numba and scipy

        shape = x.shape
        w = self.linear_weight().detach().to(torch.float32).cpu().numpy()
        wq = _codes_quantizer(self.weight_q, "weights")
        key = (self.inner.weight.data_ptr(), self.inner.weight._version)
        if self._wop is None or self._wop[0] != key:
            self._wop = (key, operand(wq, w))
        aq = _codes_quantizer(self.act_q, "activations")
        ys = []
        for s in sequences_of(x.detach()).to(torch.float32).cpu().numpy():
            y, ovf = accumulated_matmul(s, w, aq, wq, self.accumulator, w_operand=self._wop[1])
            self.acc_counts[0] += int(ovf.sum())
            self.acc_counts[1] += int(ovf.size)
            ys.append(y)
        y = torch.from_numpy(np.stack(ys)).to(x.device)
        if self.bias is not None:
            y = y + self.bias.detach().to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], y.shape[-1])

    def fit_transform(self, rows: "list[np.ndarray]", seq_len: int) -> None:
        """Fit the transform on calibration inputs (float32 [tokens, in] blocks of ``seq_len``-token
        sequences), replacing any earlier fit."""
        from fmtlab.sim.transform_base import Context  # lazy: fmtlab.sim loads numba and scipy; only transforms need it

        x2 = np.concatenate(rows, axis=0)
        w = self.linear_weight().detach().to(torch.float32).cpu().numpy()
        act, wq = _numpy_q(self.act_q), _numpy_q(self.weight_q)
        pos = np.tile(np.arange(seq_len), x2.shape[0] // seq_len)
        self._fitted = self.transform.fit(x2, w, Context(positions=pos, act_q=act, weight_q=wq))

    def extra_repr(self) -> str:
        s = (f"{self.kind}, in={self.in_features}, out={self.out_features}, "
             f"weights={spec_name(self.weight_q)}, activations={spec_name(self.act_q)}")
        if self.transform is not None:
            s += f", transform={getattr(self.transform, 'name', self.transform)}"
        return s


def _codes_quantizer(q, role: str):
    """The numpy Quantizer (codes and scales) behind a torch quantizer, for the accumulator path;
    a static activation quantizer becomes its format with the frozen scale(s)."""
    if q is None:
        return None
    if isinstance(q, StaticActivation):
        if not bool(q.calibrated):
            raise FmtlabError(f"layer {q.layer!r}: static activation scales were never calibrated")
        s = q.scale.detach().cpu().numpy()
        return dataclasses.replace(q.tq.quantizer, scale_rule=Static(s if s.size > 1 else float(s[0])))
    inner = getattr(q, "quantizer", None)
    if inner is None:
        raise FmtlabError(f"the accumulator path needs fmtlab quantizers; {role} use {q!r}")
    return inner


def _numpy_q(q):
    if q is None:
        return None

    def fn(a: np.ndarray) -> np.ndarray:
        return q(torch.from_numpy(np.ascontiguousarray(a)), grad="ste").numpy()

    return fn


@dataclasses.dataclass
class QuantizeSummary:
    """What :func:`quantize_model` changed: one row per rewired layer, plus the skipped names.

    ``requantized``: layers that were already fake-quantized and got the new configuration
    instead (``restored``: those of them the new call leaves in float, unwrapped again)."""

    rows: list[dict[str, Any]]
    skipped: list[str]
    transform: str | None = None
    requantized: list[str] = dataclasses.field(default_factory=list)
    restored: list[str] = dataclasses.field(default_factory=list)
    activation_scales: ActivationScales = ActivationScales.DYNAMIC
    kv_cache: Any = None  # the KVCacheQuantizer attached (fmtlab.pytorch.kv_cache), or None
    attention: Any = None  # the AttentionSpec attached (fmtlab.pytorch.attention), or None

    @property
    def changed(self) -> list[str]:
        return [r["name"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        lines = [f"quantize_model: {len(self.rows)} layer(s) rewired, {len(self.skipped)} skipped"
                 + (f", {len(self.requantized)} already quantized: previous fake-quant replaced"
                    if self.requantized else "")
                 + (f", transform {self.transform}" if self.transform else "")
                 + f", {self.activation_scales.value} activation scales"
                 + (f", KV cache {self.kv_cache.spec.name}" if self.kv_cache is not None else "")
                 + (f", attention {self.attention.name}" if self.attention is not None else "")]
        if self.rows:
            w = max(len(r["name"] or "<root>") for r in self.rows)
            lines.append(f"  {'layer':<{w}}  kind    in x out       weights / activations")
            for r in self.rows:
                lines.append(f"  {r['name'] or '<root>':<{w}}  {r['kind']:<6}  {r['in']:>5} x {r['out']:<6}  "
                             f"{r['weights']} / {r['activations']}")
        if self.skipped:
            lines.append("  skipped: " + ", ".join(n or "<root>" for n in self.skipped))
        if self.restored:
            lines.append("  restored to float (were quantized): " + ", ".join(n or "<root>" for n in self.restored))
        return "\n".join(lines)


def output_head(model: nn.Module) -> nn.Module | None:
    """The float module ``model.get_output_embeddings()`` returns (unwrapped from a QuantLinear),
    or None where the model has no such method or no head."""
    head = None
    if hasattr(model, "get_output_embeddings"):
        try:
            head = model.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            head = None
    return head.inner if isinstance(head, QuantLinear) else head


def matches_name(name: str, pattern: Any) -> bool:
    """``quantize_model``'s layer-name pattern rule: fnmatch glob (a bare pattern also matches
    ``*.pattern``), ``"re:<regex>"`` or a compiled regex (search)."""
    if isinstance(pattern, re.Pattern):
        return pattern.search(name) is not None
    p = str(pattern)
    if p.startswith("re:"):
        return re.search(p[3:], name) is not None
    return fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p)


def _merge(base: LayerConfig, value: Any) -> LayerConfig | None:
    if value is None:
        return None
    if isinstance(value, LayerConfig):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"weights", "activations", "grad"}
        if unknown:
            raise FmtlabError(f"override keys must be weights/activations/grad, got {sorted(unknown)}")
        return dataclasses.replace(base, **dict(value))
    return LayerConfig(weights=value, activations=value, grad=base.grad)


def _check_layout(name: str, q: Any, shape: tuple[int, int], role: str) -> None:
    """Fail at rewiring time (naming the layer) when a quantizer's groups/blocks cannot tile the
    layer's [out, in] weight or [tokens, in] activations."""
    layout = getattr(q, "layout", None)  # TorchQuantizer.layout: the shared plan_layout
    if layout is None:
        return
    try:
        layout(shape)
    except FmtlabError as exc:
        raise FmtlabError(f"layer {name!r} ({role} {list(shape)}): {exc}") from None


def quantize_model(model: nn.Module, weights: Any = None, activations: Any = None, *,
                   overrides: Mapping[Any, Any] | None = None, skip: Iterable[Any] | None = ("lm_head",),
                   skip_head: bool = True, transform: Any = None, grad: str = "ste",
                   activation_scales: "ActivationScales | str" = ActivationScales.DYNAMIC,
                   inplace: bool = False, kv_prefix: Any = None,
                   kv_cache: Any = None, accumulator: Any = None,
                   attention: Any = None) -> tuple[nn.Module, QuantizeSummary]:
    """Rewire Linear / Conv1D layers of ``model`` to W/A fake-quant; returns (model, summary).

    weights / activations: default specs for every layer (see module docstring).
    overrides: ``{pattern: config}``; patterns are fnmatch globs on the qualified module name
    (a bare pattern also matches any ``*.pattern``), ``"re:<regex>"`` or compiled regexes; the
    config is a :class:`LayerConfig`, a dict with some of weights/activations/grad (the rest
    from the defaults), a single spec (both weights and activations), or None (leave the layer in
    float). When several patterns match, the last one in the mapping wins.
    skip: patterns of layers never rewired (default ``("lm_head",)``); ``skip_head`` also skips
    the module returned by ``model.get_output_embeddings()``.
    transform: an fmtlab.sim outlier transform (name such as ``"smoothquant"`` or a Transform);
    layers then compute its decomposition (numpy; evaluation only, no gradient).
    activation_scales: ``ActivationScales.DYNAMIC`` (default: scales per sequence at run time) or
    ``STATIC`` (per-tensor or per-feature scales, frozen by :func:`fmtlab.pytorch.calibrate`; a
    bare format name then means its per-tensor absmax quantizer).
    inplace: rewire ``model`` itself instead of a deep copy.
    kv_prefix: a :class:`fmtlab.pytorch.kv_prefix.KVPrefix` (CushionCache: ``search_prefix(...).kv_prefix``,
    computed by the float model) attached to the returned model: every later forward (calibrate,
    evaluate_perplexity) runs behind it; the prefix is never quantized (``generate`` is not
    supported: its growing attention mask does not count the prefix).
    kv_cache: store every key (after RoPE) and value in a format (:mod:`fmtlab.pytorch.kv_cache`:
    ``"int8_sym_per_token"``, ``"fp8_e4m3_per_tensor"``, ``"kivi4"``, ``"...@static"``, a dict of
    keys/values/scales or a :class:`~fmtlab.pytorch.kv_cache.KVCacheSpec`); the prefix's own entries
    stay float. None: a float cache (re-quantizing replaces an earlier KV format with this one).
    accumulator: compute every rewired layer's dot products as this accumulator does
    (:mod:`fmtlab.sim.accumulate`: ``"int16"``, ``"int24_sat"``, ``"bf16"``, ``"fp16_k32"``,
    ``"hopper_fp8_mma"``, ...; numpy, evaluation only; each layer counts its overflowing dot
    products in ``acc_counts``). None: the float GEMM. Not with ``transform=``.
    attention: run Q·Kᵀ and P·V in a format (:mod:`fmtlab.pytorch.attention`: ``"fp8_fa3"``,
    ``"sage_int8_fp8"``, ``"mxfp8"``, ``"none"`` or an AttentionSpec). None: the model's own attention.

    A model that is already fake-quantized is re-quantized: each existing :class:`QuantLinear`
    gets this call's configuration instead of its old one (listed in ``summary.requantized``; a
    layer this call leaves in float is unwrapped, ``summary.restored``). A bare ``nn.Linear`` /
    Conv1D (or QuantLinear) root is rewired too: the returned model is then a new QuantLinear
    around it (around the given module itself with ``inplace=True``), named ``""`` in the summary.
    """
    check_grad(grad)
    mode = ActivationScales.parse(activation_scales)
    if not isinstance(model, nn.Module):
        raise FmtlabError(f"quantize_model needs a torch.nn.Module, got {type(model).__name__}")
    tr = None
    if transform is not None:
        from fmtlab.sim.transforms import get_transform  # lazy: fmtlab.sim loads numba and scipy; only transforms need it

        tr = get_transform(transform)
        if tr is not None and accumulator is not None:
            raise FmtlabError("accumulator= does not combine with transform= (the transform computes its "
                              "own decomposition in float32)")
        if tr is not None and mode is ActivationScales.STATIC:
            raise FmtlabError("activation_scales='static' does not combine with transform= (the "
                              "transform fits and applies its own decomposition)")
    if not inplace:
        model = copy.deepcopy(model)
    head = output_head(model) if skip_head else None
    skip = list(skip or ())
    base = LayerConfig(weights, activations, grad)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    requantized: list[str] = []
    restored: list[str] = []
    cache: dict[tuple[Any, str], Any] = {}
    act_role = "static_activations" if mode is ActivationScales.STATIC else "activations"

    def res(spec: Any, role: str):
        key = (id(spec), role) if not isinstance(spec, (str, type(None))) else (spec, role)
        if key not in cache:
            cache[key] = resolve(spec, role)
        return cache[key]

    targets = _targets(model)
    new_root = model
    for name, mod, kind, old in targets:
        cfg: LayerConfig | None = base
        if (head is not None and mod is head) or any(matches_name(name, p) for p in skip):
            cfg = None
        else:
            for pat, value in (overrides or {}).items():
                if matches_name(name, pat):
                    cfg = _merge(base, value)
        wq = aq = None
        if cfg is not None:
            wq, aq = res(cfg.weights, "weights"), res(cfg.activations, act_role)
        if cfg is None or (wq is None and aq is None and tr is None):
            skipped.append(name)
            if old is not None:  # quantized before, float now: unwrap
                restored.append(name)
                requantized.append(name)
                new_root = _replace(model, name, mod, new_root)
            continue
        ql = QuantLinear(mod, kind, wq, aq, cfg.grad, transform=tr, name=name)
        _check_layout(name, wq, (ql.out_features, ql.in_features), "weights")
        if aq is not None and mode is ActivationScales.STATIC:
            ql.act_q = StaticActivation(aq, ql.in_features, name)
        _check_layout(name, aq, (1, ql.in_features), "activations")
        if accumulator is not None:
            from fmtlab.sim.accumulate import parse as parse_accumulator  # lazy: fmtlab.sim loads numba and scipy

            ql.accumulator = parse_accumulator(accumulator)
        new_root = _replace(model, name, ql, new_root)
        if old is not None:
            requantized.append(name)
        rows.append({"name": name, "kind": kind, "in": ql.in_features, "out": ql.out_features,
                     "weights": spec_name(wq), "activations": spec_name(ql.act_q)})
    summary = QuantizeSummary(rows, skipped, getattr(tr, "name", None) if tr is not None else None,
                              requantized, restored, mode)
    track_padding(new_root)  # padded batches: dynamic scales over real positions only
    if kv_cache is not None or "fmtlab_kv_cache" in new_root.__dict__:
        summary.kv_cache = attach_kv_cache(new_root, kv_cache, grad)
    if attention is not None or "fmtlab_attention_prev" in new_root.__dict__:
        summary.attention = attach_attention(new_root, attention)
    if kv_prefix is not None:
        attach_kv_prefix(new_root, kv_prefix)
    return new_root, summary


def _targets(model: nn.Module) -> list[tuple[str, nn.Module, str, QuantLinear | None]]:
    """(name, float module, kind, existing QuantLinear or None) of every rewirable layer; the
    inner module of an existing QuantLinear is reached through it (named as the QuantLinear)."""
    if isinstance(model, QuantLinear):
        return [("", model.inner, model.kind, model)]
    kind = linear_kind(model)
    if kind is not None:
        return [("", model, kind, None)]
    out = []
    wrapped: list[str] = []
    for n, m in model.named_modules():
        if not n or any(n.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(m, QuantLinear):
            wrapped.append(n)
            out.append((n, m.inner, m.kind, m))
            continue
        k = linear_kind(m)
        if k is not None:
            out.append((n, m, k, None))
    return out


def _replace(model: nn.Module, name: str, new: nn.Module, root: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` (the root when name is ""); returns the (possibly new) root."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return root
