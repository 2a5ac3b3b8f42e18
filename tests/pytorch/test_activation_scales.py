"""Activation scales of a rewired model: dynamic per sequence, static calibrated (issue 10).

Invariants:
- dynamic scales (every quantizer family, NVFP4's tensor scale included) are computed per
  sequence: the logits of a sequence are bit-identical (torch.equal) whether it runs alone or in
  a batch of 2 or 4, and ``evaluate_perplexity`` gives the identical perplexity for batch sizes
  1, 2 and 4 with its default arguments (before the fix per-tensor scales spanned the batch);
- a rewired layer applies to each sequence exactly what the quantizer does to that sequence's
  [tokens, features] matrix;
- static scales are frozen by ``calibrate`` from the calibration split only (absmax: the split's
  absmax; percentile / MSE: the mean of per-sequence clip values), independent of the
  calibration batch size; an uncalibrated static model raises FmtlabError.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fmtlab.errors import FmtlabError
from fmtlab.formats import MSE, PerChannel, PerTensor, Quantizer
from fmtlab.pytorch import (
    ActivationScales, StaticActivation, TorchQuantizer, calibrate, evaluate_perplexity, quantize_model,
)

transformers = pytest.importorskip("transformers")


from torch_helpers import VOCAB
# a coarse MSE search (10 clip candidates) keeps the test fast; the rule is the same
MSE10 = Quantizer("int8", PerTensor(), MSE(grid=10, min_ratio=0.5), name="int8_per_tensor_mse10")
FAMILIES = ["int8_per_tensor", "int8_per_token", "int4_g32", "fp8_e4m3_per_tensor", "int8_per_tensor_p99",
            MSE10, "mxfp4", "nvfp4", "int8_per_token_asym"]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))


def _logits_by_batch(model, ids, bs):
    with torch.no_grad():
        return torch.cat([model(ids[i:i + bs]).logits for i in range(0, ids.shape[0], bs)])


@pytest.mark.parametrize("acts", FAMILIES)
def test_dynamic_scales_batch_independent(llama, ids, acts):
    qm, _ = quantize_model(llama, weights="int8_per_channel", activations=acts)
    one = _logits_by_batch(qm, ids, 1)
    assert torch.equal(_logits_by_batch(qm, ids, 2), one)
    assert torch.equal(_logits_by_batch(qm, ids, 4), one)


def test_perplexity_same_for_batch_sizes(llama, ids):
    """The issue's measurement: per-tensor dynamic INT8 with the default evaluate_perplexity
    arguments (only batch_size varied) gives one perplexity."""
    qm, _ = quantize_model(llama, weights="int8_per_channel", activations="int8_per_tensor")
    res = [evaluate_perplexity(qm, ids, batch_size=b, progress=False) for b in (1, 2, 4)]
    assert res[0].ppl == res[1].ppl == res[2].ppl and res[0].nll == res[2].nll


@pytest.mark.parametrize("acts", ["int8_per_tensor", "nvfp4", "int8_per_token",
                                  Quantizer("int8", PerChannel(1), name="int8_per_feature")])
def test_layer_quantizes_each_sequence_alone(llama, acts):
    """A rewired layer on [batch, tokens, features] = linear(stack(Q_a(x[b])), Q_w(W), bias)."""
    qm, _ = quantize_model(llama, weights="int4", activations=acts)
    layer = qm.model.layers[0].mlp.down_proj
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(2))
    x[1] *= 50  # one loud sequence: a batch-wide scale would crush the others
    tq = TorchQuantizer(acts)
    want = F.linear(torch.stack([tq(x[b]) for b in range(3)]), layer.quantized_weight(), layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), want)
        assert torch.equal(layer(x[0]), want[0])  # a 2-D input is one sequence


def test_static_needs_calibration_then_is_frozen(llama, ids):
    qm, summary = quantize_model(llama, weights="int8_per_channel", activations="int8",
                                 activation_scales=ActivationScales.STATIC)
    assert summary.activation_scales is ActivationScales.STATIC and "static" in str(summary)
    acts = [m for m in qm.modules() if isinstance(m, StaticActivation)]
    assert len(acts) == 14 and all(a.tq.name == "int8_per_tensor" for a in acts)  # a bare format: per tensor
    with pytest.raises(FmtlabError, match="never calibrated.*calibrate"):
        evaluate_perplexity(qm, ids, progress=False)
    calib, held_out = ids[:3], ids[3:]
    res = calibrate(qm, calib, batch_size=2)
    assert (res.layers, res.sequences, res.seq_len) == (14, 3, 16)
    # absmax statistic = the absmax over the whole calibration split of the layer's float input
    layer = qm.model.layers[1].mlp.down_proj
    seen = []
    h = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().abs().amax()))
    for a in acts:
        a.observing = True
    with torch.no_grad():
        qm(calib)
    for a in acts:
        a.observing = False
    h.remove()
    assert layer.act_q.stat.item() == float(max(seen))
    assert torch.equal(layer.act_q.scale, TorchQuantizer("int8_per_tensor").scales_from_statistic(
        torch.tensor([float(max(seen))], dtype=torch.float32)))
    # frozen: results do not depend on the evaluation batch, nor on the calibration batch size
    one = _logits_by_batch(qm, ids, 1)
    assert torch.equal(_logits_by_batch(qm, ids, 4), one)
    state = {k: v.clone() for k, v in qm.state_dict().items() if k.endswith("act_q.scale")}
    calibrate(qm, calib, batch_size=3)
    assert all(torch.equal(qm.state_dict()[k], v) for k, v in state.items())
    assert evaluate_perplexity(qm, held_out, progress=False).ppl > 1
    # the frozen scales live in the state dict: a fresh static model loads them and is calibrated
    fresh, _ = quantize_model(llama, weights="int8_per_channel", activations="int8", activation_scales="static")
    fresh.load_state_dict(qm.state_dict())
    assert torch.equal(_logits_by_batch(fresh, ids, 4), one)


@pytest.mark.parametrize("rule", ["int8_per_tensor_p99", MSE10])
def test_static_percentile_and_mse_use_the_rule(llama, ids, rule):
    """Percentile / MSE rules: the frozen clip value is the mean of the per-sequence values."""
    qm, _ = quantize_model(llama, activations=rule, activation_scales="static")
    calibrate(qm, ids, batch_size=4)
    layer = qm.model.layers[0].self_attn.q_proj
    tq = TorchQuantizer(rule)
    seen = []
    h = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    layer.act_q.observing = True
    with torch.no_grad():
        qm(ids)
    layer.act_q.observing = False
    h.remove()
    cs = torch.cat([tq.statistic(s) for s in seen[0]]).to(torch.float64)
    c = (cs.sum() / 4).to(torch.float32).reshape(1)
    assert torch.equal(layer.act_q.scale, tq.scales_from_statistic(c))
    amax = TorchQuantizer("int8_per_tensor").statistic(seen[0])
    assert float(c) < float(amax)  # the rule clips: not the absmax


def test_static_errors(llama, ids):
    with pytest.raises(FmtlabError, match="per tensor or per input feature"):
        quantize_model(llama, activations="int8_per_token", activation_scales="static")
    with pytest.raises(FmtlabError, match="per tensor or per input feature"):
        quantize_model(llama, activations="mxfp4", activation_scales="static")
    with pytest.raises(FmtlabError, match="dynamic' or 'static"):
        quantize_model(llama, activations="int8", activation_scales="per_batch")
    with pytest.raises(FmtlabError, match="no static activation"):
        calibrate(quantize_model(llama, activations="int8")[0], ids)
    with pytest.raises(FmtlabError, match="absmax, percentile or MSE"):
        quantize_model(llama, activations="int8_per_tensor_asym", activation_scales="static")


def test_transform_per_sequence_and_fitted_on_calibration(llama, ids):
    """A fitted transform (SmoothQuant, per-tensor INT8 activations): calibrate fits it on the
    calibration split; then logits are batch-independent (the decomposition runs per sequence)
    and the fit does not depend on the calibration batch size."""
    pytest.importorskip("fmtlab.sim.transforms")
    qm, _ = quantize_model(llama, weights="int8_per_channel", activations="int8_per_tensor",
                           transform="smoothquant(alpha=0.5)")
    res = calibrate(qm, ids[:2], batch_size=1)
    assert res.transforms == 14 and res.layers == 0
    one = _logits_by_batch(qm, ids, 1)
    assert torch.equal(_logits_by_batch(qm, ids, 4), one)
    calibrate(qm, ids[:2], batch_size=2)
    assert torch.equal(_logits_by_batch(qm, ids, 2), one)
