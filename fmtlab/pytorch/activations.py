"""Activation fake-quant in a rewired model: per-sequence dynamic scales, or frozen static scales.

Batch convention (how a Linear input maps to sequences): a Linear sees ``x`` of shape
[..., features]. With 3 or more dims, the last two are [tokens, features] of one sequence and
every leading index (dims ``x.shape[:-2]``, flattened) is a separate sequence (a request). A
2-D input [tokens, features] is one sequence; a 1-D input [features] is one token of one sequence.

- **Dynamic** (:class:`ActivationScales.DYNAMIC`, the default): every scale the quantizer derives
  from the data (per-tensor, per-token, per-channel, per-group, MX / NVFP4 block scales and
  NVFP4's FP32 tensor scale) is computed over one sequence, never over the batch, as an inference
  engine does per request: a sequence's result does not depend on the batch it runs in. Quantizers
  whose scales only span one row of [tokens, features] (per-token, groups / blocks along the
  features without a tensor scale, deterministic rounding) run on the whole batch in one call,
  which is the same computation; the others run once per sequence. Stochastic rounding runs per
  sequence too, so each sequence gets the draws it gets alone.
- **Padded batches** (the rule): in a model rewired by ``quantize_model``, a forward pass with an
  ``attention_mask`` holding zeros (padding) takes every dynamic scale that spans several tokens
  over each sequence's real positions only; padded positions are quantized apart and never move a
  real position's scale. A sequence so gets the logits it gets alone, right- or left-padded. Where
  an activation cannot be aligned with the mask (a 2-D input, another batch size), or with a
  fitted transform, the forward raises FmtlabError instead of mixing padding into the scales.
- **Static** (:class:`ActivationScales.STATIC`): one frozen scale per tensor (per-tensor quantizer)
  or per input feature (per-channel quantizer on the feature axis, ``axis=1`` / ``-1``), observed
  by :func:`fmtlab.pytorch.calibrate` over a calibration split and then fixed: the
  quantizer's scale rule gives each calibration sequence a clip value c (absmax, percentile or MSE
  search, float32); the frozen c is the max over sequences for absmax (the absmax of the whole
  split) and the float64 mean over sequences for percentile and MSE (bounded memory), rounded to
  float32; the scale is then the quantizer's ``fl32(c / fmt.max)`` (+ pow2). While observing,
  activations pass through unquantized (weights stay quantized). Evaluating before calibration
  raises an FmtlabError.
"""

from __future__ import annotations

import enum
import threading
from typing import Any, Callable

import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.formats import MSE, AbsMax, Percentile, PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Rounding
from fmtlab.pytorch.autograd import apply_fake_quant
from fmtlab.pytorch.quantizers import TorchQuantizer

__all__ = ["ActivationScales", "StaticActivation", "quantize_per_sequence", "sequences_of", "padding_mask",
           "track_padding"]


class ActivationScales(enum.Enum):
    """How activation scales are obtained: per sequence at run time, or calibrated and frozen."""

    DYNAMIC = "dynamic"
    STATIC = "static"

    @classmethod
    def parse(cls, value: "ActivationScales | str") -> "ActivationScales":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise FmtlabError(f"activation_scales must be 'dynamic' or 'static' (ActivationScales), "
                              f"got {value!r}") from None


def sequences_of(x: torch.Tensor) -> torch.Tensor:
    """x as [sequences, tokens, features] (a view where possible; see the module docstring)."""
    if x.dim() == 0:
        raise FmtlabError("an activation needs at least a features axis; got a 0-d tensor")
    if x.dim() == 1:
        return x.reshape(1, 1, -1)
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _rows_independent(q: Any) -> bool:
    """Whether q's scales of a [tokens, features] matrix only span single rows (then a whole
    batch in one call equals one call per sequence, bit for bit)."""
    if not isinstance(q, TorchQuantizer) or q.rounding is Rounding.STOCHASTIC:
        return False
    g = q.granularity
    if isinstance(g, PerToken):
        return True
    if isinstance(g, PerChannel):
        return g.axis in (0, -2)
    if isinstance(g, PerBlock):
        return g.axis in (1, -1) and not g.tensor_scale and g.tile is None
    if isinstance(g, PerGroup):
        return g.axis in (1, -1) and g.tile is None
    return False


_PADDING = threading.local()  # .mask: the running forward pass's attention_mask when it pads


def padding_mask() -> "torch.Tensor | None":
    """The [sequences, positions] attention mask of the model forward running in this thread if it
    marks padded positions (zeros), else None (see :func:`track_padding`)."""
    return getattr(_PADDING, "mask", None)


def track_padding(model: nn.Module) -> None:
    """Hook ``model`` (once) so its forward passes publish a 2-D ``attention_mask`` with zeros to
    :func:`padding_mask` for their duration: dynamic activation scales then span only the
    sequence's real (mask 1) positions (padded batch rule, see :func:`quantize_per_sequence`)."""
    if getattr(model, "_fmtlab_tracks_padding", False):
        return
    import inspect  # lazy: only here

    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    pos = params.index("attention_mask") if "attention_mask" in params else None

    def pre(module, args, kwargs):
        m = kwargs.get("attention_mask")
        if m is None and pos is not None and len(args) > pos:
            m = args[pos]
        padded = isinstance(m, torch.Tensor) and m.dim() == 2 and not bool((m != 0).all())
        _PADDING.mask = (m != 0) if padded else None

    def post(module, args, kwargs, output):
        _PADDING.mask = None

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True, always_call=True)
    model._fmtlab_tracks_padding = True


def _masked_per_sequence(q: Callable, x: torch.Tensor, mask: torch.Tensor, grad: str) -> torch.Tensor:
    """Per sequence: real positions quantized together (their scales see only them), padded ones
    separately; the result at real positions equals the sequence run alone without padding."""
    if x.dim() != 3 or x.shape[0] != mask.shape[0] or x.shape[1] > mask.shape[1]:
        raise FmtlabError(f"a padded batch (attention_mask {tuple(mask.shape)} with zeros) reaches an "
                          f"activation of shape {tuple(x.shape)} that cannot be aligned with the mask, and "
                          "its dynamic scales would include padded positions; run sequences unpadded "
                          "(batch_size=1 or equal lengths) or use per-token activation scales")
    keep = mask[:, mask.shape[1] - x.shape[1]:].to(x.device)
    out = []
    for xb, kb in zip(x.unbind(0), keep.unbind(0)):
        yb = torch.zeros_like(xb)
        for part in (kb, ~kb):
            idx = part.nonzero().squeeze(1)
            if idx.numel():
                yb = yb.index_put((idx,), q(xb.index_select(0, idx), grad=grad))
        out.append(yb)
    return torch.stack(out)


def quantize_per_sequence(q: Callable, x: torch.Tensor, grad: str = "ste") -> torch.Tensor:
    """Fake-quantize activations ``x`` [..., features] with dynamic scales per sequence.

    ``q(x2d, grad=...)`` is called on [tokens, features] matrices: once on all rows where that is
    the same computation (see :func:`_rows_independent`), else once per sequence. Padded batches:
    inside a forward of a model hooked by :func:`track_padding` whose ``attention_mask`` has zeros,
    scales spanning several tokens are taken over each sequence's real positions only (padded
    positions are quantized apart), so a sequence gets the result it gets alone; an activation that
    cannot be aligned with the mask raises FmtlabError."""
    shape = x.shape
    mask = padding_mask()
    if mask is not None and not _rows_independent(q):
        return _masked_per_sequence(q, x, mask, grad)
    if x.dim() <= 2 or _rows_independent(q):
        return q(x.reshape(-1, shape[-1]), grad=grad).reshape(shape)
    seqs = sequences_of(x)
    if seqs.shape[0] == 1:
        return q(seqs[0], grad=grad).reshape(shape)
    return torch.stack([q(s, grad=grad) for s in seqs.unbind(0)]).reshape(shape)


class StaticActivation(nn.Module):
    """A static-scale activation quantizer for one layer (see the module docstring).

    Buffers (saved in the state dict): ``stat`` (float64 running statistic per slot), ``count``
    (calibration sequences seen), ``scale`` (float32 frozen scales) and ``calibrated``.
    """

    def __init__(self, q: TorchQuantizer, features: int, layer: str = "") -> None:
        super().__init__()
        if not isinstance(q, TorchQuantizer):
            raise FmtlabError(f"layer {layer!r}: static activation scales need an fmtlab quantizer, "
                              f"not {q!r}")
        g, rule = q.granularity, q.scale_rule
        if isinstance(g, PerTensor):
            nslots = 1
        elif isinstance(g, PerChannel) and g.axis in (1, -1):
            nslots = int(features)
        else:
            raise FmtlabError(f"layer {layer!r}: static activation scales are per tensor or per input "
                              f"feature (PerChannel(axis=1)); {q.name} has {g}, whose scales are "
                              "dynamic by construction (use activation_scales='dynamic')")
        if not isinstance(rule, (AbsMax, Percentile, MSE)):
            raise FmtlabError(f"layer {layer!r}: static calibration observes an absmax, percentile or "
                              f"MSE clip value; {q.name} has scale rule {rule}")
        if q.rounding is Rounding.STOCHASTIC:
            raise FmtlabError(f"layer {layer!r}: static activation scales need a deterministic rounding")
        self.tq = q
        self.layer = layer
        self.observing = False
        self.register_buffer("stat", torch.zeros(nslots, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scale", torch.ones(nslots, dtype=torch.float32))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @property
    def name(self) -> str:
        return f"{self.tq.name} (static)"

    def reset(self) -> None:
        """Forget the observed statistic and the frozen scales (back to uncalibrated)."""
        self.stat.zero_()
        self.count.zero_()
        self.scale.fill_(1.0)
        self.calibrated.fill_(False)

    def observe(self, x: torch.Tensor) -> None:
        """Fold the per-sequence clip values of ``x`` [..., features] into the statistic."""
        for s in sequences_of(x.detach()).unbind(0):
            c = self.tq.statistic(s).to(device=self.stat.device, dtype=torch.float64)
            if isinstance(self.tq.scale_rule, AbsMax):
                torch.maximum(self.stat, c, out=self.stat)
            else:
                self.stat.add_(c)
            self.count.add_(1)

    def freeze(self) -> None:
        """Turn the statistic into frozen scales (raises when nothing was observed)."""
        n = int(self.count)
        if n == 0:
            raise FmtlabError(f"layer {self.layer!r}: calibration saw no activations for this layer")
        c = self.stat if isinstance(self.tq.scale_rule, AbsMax) else self.stat / n
        self.scale.copy_(self.tq.scales_from_statistic(c.to(torch.float32)).to(self.scale.device))
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor, grad: str = "ste") -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not bool(self.calibrated):
            raise FmtlabError(f"layer {self.layer!r}: static activation scales were never calibrated; "
                              "run fmtlab.pytorch.calibrate(model, calib_data, tokenizer=...) first")
        shape, scale = x.shape, self.scale
        x2 = x.reshape(-1, shape[-1])
        run = lambda t, m: self.tq.fake_quantize_with_mask(t, need_mask=m, scales=scale)  # noqa: E731
        return apply_fake_quant(x2, run, grad).reshape(shape)

    def extra_repr(self) -> str:
        state = "calibrated" if bool(self.calibrated) else "not calibrated"
        return f"{self.tq.name}, {self.scale.numel()} scale(s), {state}"
