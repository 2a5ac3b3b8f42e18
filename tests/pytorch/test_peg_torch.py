"""PEG and fitted-base log weights through quantize_model and replay on the tiny llama fixture."""

import numpy as np
import pytest
import torch

from fmtlab.errors import FmtlabError
from fmtlab.formats.logfit import FittedLogQuantizer
from fmtlab.formats.peg import PegQuantizer
from fmtlab.pytorch import calibrate
from fmtlab.pytorch.logfit import torch_log_fit
from fmtlab.pytorch.model import QuantLinear
from fmtlab.pytorch.peg import PegActivation, quantize_model_peg
from torch_helpers import VOCAB


def _ids(seed=1, n=3, t=16):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _float_inputs(model, ids):
    """Inputs [tokens, in] of every Linear of the float model over ``ids`` (sequence-major)."""
    got, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: got.setdefault(n, []).append(inp[0].detach().reshape(-1, inp[0].shape[-1]))))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v).numpy() for n, v in got.items()}


def test_torch_peg_scales_and_outputs_equal_numpy_static_peg(llama):
    """Invariant: the frozen PEG scales of every layer (weights in float, so calibration inputs are
    the float model's) are StaticPeg's on the same rows, and a layer's PEG output is
    StaticPeg.fake_quantize bit for bit."""
    ids = _ids()
    qm, summary = quantize_model_peg(llama, weights=None, activations="int8_peg4")
    calibrate(qm, ids, seq_len=None)
    inputs = _float_inputs(llama, ids)
    pegs = {m.layer_name: m.act_q for m in qm.modules() if isinstance(m, QuantLinear)}
    assert pegs and all(isinstance(a, PegActivation) for a in pegs.values())
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    for name, act in pegs.items():
        sp = PegQuantizer("int8", 4).calibrate(inputs[name])
        ref = np.asarray(sp.quantizer.scale_rule.scale, dtype=np.float32)
        assert np.array_equal(act.scale.numpy().view(np.uint32), ref.view(np.uint32)), name
        assert np.array_equal(act.group_of_feature.numpy(), sp.group_of_feature), name
        if act.scale.numel() == 64:
            y = act(x).numpy()
            assert np.array_equal(y.view(np.uint32), sp.fake_quantize(x.numpy()).view(np.uint32))
    assert all(r["activations"] == "int8_peg4 (static)" for r in summary.rows)


def test_mixed_precision_keeps_down_proj_inputs_in_16_bit(llama):
    """The mixed-precision option: down_proj inputs get 16-bit per-tensor static scales, the rest PEG."""
    qm, _ = quantize_model_peg(llama, activations="int8_peg4", mixed_precision=True)
    calibrate(qm, _ids(), seq_len=None)
    for m in qm.modules():
        if isinstance(m, QuantLinear):
            if m.layer_name.endswith("down_proj"):
                assert not isinstance(m.act_q, PegActivation) and m.act_q.tq.format.bits == 16
            else:
                assert isinstance(m.act_q, PegActivation)
    assert torch.isfinite(qm(_ids(3)).logits).all()


def test_peg_in_quantize_model_bad_arguments(llama):
    with pytest.raises(FmtlabError, match="absmax"):
        quantize_model_peg(llama, activations=PegQuantizer("int8", 4, scale_rule="mse"))
    with pytest.raises(FmtlabError, match="features"):
        quantize_model_peg(llama, activations="int8_peg65")
    with pytest.raises(FmtlabError, match="static"):
        quantize_model_peg(llama, activation_scales="dynamic")
    qm, _ = quantize_model_peg(llama, activations="int8_peg4")
    with pytest.raises(FmtlabError, match="never calibrated"):
        qm(_ids())


def test_fitted_log_weights_in_quantize_model_equal_numpy(llama):
    """quantize_model with torch_log_fit weights uses FittedLogQuantizer's weights bit for bit."""
    from fmtlab.pytorch import quantize_model

    qm, _ = quantize_model(llama, weights=torch_log_fit("log4_fitb_per_channel"))
    lin = qm.model.layers[0].mlp.down_proj
    ref = FittedLogQuantizer(4, 0).fake_quantize(lin.inner.weight.detach().numpy())
    assert np.array_equal(lin.quantized_weight().detach().numpy().view(np.uint32), ref.view(np.uint32))
    assert torch.isfinite(qm(_ids()).logits).all()


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % VOCAB for b in text.encode("utf-8")]}

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def test_peg_and_fitted_log_through_replay(llama, tmp_path):
    """Replay on traces of the tiny llama: static PEG with K = 1 reproduces per-tensor static W8A8
    exactly (same output error per layer); PEG-4 and the fitted-log weights run and score finite."""
    from fmtlab.models.record import record
    from fmtlab.sim.replay import replay

    texts = ["The quick brown fox jumps over the lazy dog. " * 8, "Pack my box with five dozen liquor jugs! " * 8]
    ev = record(llama, _Tok(), texts, str(tmp_path / "ev"), seq_len=16, n_sequences=2, progress=False)
    cal = record(llama, _Tok(), texts[::-1], str(tmp_path / "cal"), seq_len=16, n_sequences=2, progress=False)
    res = replay(ev, ["w8a8_int_tensor_static", "k1:w=int8_per_tensor;a=int8_peg1;c=absmax",
                      "peg4:w=int8_per_tensor;a=int8_peg4;c=absmax", "w4a8_log4_fitb"],
                 calib=cal, kinds=["linear"], progress=False, workers=1)
    by = {}
    for r in res.rows:
        by.setdefault(r["config"], {})[r["tensor"]] = r
    assert by["k1"].keys() == by["w8a8_int_tensor_static"].keys()
    for t, r in by["k1"].items():
        assert r["out_mse"] == by["w8a8_int_tensor_static"][t]["out_mse"]
    for cfg in ("peg4", "w4a8_log4_fitb"):
        assert all(np.isfinite(r["out_sqnr_db"]) for r in by[cfg].values())
