"""PT2E flow with :class:`fmtlab.pytorch.pt2e.FmtlabQuantizer` (issue 14, item 2).

Invariants (torch.export + torchao's own prepare_pt2e / convert_pt2e, no mock):
- export -> ``prepare_pt2e(FmtlabQuantizer(w, a, activation_scales="static"))`` -> calibration
  -> ``convert_pt2e`` computes the same outputs, bit for bit (torch.equal), as
  ``quantize_model(model, w, a, activation_scales="static")`` + ``fmtlab.pytorch.calibrate`` on
  the same calibration sequences: the converted graph runs linear(Q_a(x), Q_w(W), b) with the
  same ops as QuantLinear, and calibration observes float activations behind quantized weights;
- the same holds for dynamic (per-sequence) scales, and for calibrating the prepared model with
  ``fmtlab.pytorch.calibrate`` itself;
- the annotated layers are the ones ``quantize_model`` rewires (``lm_head`` skipped by default);
- converting a static model that saw no calibration data raises FmtlabError; bad specs fail at
  construction; GPT-2 Conv1D layers (exported as addmm) are refused, not silently left in float.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")

from torchao.quantization.pt2e import allow_exported_model_train_eval  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402

from fmtlab.errors import FmtlabError  # noqa: E402
from fmtlab.formats import AbsMax, PerChannel, Quantizer  # noqa: E402
from fmtlab.pytorch import calibrate, quantize_model  # noqa: E402
from fmtlab.pytorch.pt2e import FmtlabFakeQuant, FmtlabQuantizer  # noqa: E402
from torch_helpers import VOCAB  # noqa: E402


#: static per-input-feature scales (one per column of the [tokens, in] activations)
FP8_PER_FEATURE = Quantizer("fp8_e4m3", PerChannel(axis=1), AbsMax(), name="fp8_e4m3_per_feature")


class Tiny(nn.Module):
    """Embedding -> residual MLP -> lm_head: token ids in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)
        self.lm_head = nn.Linear(32, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.lm_head(h + self.down(torch.relu(self.up(h))))


class Logits(nn.Module):
    """A causal LM as ids -> logits (what torch.export captures)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def ids():
    # calibration [:2] and evaluation [2:] batches share a shape (the export is static-shaped)
    return torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(14))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def _pt2e(model, example, quantizer, calib=None):
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    if calib is not None:
        with torch.no_grad():
            prepared(calib)
    return convert_pt2e(prepared)


@pytest.mark.parametrize("w,a,mode", [("int8_per_channel", "int8_per_tensor", "static"),
                                      ("mxfp4", FP8_PER_FEATURE, "static"),
                                      ("mxfp4", "fp8_e4m3_per_token", "dynamic"),
                                      ("nvfp4", "nvfp4", "dynamic")])
def test_tiny_matches_quantize_model(tiny, ids, w, a, mode):
    calib, held = ids[:2], ids[2:]
    ref, summary = quantize_model(tiny, w, a, activation_scales=mode)
    if mode == "static":
        calibrate(ref, calib)
    q = FmtlabQuantizer(w, a, activation_scales=mode)
    conv = _pt2e(tiny, calib, q, calib)
    assert q.annotated == summary.changed == ["up", "down"]
    assert sum(isinstance(m, FmtlabFakeQuant) for m in conv.modules()) == 4
    with torch.no_grad():
        out, expect, plain = conv(held), ref(held), tiny(held)
    assert torch.equal(out, expect)
    assert not torch.equal(out, plain)


@pytest.fixture(scope="module")
def llama_ref(llama, ids):
    ref, summary = quantize_model(llama, "int8_per_channel", "int8_per_tensor", activation_scales="static")
    calibrate(ref, ids[:2])
    with torch.no_grad():
        return ref(ids[2:]).logits, summary


def test_llama_static_matches_quantize_model(llama, ids, llama_ref):
    expect, summary = llama_ref
    q = FmtlabQuantizer("int8_per_channel", "int8_per_tensor", activation_scales="static")
    conv = _pt2e(Logits(llama), ids[:2], q, ids[:2])
    assert [n.removeprefix("lm.") for n in q.annotated] == summary.changed and len(q.annotated) == 14
    with torch.no_grad():
        assert torch.equal(conv(ids[2:]), expect)


def test_llama_calibrated_with_fmtlab_calibrate(llama, ids, llama_ref):
    expect, _ = llama_ref
    q = FmtlabQuantizer("int8_per_channel", "int8_per_tensor", activation_scales="static")
    prepared = prepare_pt2e(torch.export.export(Logits(llama), (ids[:2],)).module(), q)
    allow_exported_model_train_eval(prepared)  # calibrate() toggles eval/train
    # batches of 2: the exported graph is specialised to the example's shape
    assert calibrate(prepared, ids[:2], batch_size=2).layers == 14
    conv = convert_pt2e(prepared)
    with torch.no_grad():
        assert torch.equal(conv(ids[2:]), expect)


def test_skip_and_weight_only(tiny, ids):
    q = FmtlabQuantizer("int4_g32", None, skip=("down", "lm_head"))  # skip replaces the default
    conv = _pt2e(tiny, ids[:2], q)
    ref, summary = quantize_model(tiny, "int4_g32", None, skip=("down", "lm_head"))
    assert q.annotated == summary.changed == ["up"]
    assert sum(isinstance(m, FmtlabFakeQuant) for m in conv.modules()) == 1
    with torch.no_grad():
        assert torch.equal(conv(ids[2:]), ref(ids[2:]))


def test_errors(tiny, ids):
    with pytest.raises(FmtlabError):
        FmtlabQuantizer("no_such_format_xyz")
    with pytest.raises(FmtlabError, match="per tensor or per input"):
        FmtlabQuantizer("int8", "int8_per_token", activation_scales="static")
    q = FmtlabQuantizer("int8", "int8_per_tensor", activation_scales="static")
    with pytest.raises(FmtlabError, match="saw no activations"):
        _pt2e(tiny, ids[:2], q)  # no calibration batch


def test_gpt2_conv1d_is_refused(ids):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()
    exported = torch.export.export(Logits(gpt2), (ids[:2],)).module()
    with pytest.raises(FmtlabError, match="Conv1D.*quantize_model or FmtlabConfig"):
        prepare_pt2e(exported, FmtlabQuantizer("int8", "int8"))
