"""PEG (per-embedding-group activation quantization): grouping, permutation, calibration, replay."""

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.formats.peg import PegQuantizer, group_bounds, parse_peg_name, range_permutation
from fmtlab.sim.quant import calibrate_static, resolve


def _outlier_acts(seed, rows=64, cols=96, outliers=(3, 50, 77), gain=60.0):
    x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    x[:, list(outliers)] *= gain
    return x


def test_k1_equals_per_tensor_static_bit_for_bit():
    """Invariant: PEG with K = 1 is per-tensor static quantization with the same rule (same bits)."""
    xc, x = _outlier_acts(0), _outlier_acts(1)
    for rule in ("absmax", "percentile(99)", "mse"):
        a = calibrate_static(resolve("int8_per_tensor"), xc, rule)(x)
        b = calibrate_static(resolve("int8_peg1"), xc, rule)(x)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), rule
    # dynamic K = 1 equals the dynamic per-tensor preset
    a = resolve("int8_per_tensor")(x)
    b = resolve("int8_peg1")(x)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_permutation_groups_largest_range_channels_together():
    """Invariant: with the range-based permutation the K largest-range features (K <= d/groups)
    share the last group, and group g's features all have ranges <= those of group g+1."""
    ranges = np.random.default_rng(2).uniform(0.5, 1.0, 96)
    big = [3, 50, 77, 90]
    ranges[big] = [40.0, 55.0, 70.0, 33.0]
    perm, gof = range_permutation(ranges, 6)
    assert sorted(perm.tolist()) == list(range(96))
    assert set(gof[big]) == {5}
    for g in range(5):
        assert ranges[gof == g].max() <= ranges[gof == g + 1].min()
    # without the permutation the groups are contiguous slices
    _, gof0 = range_permutation(ranges, 6, permute=False)
    assert gof0.tolist() == np.repeat(np.arange(6), 16).tolist()
    assert group_bounds(10, 3).tolist() == [0, 4, 7, 10]


def test_peg_reduces_error_on_outlier_channels():
    """A few outlier features: static PEG-6 with permutation beats per-tensor by a wide margin and
    beats PEG-6 without permutation (there the outliers spread over three groups, which puts more
    normal features on a coarse scale, and an outlier whose calibration range was low clips)."""
    xc, x = _outlier_acts(3), _outlier_acts(4)
    mse = {}
    for spec in ("int8_per_tensor", "int8_peg6", "int8_peg6_noperm"):
        q = calibrate_static(resolve(spec), xc, "absmax")
        mse[spec] = float(np.mean((q(x) - x) ** 2))
    assert mse["int8_peg6"] < mse["int8_peg6_noperm"]
    assert mse["int8_peg6"] < 0.5 * mse["int8_per_tensor"]


def test_static_peg_is_frozen_and_group_scales_match():
    """The calibrated quantizer keeps its scales (a scaled-up input clips instead of rescaling);
    each feature's scale is its group's absmax / 127 on the calibration rows."""
    xc = _outlier_acts(5)
    sp = PegQuantizer("int8", 6).calibrate(xc)
    for g in range(6):
        cols = sp.group_of_feature == g
        assert sp.group_scales[g] == np.float32(np.float32(np.abs(xc[:, cols]).max()) / np.float32(127))
    x = 10 * _outlier_acts(6)
    y = sp.fake_quantize(x)
    s = np.asarray(sp.quantizer.scale_rule.scale, dtype=np.float32)
    assert np.all(np.abs(y) <= 128 * s[None, :] * (1 + 1e-6))  # int8 grid: [-128, 127]
    with pytest.raises(FmtlabError, match="calibrated for 96 features"):
        sp.fake_quantize(x[:, :32])


def test_names_and_bad_arguments():
    assert parse_peg_name("int8_peg6") == {"format": "int8", "groups": 6, "permute": True}
    assert parse_peg_name("int4_peg3_noperm") == {"format": "int4", "groups": 3, "permute": False}
    assert parse_peg_name("int8_per_tensor") is None
    with pytest.raises(FmtlabError, match="groups"):
        PegQuantizer("int8", 0)
    with pytest.raises(FmtlabError, match="features"):
        PegQuantizer("int8", 8).fake_quantize(np.ones((2, 4), np.float32))
    with pytest.raises(FmtlabError, match=r"\[tokens, features\]"):
        PegQuantizer("int8", 2).fake_quantize(np.ones(4, np.float32))
    with pytest.raises(FmtlabError, match="override"):
        PegQuantizer.from_name("int8_peg6", axis=1)
    with pytest.raises(FmtlabError, match="nonzero"):
        PegQuantizer("int8", 2).calibrate(np.zeros((3, 4), np.float32))
