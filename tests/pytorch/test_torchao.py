"""torchao ``quantize_`` with :class:`fmtlab.pytorch.torchao_config.FmtlabConfig` (issue 14, item 1).

Invariants (exercised through torchao's own ``quantize_`` and handler registry, no mock):
- ``quantize_(model, FmtlabConfig(w, a), filter_fn=fmtlab_filter(model))`` rewires the same
  layers, with the same quantizers, as ``quantize_model(model, w, a)``: identical logits
  (torch.equal), dynamic and static (after ``calibrate``) activation scales alike;
- with torchao's default filter every nn.Linear is rewired (lm_head too), which equals
  ``quantize_model(..., skip=(), skip_head=False)``;
- a custom ``filter_fn`` is honoured: exactly the layers it selects become QuantLinear, and the
  logits equal ``quantize_model`` with the complementary layers skipped;
- GPT-2 Conv1D layers are rewired through ``fmtlab_filter`` as ``quantize_model`` does;
- torchao's FqnToConfig with FmtlabConfig values equals ``quantize_model``'s ``overrides``;
- ``fmtlab_filter`` selects exactly the layers ``quantize_model`` rewires for the same skip rules,
  and re-quantizes an already rewired model instead of nesting QuantLinears;
- bad specs (unknown names, activations that cannot take static scales) fail at config
  construction; a filter that selects a non-Linear module fails with a
  FmtlabError naming its type.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
pytest.importorskip("transformers", reason="the tiny Llama fixture needs transformers")

from torchao.quantization import quantize_  # noqa: E402

from fmtlab.errors import FmtlabError  # noqa: E402
from fmtlab.pytorch import QuantLinear, calibrate, quantize_model  # noqa: E402
from fmtlab.pytorch import FmtlabConfig, fmtlab_filter  # noqa: E402  (lazy torchao export)
from torch_helpers import VOCAB  # noqa: E402


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(14))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _quantized_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


def test_quantize_matches_quantize_model(llama, ids):
    ref, summary = quantize_model(llama, "mxfp4", "fp8_e4m3_per_token")
    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("mxfp4", "fp8_e4m3_per_token"), filter_fn=fmtlab_filter(m))
    assert _quantized_names(m) == sorted(summary.changed) and len(summary.changed) == 14
    for name in summary.changed:
        a, b = m.get_submodule(name), ref.get_submodule(name)
        assert (a.weight_q.name, a.act_q.name) == (b.weight_q.name, b.act_q.name) == ("mxfp4", "fp8_e4m3_per_token")
    out = _logits(m, ids)
    assert torch.equal(out, _logits(ref, ids))
    assert not torch.equal(out, _logits(llama, ids))  # the rewiring did change the model


def test_default_filter_is_every_linear(llama, ids):
    ref, summary = quantize_model(llama, "int4_g32", "int8_per_token", skip=(), skip_head=False)
    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("int4_g32", "int8_per_token"))
    assert "lm_head" in _quantized_names(m) and _quantized_names(m) == sorted(summary.changed)
    assert torch.equal(_logits(m, ids), _logits(ref, ids))


def test_custom_filter_fn_is_honoured(llama, ids):
    seen = []

    def only_mlp(module, fqn):
        seen.append(fqn)
        return isinstance(module, torch.nn.Linear) and ".mlp." in fqn

    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("nvfp4", "nvfp4"), filter_fn=only_mlp)
    names = _quantized_names(m)
    assert len(names) == 6 and all(".mlp." in n for n in names)
    assert "model.layers.0.self_attn.q_proj" in seen  # torchao asked about the others and skipped them
    ref, _ = quantize_model(llama, "nvfp4", "nvfp4", skip=("self_attn.*", "lm_head"))
    assert torch.equal(_logits(m, ids), _logits(ref, ids))


@pytest.mark.parametrize("skip", [("lm_head",), ("q_proj", "re:layers\\.1\\.mlp"), ()])
def test_fmtlab_filter_selects_what_quantize_model_rewires(llama, skip):
    _, summary = quantize_model(llama, "int8", "int8", skip=skip)
    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("int8", "int8"), filter_fn=fmtlab_filter(m, skip=skip))
    assert _quantized_names(m) == sorted(summary.changed)


def test_requantize_replaces_instead_of_nesting(llama, ids):
    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("int8", "int8"), filter_fn=fmtlab_filter(m))
    quantize_(m, FmtlabConfig("mxfp4", "fp8_e4m3_per_token"), filter_fn=fmtlab_filter(m))
    assert not any(isinstance(q.inner, QuantLinear) for q in m.modules() if isinstance(q, QuantLinear))
    ref, _ = quantize_model(llama, "mxfp4", "fp8_e4m3_per_token")
    assert torch.equal(_logits(m, ids), _logits(ref, ids))


def test_static_scales_calibrate_the_same(llama, ids):
    ref, _ = quantize_model(llama, "int8_per_channel", "int8_per_tensor", activation_scales="static")
    m = copy.deepcopy(llama)
    quantize_(m, FmtlabConfig("int8_per_channel", "int8_per_tensor", activation_scales="static"),
              filter_fn=fmtlab_filter(m))
    calib, held_out = ids[:2], ids[2:]
    assert calibrate(ref, calib).layers == calibrate(m, calib).layers == 14
    assert torch.equal(_logits(m, held_out), _logits(ref, held_out))


def test_fqn_to_config_is_per_layer_overrides(llama, ids):
    """torchao's FqnToConfig (module-name regexes) gives what quantize_model's overrides give."""
    from torchao.quantization import FqnToConfig

    cfg = FqnToConfig({r"re:.*\.mlp\.\w+_proj": FmtlabConfig("int4_g32", "int8_per_token"),
                       r"re:.*\.self_attn\.\w+_proj": FmtlabConfig("mxfp4", "mxfp4")})
    m = copy.deepcopy(llama)
    quantize_(m, cfg, filter_fn=None)
    ref, summary = quantize_model(llama, "mxfp4", "mxfp4",
                                  overrides={"mlp.*": {"weights": "int4_g32", "activations": "int8_per_token"}})
    assert _quantized_names(m) == sorted(summary.changed)
    assert m.get_submodule("model.layers.1.mlp.up_proj").weight_q.name == "int4_g32"
    assert torch.equal(_logits(m, ids), _logits(ref, ids))


def test_errors(llama):
    with pytest.raises(FmtlabError):
        FmtlabConfig("no_such_format_xyz", None)
    with pytest.raises(ValueError, match="grad"):  # check_grad's existing type
        FmtlabConfig("int8", grad="nope")
    with pytest.raises(FmtlabError, match="per tensor or per input"):
        FmtlabConfig("int8", "int8_per_token", activation_scales="static")
    m = copy.deepcopy(llama)
    with pytest.raises(FmtlabError, match="LlamaMLP"):
        quantize_(m, FmtlabConfig("int8"), filter_fn=lambda mod, fqn: fqn.endswith("layers.0.mlp"))


def test_parameter_level_keys_are_refused(llama):
    """A FmtlabConfig quantizes a layer (weight and input), so torchao's parameter-name keys
    are refused by torchao itself (the handler takes no ``parameter_name``)."""
    from torchao.quantization import FqnToConfig

    m = copy.deepcopy(llama)
    with pytest.raises(NotImplementedError, match="parameter quantization"):
        quantize_(m, FqnToConfig({"model.layers.0.mlp.up_proj.weight": FmtlabConfig("int8")}), filter_fn=None)


def test_gpt2_conv1d_through_fmtlab_filter(ids):
    """GPT-2's Conv1D layers (not nn.Linear, so torchao's default filter misses them) are
    rewired through fmtlab_filter exactly as quantize_model rewires them; the tied head is skipped."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()
    ref, summary = quantize_model(gpt2, "int4_g32", "fp8_e4m3_per_token")
    m = copy.deepcopy(gpt2)
    quantize_(m, FmtlabConfig("int4_g32", "fp8_e4m3_per_token"), filter_fn=fmtlab_filter(m))
    assert _quantized_names(m) == sorted(summary.changed) and len(summary.changed) == 8
    assert {m.get_submodule(n).kind for n in summary.changed} == {"conv1d"}
    assert torch.equal(_logits(m, ids), _logits(ref, ids))
