"""``FormatFakeQuantize`` in a real torch.ao.quantization QAT flow (prepare_qat -> train ->
freeze -> convert_qat), and its contract as a FakeQuantizeBase.

Invariants: the module's output is q(x / s) * s with s = amax / fmt.max from its observer (bit
for bit against the numpy path); after convert_qat the model computes exactly what the QAT
model computes in eval mode with observers off, and every weight lies on the format grid times
its per-channel scale.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.quantization import (DeQuantStub, FakeQuantizeBase, QConfig, QuantStub,
                                   disable_observer, prepare_qat)

from fmtlab.formats import PerTensor, Quantizer, Static, get_quantizer
from fmtlab.pytorch import FormatFakeQuantize, convert_qat

from torch_helpers import bits_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.l1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.l2 = nn.Linear(16, 4)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.l2(self.act(self.l1(self.quant(x)))))


def _qconfig(wfmt="int4", afmt="fp8_e4m3", grad="ste"):
    return QConfig(activation=FormatFakeQuantize.with_args(fmt=afmt, grad=grad),
                   weight=FormatFakeQuantize.with_args(fmt=wfmt, ch_axis=0, grad=grad))


def test_is_fake_quantize_base_and_per_tensor_math():
    """Output == numpy Quantizer(fmt, PerTensor(), Static(s)).fake_quantize(x), s = amax / max."""
    fq = FormatFakeQuantize(fmt="fp8_e4m3")
    assert isinstance(fq, FakeQuantizeBase)
    x = torch.randn(32, 7) * 5
    y = fq(x)
    amax = np.float32(np.abs(x.numpy()).max())
    s = np.float32(amax / np.float32(448.0))
    want = Quantizer("fp8_e4m3", PerTensor(), Static(float(s))).fake_quantize(x.numpy())
    np.testing.assert_array_equal(bits_of(y), bits_of(want))
    scale, zp = fq.calculate_qparams()
    assert scale.item() == s and zp.item() == 0


def test_with_fmtlab_quantizer():
    """quantizer= carries format, rounding and granularity (per-channel axis -> ch_axis)."""
    q = get_quantizer("int8_per_channel", rounding="nearest_away")
    fq = FormatFakeQuantize(quantizer=q)
    assert fq.ch_axis == 0 and fq.rounding.value == "nearest_away"
    w = torch.randn(6, 10)
    y = fq(w)
    want = dataclasses.replace(q, scale_rule=Static(tuple(fq.scale.tolist()))).fake_quantize(w.numpy())
    np.testing.assert_array_equal(bits_of(y), bits_of(want))
    with pytest.raises(Exception, match="per tensor or per channel"):
        FormatFakeQuantize(quantizer="mxfp4")


def test_per_channel_scales_and_freeze():
    fq = FormatFakeQuantize(fmt="int4", ch_axis=0)
    w = torch.randn(6, 10)
    y = fq(w)
    amax = w.abs().amax(dim=1)
    assert torch.equal(fq.scale, amax / 7.0)
    codes = (y / fq.scale[:, None])
    assert (codes - codes.round()).abs().max() < 1e-5 and codes.round().abs().max() <= 7
    fq.disable_observer()
    before = fq.scale.clone()
    fq(w * 100)
    assert torch.equal(fq.scale, before)  # frozen: no observation
    fq.disable_fake_quant()
    assert torch.equal(fq(w), w)


def test_state_dict_round_trip():
    fq = FormatFakeQuantize(fmt="int8", ch_axis=0)
    fq(torch.randn(5, 3))
    fresh = FormatFakeQuantize(fmt="int8", ch_axis=0)
    fresh.load_state_dict(fq.state_dict())
    assert torch.equal(fresh.scale, fq.scale)


def test_bad_arguments():
    with pytest.raises(ValueError, match="deterministic"):
        FormatFakeQuantize(fmt="int8", rounding="stochastic")
    with pytest.raises(ValueError, match="grad"):
        FormatFakeQuantize(fmt="int8", grad="x")
    with pytest.raises(Exception, match="no Inf"):
        FormatFakeQuantize(fmt="int8", overflow="inf")


@pytest.mark.parametrize("grad", ["ste", "clipped"])
def test_prepare_qat_train_freeze_convert(grad):
    torch.manual_seed(0)
    model = Tiny()
    model.qconfig = _qconfig(grad=grad)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = prepare_qat(model)
    assert isinstance(qat.l1.weight_fake_quant, FormatFakeQuantize)
    assert isinstance(qat.l1.activation_post_process, FormatFakeQuantize)
    x, target = torch.randn(64, 8), torch.randn(64, 4)
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    losses = []
    w0 = qat.l1.weight.detach().clone()
    for _ in range(8):
        loss = ((qat(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(qat.l1.weight, w0)  # gradients reached the float weights
    assert losses[-1] < losses[0]
    qat.apply(disable_observer)
    qat.eval()
    ref = qat(x)
    conv = convert_qat(qat)
    assert type(conv.l1) is nn.Linear and not hasattr(conv.l1, "weight_fake_quant")
    assert torch.equal(conv(x), ref)
    # converted weights are grid values times the learned per-channel scales
    s = qat.l1.weight_fake_quant.scale
    codes = conv.l1.weight / s[:, None]
    assert (codes - codes.round()).abs().max() < 1e-5 and codes.round().abs().max() <= 7


def test_convert_qat_inplace_keeps_object():
    model = Tiny()
    model.qconfig = _qconfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = prepare_qat(model.train())
    qat(torch.randn(4, 8))
    out = convert_qat(qat, inplace=True)
    assert out is qat and type(qat.l2) is nn.Linear
