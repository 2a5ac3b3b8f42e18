"""HiFloat8 (arXiv 2409.16626) and E1M2: exhaustive oracle tests, en_dtypes as the peer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.formats import get_format
from fmtlab.formats import strategies as fst
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.strategies import boundary_points

MODES = ("nearest_even", "nearest_away", "toward_zero")


def test_hifloat8_facts():
    h = get_format("hifloat8")
    assert get_format("hif8") == h
    assert (h.max, h.smallest_positive, h.min_normal) == (32768.0, 2.0 ** -22, 2.0 ** -15)
    assert h.nan_codes == {0x80} and h.inf_codes == {0x6F, 0xEF} and not h.has_negative_zero
    v = h.values()
    assert v[0x08] == 1.0 and v[0x01] == 2.0 ** -22 and v[0x6E] == 32768.0
    assert len(set(v[np.isfinite(v)].tolist())) == 255 - 2  # 253 distinct finite values
    x = np.array([40959.0, 40960.0, 1e9, -1e9, np.nan])
    assert h.encode(x).tolist() == [0x6E, 0x6E, 0x6F, 0xEF, 0x80]  # the tie 40960 keeps 0x6E (even)
    assert h.encode(x, "nearest_away").tolist() == [0x6E, 0x6F, 0x6F, 0xEF, 0x80]
    assert h.encode(np.array([1e9]), overflow="saturate").tolist() == [0x6E]


@pytest.mark.parametrize("name", ["hifloat8", "fp4_e1m2"])
def test_exhaustive_against_the_oracle(name):
    fmt = get_format(name)
    for dt in (np.float32, np.float64):
        x = boundary_points(fmt, dt)
        if not fmt.has_nan:
            x = x[~np.isnan(x)]
        for mode in MODES:
            np.testing.assert_array_equal(fmt.encode(x, mode), oracle_encode(fmt, x, mode))
        u = np.random.default_rng(0).random(x.size)
        np.testing.assert_array_equal(fmt.encode(x, "stochastic", seed=0),
                                      oracle_encode(fmt, x, "stochastic", rand=u))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_hifloat8(data):
    h = get_format("hifloat8")
    x = np.array(data.draw(st.lists(fst.float_inputs(h, 32), min_size=1, max_size=16)), np.float32)
    mode = data.draw(fst.roundings(stochastic=False))
    c = h.encode(x, mode)
    np.testing.assert_array_equal(c, oracle_encode(h, x, mode))
    q = h.decode(c)
    fin = np.isfinite(q)
    np.testing.assert_array_equal(h.encode(q[fin], mode), c[fin])


def _en_dtypes():
    return pytest.importorskip("en_dtypes", reason="en_dtypes (HiFloat8 / float4_e1m2 peer) is not installed")


@pytest.mark.parametrize("name, peer, mode", [("hifloat8", "hifloat8", "nearest_away"),
                                              ("fp4_e1m2", "float4_e1m2", "nearest_even")])
def test_bit_exact_with_en_dtypes(name, peer, mode):
    """Decode of every code and the cast of every float32 boundary point and 10^5 random float32
    inputs (HiF8's own round-half-away; E1M2 round-to-nearest-even, saturating)."""
    ed = _en_dtypes()
    t = getattr(ed, peer)
    fmt = get_format(name)
    n = 1 << fmt.bits
    pv = np.arange(n, dtype=np.uint8).view(t).astype(np.float64)
    v = fmt.values()
    assert np.array_equal(np.isnan(v), np.isnan(pv))
    np.testing.assert_array_equal(v[~np.isnan(v)], pv[~np.isnan(pv)])
    rng = np.random.default_rng(1)
    r = (rng.standard_normal(100_000) * np.exp2(rng.integers(-24, 17, 100_000))).astype(np.float32)
    x = np.concatenate([boundary_points(fmt, np.float32), r])
    if not fmt.has_nan:
        x = x[~np.isnan(x)]  # en_dtypes maps NaN to a zero code; fmtlab raises
    got = fmt.encode(x, mode, overflow=None if fmt.has_inf else "saturate")
    want = x.astype(t).view(np.uint8)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(want[i])) for i in bad[:6]]


@pytest.mark.parametrize("name", ["hifloat8", "fp4_e1m2"])
def test_torch_path_is_bit_exact(name):
    torch = pytest.importorskip("torch")
    from fmtlab.pytorch import fake_quantize

    fmt = get_format(name)
    x = boundary_points(fmt, np.float32)
    if not fmt.has_nan:
        x = x[~np.isnan(x)]
    want = fmt.quantize(x)
    got = fake_quantize(torch.from_numpy(x.copy()), name).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)].view(np.uint32), want[~np.isnan(want)].view(np.uint32))


def test_hifloat8_vectors(tmp_path):
    from fmtlab.formats.vectors import write_vectors

    paths = write_vectors("hifloat8", tmp_path, n=100)
    assert {p.name for p in paths} >= {"hifloat8.decode.hex", "hifloat8.encode.csv"}
