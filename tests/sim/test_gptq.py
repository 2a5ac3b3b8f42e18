"""GPTQ (fmtlab.sim.gptq): a hand-worked example, the laws OPTQ obeys, and every quantizer kind."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtlab.errors import FmtlabError
from fmtlab.formats import Quantizer
from fmtlab.formats.kernels import Cols, fq_scaled, fq_vector
from fmtlab.formats.presets import get_quantizer
from fmtlab.formats.registry import get_format
from fmtlab.formats.scaling import PerBlock, PerGroup, Static
from fmtlab.sim.gptq import _inverse_cholesky, gptq, hessian_error, prepare_hessian, row_errors, rtn

# U = chol(H^-1) (upper) of the hand-worked example: 1 on the diagonal, 0.5 above it
_U = np.eye(4) + 0.5 * np.eye(4, k=1)
_UINV = np.linalg.inv(_U)  # entries (-1/2)^(k - j): exact
_H = _UINV @ _UINV.T  # H = (U^T U)^-1, dyadic entries


def test_hand_worked_4x4():
    """INT4 at a static scale of 1 (grid -8..7, nearest-even, saturating), damp=0, H = (U^T U)^-1
    with U = I + 0.5 * (superdiagonal), so U[j, j] = 1 and the only update is
    w[j+1] -= 0.5 * (w[j] - q[j]).

    row 0 [1.375, 0.625, 1.625, -0.375]:
      q0 = 1, e = 0.375 -> w1 = 0.625 - 0.1875 = 0.4375 -> q1 = 0, e = 0.4375
      -> w2 = 1.625 - 0.21875 = 1.40625 -> q2 = 1, e = 0.40625
      -> w3 = -0.375 - 0.203125 = -0.578125 -> q3 = -1          GPTQ [1, 0, 1, -1]; RTN [1, 1, 2, 0]
    row 1 [-0.25, 0.25, 2.75, 6.875]:
      q0 = 0, e = -0.25 -> w1 = 0.375 -> q1 = 0, e = 0.375 -> w2 = 2.5625 -> q2 = 3, e = -0.4375
      -> w3 = 7.09375 -> q3 = 7                                 GPTQ [0, 0, 3, 7];  RTN [0, 0, 3, 7]
    row 2 [7.75, 7.0, -7.5, -8.5] (saturation at 7 and -8):
      q0 = 7, e = 0.75 -> w1 = 6.625 -> q1 = 7, e = -0.375 -> w2 = -7.3125 -> q2 = -7, e = -0.3125
      -> w3 = -8.34375 -> q3 = -8                               GPTQ [7, 7, -7, -8]; RTN [7, 7, -8, -8]
    row 3 zeros -> zeros.
    Proxy loss = sum of e^2 / 2 over all columns (U[j, j] = 1)."""
    W = np.array([[1.375, 0.625, 1.625, -0.375],
                  [-0.25, 0.25, 2.75, 6.875],
                  [7.75, 7.0, -7.5, -8.5],
                  [0.0, 0.0, 0.0, 0.0]], np.float32)
    q = Quantizer("int4", scale_rule=Static(1.0))
    res = gptq(W, _H, q, damp=0.0, rtn_fallback=False)
    expect = np.array([[1, 0, 1, -1], [0, 0, 3, 7], [7, 7, -7, -8], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(res.weight, expect)
    np.testing.assert_array_equal(rtn(W, q), [[1, 1, 2, 0], [0, 0, 3, 7], [7, 7, -8, -8], [0, 0, 0, 0]])
    errs = [0.375, 0.4375, 0.40625, 0.421875, -0.25, 0.375, -0.4375, 0.09375,
            0.75, -0.375, -0.3125, -0.34375]
    assert res.proxy_loss == pytest.approx(sum(e * e for e in errs) / 2, rel=1e-12)
    assert hessian_error(W, res.weight, _H) == pytest.approx(2 * res.proxy_loss, rel=1e-12)
    assert hessian_error(W, res.weight, _H) < hessian_error(W, rtn(W, q), _H)
    v = get_format("int4").values()
    np.testing.assert_array_equal(v[res.codes.astype(np.intp)], expect)
    # per row d H d^T (dyadic, exact in float64): row 0 GPTQ 0.675048828125 > RTN 0.573486328125
    # (greedy OPTQ loses this row), row 1 equal (0.40332031250 both: same codes), row 2 GPTQ
    # 0.918945312500 < RTN 1.887695312500: the default fallback keeps RTN's row 0, GPTQ's others
    np.testing.assert_array_equal(row_errors(W, res.weight, _H), [0.675048828125, 0.4033203125, 0.9189453125, 0])
    np.testing.assert_array_equal(row_errors(W, rtn(W, q), _H), [0.573486328125, 0.4033203125, 1.8876953125, 0])
    fb = gptq(W, _H, q, damp=0.0)
    np.testing.assert_array_equal(fb.fallback, [True, False, False, False])
    np.testing.assert_array_equal(fb.weight, [[1, 1, 2, 0], [0, 0, 3, 7], [7, 7, -7, -8], [0, 0, 0, 0]])


def test_inverse_cholesky_is_the_reference_factor():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 12))
    H = X.T @ X
    U = _inverse_cholesky(H)
    np.testing.assert_allclose(U.T @ U, np.linalg.inv(H), rtol=1e-10, atol=1e-12)
    assert np.all(np.tril(U, -1) == 0) and np.all(np.diag(U) > 0)
    np.testing.assert_allclose(_inverse_cholesky(_H), _U, atol=1e-14)


def test_sixteen_bit_quantizer_leaves_weights_unchanged():
    """int16 per channel: GPTQ moves each weight by at most a few grid steps (absmax / 32767) of
    its row; fp16 at scale 1 by at most a few fp16 ulps of the row's largest weight (the rounding
    error of large weights is compensated on the others)."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((16, 64)).astype(np.float32)
    X = rng.standard_normal((256, 64)) @ rng.standard_normal((64, 64))
    H = 2 * X.T @ X / 256
    q = Quantizer("int16", "channel")
    res = gptq(W, H, q)
    step = np.abs(W).max(axis=1, keepdims=True) / 32767
    assert np.all(np.abs(res.weight - W) <= 4 * step)
    res16 = gptq(W, H, Quantizer("fp16", scale_rule=Static(1.0)))
    ulp = 2.0 ** -11 * np.abs(W).max(axis=1, keepdims=True)  # fp16 ulp (relative) at the row's max
    assert np.all(np.abs(res16.weight - W) <= 4 * ulp)


QUANTIZERS = {
    "int4_per_channel": get_quantizer("int4_per_channel"),
    "int4_g16": Quantizer("int4", "group:16"),
    "int4_g16_asym": Quantizer("int4", "group:16", scale_rule="minmax"),
    "int4_mse": Quantizer("int4", "channel", scale_rule="mse"),
    "dint4_per_channel": get_quantizer("dint4_per_channel"),
    "log4_g16": Quantizer("log4", "group:16"),
    "nf4_g16": Quantizer("nf4", "group:16"),
    "fp4_g16": Quantizer("fp4_e2m1", "group:16"),
    "nvfp4": get_quantizer("nvfp4"),
    "mxfp4": get_quantizer("mxfp4"),
    "mxint8": Quantizer("int8_sym", PerBlock(32)),
    "int4_per_input": Quantizer("int4", "channel:1"),
    "int4_rowgroups": Quantizer("int4", PerGroup(4, axis=0)),
    "int4_tensor_pow2": Quantizer("int4", "tensor", pow2=True),
}


def _layer(seed: int, R: int = 8, C: int = 64, n: int = 256):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, C)) * rng.lognormal(0, 1, C)
    X = X @ (np.eye(C) + 0.3 * rng.standard_normal((C, C)))
    W = (rng.standard_normal((R, C)) * 0.05).astype(np.float32)
    return W, 2 * X.T @ X / n


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_quantizer_kind_codes_and_scales_are_its_own(name):
    """The result is the quantizer's own: its dequantize of (codes, scales) is the GPTQ weight bit
    for bit; the weights are a fixed point of the quantizer's rounding at those scales; and on a
    correlated 8 x 64 layer GPTQ's calibration error is below RTN's."""
    q = QUANTIZERS[name]
    W, H = _layer(3)
    res = gptq(W, H, q)
    deq = q.dequantize(res.qtensor(q))
    assert np.array_equal(deq.view(np.uint32), res.weight.view(np.uint32))
    assert hessian_error(W, res.weight, H) < hessian_error(W, rtn(W, q), H)


def test_fq_vector_matches_fq_scaled():
    rng = np.random.default_rng(2)
    for fmt in ("int4", "fp4_e2m1", "dint4", "nf4", "log4", "fp8_e4m3"):
        f = get_format(fmt)
        x = rng.standard_normal(100) * 3
        s = rng.uniform(0.1, 2, 100).astype(np.float32)
        a = fq_vector(f, x, s)
        b = fq_scaled(f, x.reshape(1, -1), Cols(100), s).reshape(-1)
        assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), fmt


def test_dead_columns_and_act_order():
    W, H = _layer(4)
    H[5, :] = H[:, 5] = 0
    q = get_quantizer("int4_per_channel")
    res = gptq(W, H, q, act_order=True, rtn_fallback=False)
    assert res.dead[5] and np.all(res.weight[:, 5] == 0)
    assert sorted(res.perm.tolist()) == list(range(64))
    assert hessian_error(W, res.weight, H) < hessian_error(W, rtn(W, q), H)
    with pytest.raises(FmtlabError, match="static_groups"):
        gptq(W, H, Quantizer("int4", "group:16"), act_order=True)
    rs = gptq(W, H, Quantizer("int4", "group:16"), act_order=True, static_groups=True)
    assert np.all(rs.weight[:, 5] == 0)


def test_bad_input():
    W, H = _layer(5)
    q = get_quantizer("int4_per_channel")
    with pytest.raises(FmtlabError, match="hessian must be"):
        gptq(W, H[:10, :10], q)
    with pytest.raises(FmtlabError, match="NaN or Inf"):
        gptq(np.where(W > 0.1, np.nan, W), H, q)
    with pytest.raises(FmtlabError, match="does not divide"):
        gptq(W[:, :60], H[:60, :60], Quantizer("int4", "group:16"))
    with pytest.raises(FmtlabError, match="not positive definite"):
        gptq(W, -H, q)


# ---- the laws ---------------------------------------------------------------------------------
# "GPTQ's calibration error is never above RTN's" is false for the reference OPTQ (rtn_fallback=
# False): it is greedy (Babai's nearest plane on the lattice of H), so on a few percent of small
# random layers RTN wins. fmtlab's default gptq keeps RTN's rows there (test_never_above_rtn); the
# laws of the OPTQ pass itself are tested with rtn_fallback=False.

@st.composite
def layers(draw):
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    R = 4 * draw(st.integers(1, 2))  # row groups of 4
    C = 32 * draw(st.integers(1, 2))  # MX blocks of 32
    n = draw(st.integers(C, 3 * C))
    X = rng.standard_normal((n, C)) * rng.lognormal(0, 1, C)
    if draw(st.booleans()):
        X = X @ rng.standard_normal((C, C))
    W = (rng.standard_normal((R, C)) * rng.lognormal(-2, 1, (R, 1))).astype(np.float32)
    return W, 2 * X.T @ X / n


def _damped(H, damp=0.01):
    Hd = H.copy()
    dead = np.diag(Hd) == 0
    Hd[dead, dead] = 1
    Hd[np.diag_indices_from(Hd)] += damp * np.mean(np.diag(Hd))
    return Hd


@settings(max_examples=30)
@given(layers(), st.sampled_from(sorted(QUANTIZERS)), st.booleans())
def test_law_error_is_the_sum_of_residuals(layer, name, act_order):
    """For ANY quantizer: tr((W - Q) H_d (W - Q)^T) = sum_j ||w'_j - q_j||^2 / U[j, j]^2
    (= 2 * proxy_loss), H_d the dampened Hessian the run used, w'_j column j as updated when it
    was quantized. OPTQ's error is exactly the sum of its per-column rounding residuals."""
    W, H = layer
    q = QUANTIZERS[name]
    if q.is_block or (isinstance(q.granularity, PerGroup) and q.granularity.axis in (-1, 1)):
        act_order = False  # input-axis groups take act_order only with static_groups
    res = gptq(W, H, q, act_order=act_order, rtn_fallback=False)
    # rel 1e-5: the returned weights are float32, fl32(v * s) as the quantizer's float32 output
    assert hessian_error(W, res.weight, _damped(H)) == pytest.approx(2 * res.proxy_loss, rel=1e-5, abs=1e-12)


@settings(max_examples=30)
@given(layers(), st.booleans())
def test_law_bound_for_fixed_uniform_grids(layer, act_order):
    """Per-channel INT with fixed scales s_r and no saturation (headroom: s_r = absmax_r / 64 on an
    INT8 grid of +-127): every residual is at most s_r / 2, so row r's error satisfies
    e_r^T H_d e_r <= (s_r^2 / 4) * sum_j 1 / U[j, j]^2, and sum_j 1 / U[j, j]^2 (the LDL pivots of
    H_d, Schur complements) <= tr(H_d), RTN's matching bound. The expectation law follows: for
    weights uniformly placed between grid points, E[GPTQ] = s^2 / 12 * sum_j 1/U_jj^2 <= s^2 / 12
    * tr(H_d) = E[RTN]."""
    W, H = layer
    s = np.maximum(np.abs(W).max(axis=1), 1e-6) / 64
    q = Quantizer("int8", "channel", scale_rule=Static(tuple(s.astype(np.float32).tolist())))
    res = gptq(W, H, q, act_order=act_order, rtn_fallback=False)
    Hd = _damped(H)
    if act_order:
        Hd = Hd[np.ix_(res.perm, res.perm)]
    pivots = 1 / np.diag(_inverse_cholesky(Hd)) ** 2
    assert pivots.sum() <= np.trace(Hd) * (1 + 1e-9)
    D = (W.astype(np.float64) - res.weight)
    if act_order:
        D = D[:, res.perm]
    per_row = np.einsum("ij,jk,ik->i", D, Hd, D)
    bound = (s.astype(np.float32).astype(np.float64) ** 2 / 4) * pivots.sum()
    assert np.all(per_row <= bound * (1 + 1e-9) + 1e-15)


@settings(max_examples=20)
@given(layers(), st.sampled_from(["int4_per_channel", "dint4_per_channel", "int4_tensor_pow2"]))
def test_law_uncorrelated_inputs_make_gptq_rtn(layer, name):
    """A diagonal Hessian (uncorrelated inputs) propagates no error: with scales fixed from W,
    GPTQ is RTN bit for bit."""
    W, H = layer
    q = QUANTIZERS[name]
    res = gptq(W, np.diag(np.diag(H)), q)
    assert np.array_equal(res.weight, rtn(W, q))


def test_gptq_beats_rtn_on_correlated_layers():
    """Not a law, a quality check: on 64-row layers with correlated inputs GPTQ's calibration error
    is below RTN's for every quantizer kind here, on each of 3 seeded layers."""
    for seed in range(3):
        W, H = _layer(10 + seed, R=64, C=32, n=128)
        for name, q in QUANTIZERS.items():
            g, r = hessian_error(W, gptq(W, H, q).weight, H), hessian_error(W, rtn(W, q), H)
            assert g < r, (seed, name, g, r)


def _units(q, R: int) -> int:
    g = q.granularity
    if isinstance(g, PerGroup) and g.axis % 2 == 0:
        return g.size  # groups along the output axis: a column's scale couples g rows
    if getattr(g, "axis", 0) % 2 == 1 and not isinstance(g, (PerGroup, PerBlock)):
        return R  # one scale per input column couples every row
    return 1


@settings(max_examples=60)
@given(layers(), st.sampled_from(sorted(QUANTIZERS)), st.booleans())
def test_never_above_rtn(layer, name, act_order):
    """The issue's property: with the default rtn_fallback, GPTQ's calibration error
    tr((W - Q) H (W - Q)^T) (the undamped H) is never above RTN's for the same quantizer, and
    unit by unit of independent rows neither (a row; g rows for output-axis groups; the matrix for
    per-input-column scales). The result stays the quantizer's own (dequantize of codes / scales
    is the weight bit for bit); fallback rows are RTN's bits, the others the OPTQ pass's bits.
    Tolerance 1e-12 relative: the two sides are float64 sums of the same kind."""
    W, H = layer
    q = QUANTIZERS[name]
    if q.is_block or (isinstance(q.granularity, PerGroup) and q.granularity.axis in (-1, 1)):
        act_order = False
    res = gptq(W, H, q, act_order=act_order)
    ref = gptq(W, H, q, act_order=act_order, rtn_fallback=False)
    wr = rtn(W, q)
    assert hessian_error(W, res.weight, H) <= hessian_error(W, wr, H) * (1 + 1e-12) + 1e-300
    u = _units(q, W.shape[0])
    eg = row_errors(W, res.weight, H).reshape(-1, u).sum(1)
    er = row_errors(W, wr, H).reshape(-1, u).sum(1)
    assert np.all(eg <= er * (1 + 1e-12) + 1e-300)
    fb = res.fallback
    assert fb.shape == (W.shape[0],) and np.all(fb.reshape(-1, u) == fb.reshape(-1, u)[:, :1])
    assert np.array_equal(res.weight[fb].view(np.uint32), wr[fb].view(np.uint32))
    assert np.array_equal(res.weight[~fb].view(np.uint32), ref.weight[~fb].view(np.uint32))
    deq = q.dequantize(res.qtensor(q))
    assert np.array_equal(deq.view(np.uint32), res.weight.view(np.uint32))


@pytest.mark.parametrize("name, expect", [("int4_per_input", [True] * 4),
                                          ("int4_rowgroups", [True] * 4 + [False] * 4)])
def test_fallback_units_that_couple_rows(name, expect):
    """Scales per input column couple all rows: the whole matrix falls back; output-axis groups of
    4 rows fall back group by group (a seeded layer where OPTQ loses on the first group). The
    merged codes and scales dequantize to the weights bit for bit."""
    rng = np.random.default_rng(303)
    X = rng.standard_normal((16, 32)) * rng.lognormal(0, 1, 32)
    W = (rng.standard_normal((8 if name == "int4_rowgroups" else 4, 32)) * 0.1).astype(np.float32)
    H = 2 * X.T @ X / 16
    q = QUANTIZERS[name]
    res = gptq(W, H, q)
    np.testing.assert_array_equal(res.fallback, expect)
    deq = q.dequantize(res.qtensor(q))
    assert np.array_equal(deq.view(np.uint32), res.weight.view(np.uint32))
    assert hessian_error(W, res.weight, H) <= hessian_error(W, rtn(W, q), H)


def test_fallback_with_a_prepared_hessian():
    W, H = _layer(7, R=16, C=32, n=24)
    q = get_quantizer("nvfp4")
    a, b = gptq(W, H, q), gptq(W, prepare_hessian(H), q)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.fallback, b.fallback)
