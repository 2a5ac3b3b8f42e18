"""PEG activation groups in a rewired model (:mod:`fmtlab.formats.peg` for the method).

:func:`quantize_model_peg` rewires a model with :func:`fmtlab.pytorch.quantize_model` and static
activation scales, then gives every rewired layer a :class:`PegActivation`: it observes the
per-feature absmax over the calibration split (:func:`fmtlab.pytorch.calibrate`), and at freeze
time sorts the features by that range (the range-based permutation), cuts them into K groups and
gives each feature its group's scale ``fl32(max over the group / fmt.max)``. The frozen scales are
those of :meth:`fmtlab.formats.peg.PegQuantizer.calibrate` on the same calibration rows, bit for
bit (absmax: the max of per-sequence maxima is the max over all rows), and the forward pass is the
per-feature static quantizer of :class:`~fmtlab.pytorch.activations.StaticActivation`.

Only the absmax rule: percentile / MSE statistics are averaged per sequence in the torch path and
would not compose into group scales the same way.

Mixed precision (``mixed_precision=True``), our reading of the paper's recipe (residual sum and
FFN output kept in 16 bit): this rewiring quantizes Linear *inputs* and weights only, so residual
sums and Linear outputs (the FFN output among them) stay in float32, which already meets 16 bit.
The one quantized tensor on that path is the FFN's down-projection input (its output is the FFN
output; in LLaMA-like models it carries the massive activations), so the option keeps the inputs
of the layers matching ``mp_layers`` (default down_proj / fc2 / mlp.c_proj) in 16-bit INT with a
static per-tensor scale.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fmtlab.errors import FmtlabError
from fmtlab.formats import AbsMax, PerChannel
from fmtlab.formats.peg import PegQuantizer, group_bounds, range_permutation
from fmtlab.pytorch.activations import StaticActivation
from fmtlab.pytorch.model import QuantLinear, quantize_model
from fmtlab.pytorch.specs import resolve

__all__ = ["PegActivation", "quantize_model_peg", "MP_LAYERS"]

#: layers whose input the mixed-precision option keeps in 16 bit (FFN down projections)
MP_LAYERS = ("down_proj", "fc2", "mlp.c_proj")


class PegActivation(StaticActivation):
    """Static PEG for one layer: per-feature absmax observed, K group scales frozen."""

    def __init__(self, peg: PegQuantizer, features: int, layer: str = "") -> None:
        if peg.scale_rule.strip().lower() not in ("absmax", "max", "amax"):
            raise FmtlabError(f"layer {layer!r}: PEG in quantize_model takes the absmax rule, got {peg.scale_rule!r}")
        group_bounds(int(features), peg.groups)  # validates K against the layer width
        tq = resolve(f"{peg.format}_per_channel(axis=1)", "static_activations")
        super().__init__(tq, features, layer)
        if not isinstance(tq.granularity, PerChannel) or not isinstance(tq.scale_rule, AbsMax):
            raise FmtlabError(f"layer {layer!r}: PEG needs a per-feature absmax observer, got {tq.name}")
        self.peg = peg
        self.register_buffer("group_of_feature", torch.zeros(int(features), dtype=torch.int64))

    @property
    def name(self) -> str:
        return f"{self.peg.name} (static)"

    def freeze(self) -> None:
        n = int(self.count)
        if n == 0:
            raise FmtlabError(f"layer {self.layer!r}: calibration saw no activations for this layer")
        c = self.stat.to(torch.float32).cpu().numpy()
        _, gof = range_permutation(c, self.peg.groups, self.peg.permute)
        clip = np.zeros(self.peg.groups, dtype=np.float32)
        np.maximum.at(clip, gof, c)
        per_feature = torch.from_numpy(clip[gof])
        self.scale.copy_(self.tq.scales_from_statistic(per_feature).to(self.scale.device))
        self.group_of_feature.copy_(torch.from_numpy(gof))
        self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        state = "calibrated" if bool(self.calibrated) else "not calibrated"
        return f"{self.peg.name}, {self.peg.groups} group scale(s), {state}"


def quantize_model_peg(model: nn.Module, weights: Any = "int8_per_tensor", activations: Any = "int8_peg6", *,
                       mixed_precision: bool = False, mp_layers: tuple[str, ...] = MP_LAYERS,
                       mp_activations: str = "int16_per_tensor",
                       overrides: Mapping[Any, Any] | None = None, **kwargs: Any):
    """``quantize_model`` with static PEG activations; returns (model, summary). Calibrate it with
    :func:`fmtlab.pytorch.calibrate` before evaluating.

    activations: a PEG name (``"int8_peg6"``, ``"int8_peg6_noperm"``) or a :class:`PegQuantizer`.
    mixed_precision: keep the inputs of ``mp_layers`` (glob patterns) in ``mp_activations``
    (16-bit INT, static per tensor); see the module docstring for our reading.
    Other keyword arguments go to :func:`fmtlab.pytorch.quantize_model` (``activation_scales`` is
    always static here).
    """
    peg = activations if isinstance(activations, PegQuantizer) else PegQuantizer.from_name(str(activations))
    if "activation_scales" in kwargs:
        raise FmtlabError("quantize_model_peg always uses static activation scales; drop activation_scales=")
    ov = dict(overrides or {})
    if mixed_precision:
        for p in mp_layers:
            ov[p] = {"activations": mp_activations}
    observer = f"{peg.format}_per_channel(axis=1)"
    qmodel, summary = quantize_model(model, weights, observer, overrides=ov or None,
                                     activation_scales="static", **kwargs)
    rows = {r["name"]: r for r in summary.rows}
    for name, m in qmodel.named_modules():
        if not isinstance(m, QuantLinear) or not isinstance(m.act_q, StaticActivation):
            continue
        if not isinstance(m.act_q.tq.granularity, PerChannel):
            continue  # a per-tensor override (the 16-bit mixed-precision layers)
        m.act_q = PegActivation(peg, m.in_features, m.layer_name)
        if m.layer_name in rows:
            rows[m.layer_name]["activations"] = m.act_q.name
    return qmodel, summary
