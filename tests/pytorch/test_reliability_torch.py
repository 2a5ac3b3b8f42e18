"""Issue 23 regressions in the PyTorch plug-in: int64 inputs above 2**53 (same rule as numpy),
FormatFakeQuantize's non-finite rule (NaN propagates, Inf saturates, the observer never sees
them), clear errors from the Python API, padded batches (dynamic scales over real positions
only), and ``torch.compile`` of ``fake_quantize`` as a format's first use in a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import get_format
from fmtlab.pytorch import FormatFakeQuantize, encode, evaluate_perplexity, quantize_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------ int64 inputs

def test_int64_above_2_53_is_refused_like_numpy():
    """Before: the torch path gave 0x5A00 (rounded to float64, then to bf16), the correct code
    is 0x5A01; numpy raises. Now both raise the same FormatError."""
    v = 2 ** 53 + 2 ** 45 + 1
    with pytest.raises(FormatError, match="not exactly representable in float64") as np_err:
        get_format("bf16").encode(np.array([v], dtype=np.int64))
    with pytest.raises(FormatError, match="not exactly representable in float64") as t_err:
        encode(torch.tensor([v]), "bf16")
    assert str(np_err.value) == str(t_err.value)
    exact = np.array([2 ** 60, -(2 ** 62), 2 ** 53 + 2, 7], dtype=np.int64)  # on the float64 grid
    np.testing.assert_array_equal(encode(torch.from_numpy(exact), "bf16").numpy().astype(np.int64),
                                  get_format("bf16").encode(exact).astype(np.int64))


# ------------------------------------------------------------------------------ FormatFakeQuantize

def test_fake_quantize_module_nan_propagates_and_never_moves_the_scale():
    """Before: NaN became 0 silently. Now NaN in gives NaN out at that position; the other
    positions and the scale are those of the batch without the NaN (observed as 0)."""
    x = torch.tensor([1.0, -3.0, 2.0, 0.5])
    xn = x.clone()
    xn[3] = float("nan")
    a, b = FormatFakeQuantize("int8"), FormatFakeQuantize("int8")
    ya, yb = a(xn), b(torch.where(torch.isnan(xn), torch.zeros_like(xn), xn))
    assert torch.isnan(ya[3]) and not torch.isnan(ya[:3]).any()
    assert torch.equal(ya[:3], yb[:3]) and torch.equal(a.scale, b.scale)


def test_fake_quantize_module_inf_does_not_poison_the_observer():
    """Before: after one batch with an Inf the scale stayed 1.0 for good and later batches were
    fake-quantized silently wrong. Now Inf saturates and the observer never sees it."""
    poisoned, clean = FormatFakeQuantize("int8"), FormatFakeQuantize("int8")
    x = torch.tensor([1.0, -3.0, 2.0, 0.5])
    xi = x.clone()
    xi[0] = float("inf")
    y = poisoned(xi)
    clean(torch.tensor([0.0, -3.0, 2.0, 0.5]))
    assert torch.equal(poisoned.scale, clean.scale) and poisoned.scale.item() != 1.0
    assert y[0].item() == 3.0 == (127 * poisoned.scale).item()  # saturated to the largest code (127 s)
    later = torch.tensor([0.2, 2.5, -1.0, 3.0])
    assert torch.equal(poisoned(later), clean(later))
    assert torch.equal(poisoned.scale, clean.scale)
    pc = FormatFakeQuantize("int8", ch_axis=0)
    pc(torch.tensor([[float("-inf"), 1.0], [2.0, 4.0]]))
    assert torch.isfinite(pc.scale).all() and pc.scale[0].item() == torch.tensor(1.0 / 127).item()


def test_fake_quantize_module_bad_ch_axis_is_a_clear_error():
    """Before: FormatFakeQuantize("int8", ch_axis=5) leaked an IndexError from the observer."""
    with pytest.raises(FmtlabError, match="channel axis is out of range"):
        FormatFakeQuantize("int8", ch_axis=5)(torch.randn(3, 4))
    with pytest.raises(FmtlabError, match="ch_axis must be an int"):
        FormatFakeQuantize("int8", ch_axis="0")


def test_evaluate_perplexity_of_nothing_is_a_clear_error():
    """Before: an empty batch reached torch.cat([]) (RuntimeError)."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    for data, kw in ((torch.empty(0, 8, dtype=torch.long), {}), (torch.zeros(2, 8, dtype=torch.long),
                                                                 {"n_sequences": 0}),
                     (torch.zeros(2, 8, dtype=torch.long), {"n_sequences": -1}),
                     (torch.zeros(2, 8, dtype=torch.long), {"seq_len": 1})):
        with pytest.raises(FmtlabError):
            evaluate_perplexity(model, data, progress=False, **kw)


# ------------------------------------------------------------------------------ padded batches

def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("act", ["int8_per_tensor", "nvfp4"])
def test_padded_sequence_gets_the_logits_it_gets_alone(act):
    """The padded-batch rule: a right-padded sequence with its attention mask gets the quantized
    logits it gets alone (before: the per-tensor scales included the padded positions)."""
    model = _tiny_llama()
    with torch.no_grad():  # the pad token's normalized embedding is one large channel: it owns the absmax
        model.model.embed_tokens.weight[96] = 0.0
        model.model.embed_tokens.weight[96, 0] = 1.0
    qm, _ = quantize_model(model, "int8_per_channel", act)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(1, 97, (1, 6), generator=g)
    b = torch.randint(1, 97, (1, 10), generator=g)
    pad = torch.full((1, 4), 96)
    batch = torch.cat([torch.cat([a, pad], 1), b])
    mask = torch.ones_like(batch)
    mask[0, 6:] = 0
    with torch.no_grad():
        alone = qm(input_ids=a).logits[0]
        padded = qm(input_ids=batch, attention_mask=mask).logits[0, :6]
        unmasked = qm(input_ids=batch).logits[0, :6]  # no mask: the pads are real tokens to it
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert (unmasked - alone).abs().max() > 1e-3  # the pads would have changed the scales


def test_padded_batch_that_cannot_be_aligned_is_refused():
    from fmtlab.pytorch.activations import _PADDING, quantize_per_sequence
    from fmtlab.pytorch.specs import resolve

    q = resolve("int8_per_tensor", "activations")
    _PADDING.mask = torch.tensor([[True, False]])
    try:
        with pytest.raises(FmtlabError, match="cannot be aligned"):
            quantize_per_sequence(q, torch.randn(3, 4, 8))
        assert quantize_per_sequence(resolve("int8_per_token", "activations"), torch.randn(3, 4, 8)).shape == (3, 4, 8)
    finally:
        _PADDING.mask = None


# ------------------------------------------------------------------------------ torch.compile

def test_compile_as_first_use_of_a_format_in_the_process():
    """Before: torch.compile of fake_quantize failed for MX/NVFP4/per-token/grouped specs when it
    was the first use of the format in the process (numpy-built format facts were traced). A fresh
    interpreter compiles each first (the eager backend: the tracing is what failed) and compares
    with the eager result bit for bit."""
    code = textwrap.dedent("""
        import torch
        from fmtlab.pytorch import fake_quantize
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
        for spec in ("mxfp4", "nvfp4", "int8_per_token", "int4_g32", "fp8_e4m3"):
            f = torch.compile(lambda t, s=spec: fake_quantize(t, s), backend="eager", fullgraph=False)
            y = f(x)
            assert torch.equal(y, fake_quantize(x, spec)), spec
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
