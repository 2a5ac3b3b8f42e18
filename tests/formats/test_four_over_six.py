"""NVFP4 Four Over Six (arXiv 2512.02010) held to an independent per-block restatement."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.scaling import FourOverSix, parse_scale_rule

F32 = np.float32


def _candidate(xi, g, target, e2m1, e4m3):
    s_rel = F32(F32(F32(np.abs(xi).max()) / F32(target)) / g)
    sc = max(1, int(oracle_encode(e4m3, np.array([s_rel]), "nearest_even", "saturate")[0]))
    S = F32(g * F32(e4m3.values()[sc]))
    codes = oracle_encode(e2m1, (xi / S).astype(F32), "nearest_even", "saturate")
    out = (e2m1.values()[codes] * np.float64(S)).astype(F32)
    return sc, codes, out


@pytest.mark.parametrize("metric", ["mse", "l1", "abs_max"])
def test_matches_the_two_candidate_rule(metric):
    e2m1, e4m3 = get_format("fp4_e2m1"), get_format("fp8_e4m3")
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, size=(48, 16)) * np.exp2(rng.integers(-6, 6, (48, 1)))).astype(F32)
    q = get_quantizer("nvfp4", scale_rule=f"four_over_six({metric})")
    qt = q.quantize(x)
    g = F32(F32(np.abs(x).max()) / F32(F32(256.0) * F32(6.0)))
    assert F32(qt.tensor_scale) == g
    fq = q.fake_quantize(x)
    picked4 = 0
    for i, xi in enumerate(x):
        c6, c4 = _candidate(xi, g, 6.0, e2m1, e4m3), _candidate(xi, g, 4.0, e2m1, e4m3)
        d6 = c6[2].astype(np.float64) - xi
        d4 = c4[2].astype(np.float64) - xi
        err = {"mse": lambda d: np.sum(d * d), "l1": lambda d: np.sum(np.abs(d)),
               "abs_max": lambda d: np.max(np.abs(d))}[metric]
        sc, codes, out = c4 if err(d4) < err(d6) else c6
        picked4 += err(d4) < err(d6)
        assert qt.scale_codes.reshape(-1)[i] == sc
        np.testing.assert_array_equal(qt.codes[i], codes)
        np.testing.assert_array_equal(fq[i].view(np.uint32), out.view(np.uint32))
    assert 0 < picked4 < len(x)  # both candidates occur


def test_lower_block_error_than_nvfp4_on_every_block():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 16)).astype(F32)
    q = get_quantizer("nvfp4", scale_rule="4over6")
    y = q.fake_quantize(x).astype(np.float64)
    # the chosen candidate is never worse than the "6" candidate of the same tensor scale
    e2m1, e4m3 = get_format("fp4_e2m1"), get_format("fp8_e4m3")
    g = F32(q.quantize(x).tensor_scale)
    for xi, yi in zip(x, y):
        six = _candidate(xi, g, 6.0, e2m1, e4m3)[2].astype(np.float64)
        assert np.sum((yi - xi) ** 2) <= np.sum((six - xi) ** 2)


def test_names_and_refusals():
    assert parse_scale_rule("four_over_six") == FourOverSix() == parse_scale_rule("4/6")
    assert str(FourOverSix("l1")) == "four_over_six(l1)"
    with pytest.raises(FmtlabError):
        get_quantizer("mxfp4", scale_rule="four_over_six")  # E8M0 blocks
    with pytest.raises(FmtlabError):
        get_quantizer("fp8_e4m3_per_tensor", scale_rule="four_over_six")
    with pytest.raises(FmtlabError):
        FourOverSix("max")


@pytest.mark.parametrize("metric", ["mse", "abs_max"])
def test_torch_path_is_bit_exact(metric):
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize

    rng = np.random.default_rng(7)
    x = (rng.standard_t(3, size=(64, 32)) * np.exp2(rng.integers(-6, 6, (64, 1)))).astype(F32)
    q = get_quantizer("nvfp4", scale_rule=f"four_over_six({metric})")
    got = fake_quantize(torch.from_numpy(x.copy()), q).numpy()
    np.testing.assert_array_equal(got.view(np.uint32), q.fake_quantize(x).view(np.uint32))


def test_own_quantizer_name():
    """``nvfp4_4over6`` (alias ``nvfp4_four_over_six``) is NVFP4 with the Four Over Six rule, and
    canonical names spell the rule (``str`` round-trips)."""
    from fmtlab.formats import parse_quantizer

    x = np.random.default_rng(8).standard_normal((8, 64)).astype(F32)
    want = get_quantizer("nvfp4", scale_rule="four_over_six").fake_quantize(x)
    for name in ("nvfp4_4over6", "nvfp4_four_over_six", "NVFP4_4over6"):
        np.testing.assert_array_equal(get_quantizer(name).fake_quantize(x).view(np.uint32),
                                      want.view(np.uint32))
    assert str(parse_quantizer("nvfp4", scale_rule="4over6")) == "nvfp4_4over6"
    assert str(parse_quantizer("nvfp4", scale_rule="4over6(l1)")) == "nvfp4(scale_rule=four_over_six(l1))"
