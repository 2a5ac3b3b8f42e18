"""fmtlab's MX and NVFP4 blocks held bit for bit to torchao's quantize functions (peer: torchao
0.18.0, ``torchao.prototype.mx_formats``: ``mx_tensor.to_mx`` for MXFP8/MXFP6/MXFP4 under its four
``ScaleCalculationMode``s, ``nvfp4_tensor.nvfp4_quantize`` for NVFP4 with and without the
per-tensor scale).

Scale codes and element codes are compared, over seeded tensors spanning float32's range and over
edge blocks. Where the two differ, each difference is restated here as torchao's own rule (its
source lines named) and the test checks that the restatement accounts for every differing code, so a
new difference in either library fails the test. The differences, and which side the spec backs:

1. MX blocks with scale code 0 (X = 2**-127; block max below ~2**-125 * elem max): torchao divides
   by 2**-126 (FLOOR/CEIL/EVEN: ``scale_fp32 = clamp(scale_fp32, min=F32_MIN_NORMAL)``) or by 1
   (RCEIL: ``rcp = 1.0 where exponent == 0``) while it stores code 0. Its element codes then do
   not decode to x / X under its own scale code. OCP MX v1.0 (5.3 / 6.3) defines X = 2**-127 for
   code 0: fmtlab follows the spec.
2. MX blocks holding +/-Inf and no NaN: torchao reads the Inf's float32 exponent field as a
   finite exponent (FLOOR/CEIL/EVEN: 128 - emax_elem; RCEIL: code 254) and saturates the Inf
   element to the element max. fmtlab gives the block the NaN scale (code 255), as it documents in
   ``mx.py`` (a non-finite block is NaN). NaN blocks: both give code 255; element codes are
   don't-cares (torchao keeps NaN elements, fmtlab writes 0), so they are not compared.
3. NVFP4 block scales: torchao clamps the block scale to at least the smallest E4M3 normal
   (``E4M3_EPS = finfo(float8_e4m3fn).tiny`` = 2**-6, code 0x08); fmtlab keeps E4M3 subnormal
   scales (at least code 0x01 = 2**-9). E4M3 subnormals are valid E4M3 values (OCP FP8 spec), so
   fmtlab's scale is the nearest E4M3 value to the block's ideal scale; torchao's clamp is its
   own choice (a tighter scale, smaller block error, is lost for tiny blocks).
4. NVFP4 element division: torchao multiplies by a reciprocal, y = fl(x * fl(fl(1 / g) / S8))
   (two-level) or fl(x * fl(1 / S8)) (one level), "to match the MSLK triton kernel"; fmtlab divides,
   y = fl(x / fl(g * S8)). On random data the two never differed in these tests; at exact ties
   (x = (k + 1/2) * g * S8) the reciprocal's rounding error can push y off the tie. The test builds
   such blocks and checks which side gives round_E2M1(x / (g * S8)) computed exactly (Fraction).
5. MX RCEIL where D = fl32(amax / elem_max) lies just above a power of two 2**k: torchao's eager
   (CPU) path takes ceil(torch.log2(D)) in float32, and log2(D) rounds to k exactly for most k, so it
   picks 2**k and the block max saturates; fmtlab takes ceil(log2 D) exactly from D's bits (k + 1),
   which is what the hardware rule it restates does (``cvt.rp.satfinite.ue8m0x2.f32``: round D up
   to a power of two; torchao's own compiled GPU path uses that instruction). fmtlab follows the
   instruction; torchao's eager fallback differs from its GPU path there.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
    from torchao.prototype.mx_formats.kernels import unpack_uint4  # noqa: E402
    from torchao.prototype.mx_formats.mx_tensor import to_mx  # noqa: E402
    from torchao.prototype.mx_formats.nvfp4_tensor import (  # noqa: E402
        nvfp4_quantize, per_tensor_amax_to_scale,
    )

from fmtlab.formats import get_format, get_quantizer  # noqa: E402
from fmtlab.formats.oracle import oracle_encode  # noqa: E402
from fmtlab.formats.quantizer import Quantizer  # noqa: E402
from fmtlab.formats.scaling import PerBlock  # noqa: E402

F32 = np.float32
MX = {  # fmtlab name -> (torchao element dtype, fmtlab element format)
    "mxfp4": (torch.float4_e2m1fn_x2, "fp4_e2m1"),
    "mxfp6_e2m3": ("fp6_e2m3", "fp6_e2m3"),
    "mxfp6_e3m2": ("fp6_e3m2", "fp6_e3m2"),
    "mxfp8_e4m3": (torch.float8_e4m3fn, "fp8_e4m3"),
    "mxfp8_e5m2": (torch.float8_e5m2, "fp8_e5m2"),
}
MODES = ["floor", "ceil", "even", "rceil"]


def _random_tensor(seed: int, rows: int, K: int, blocks: int) -> np.ndarray:
    """Normal and Student-t(3) blocks, each block at its own power-of-two magnitude in
    2**-135 .. 2**120 (so some blocks reach the code-0 and float32-subnormal corner)."""
    rng = np.random.default_rng(seed)
    t = rng.standard_t(3, (rows, blocks, K))
    n = rng.standard_normal((rows, blocks, K))
    base = np.where(rng.random((rows, blocks, 1)) < 0.5, n, t)
    mag = np.exp2(rng.integers(-135, 120, (rows, blocks, 1)).astype(np.float64))
    return (base * mag).astype(F32).reshape(rows, blocks * K)


def _edge_blocks(K: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    out = [np.zeros(K)]
    for e in (-149, -140, -130, -127, -126, -125, -120, -8, 0, 8, 100, 120, 125):
        out.append(rng.standard_normal(K) * 2.0 ** e)
    big = np.full(K, float(np.finfo(F32).max))
    big[1::2] *= -1
    out.append(big)  # the largest scale
    sub = rng.integers(1, 2 ** 23, K).astype(np.uint32).view(F32).astype(np.float64)
    out.append(sub)  # float32 subnormal block maxima
    one = np.zeros(K)
    one[K // 2] = 2.0 ** -149
    out.append(one)
    for special in (np.nan, np.inf, -np.inf):
        v = rng.standard_normal(K)
        v[3] = special
        out.append(v)
    with np.errstate(over="ignore"):
        return np.array(out).astype(F32)


def _torchao_mx(x: np.ndarray, dtype, mode: str) -> tuple[np.ndarray, np.ndarray]:
    s, d = to_mx(torch.from_numpy(np.ascontiguousarray(x)), dtype, 32,
                 getattr(ScaleCalculationMode, mode.upper()))
    if dtype == torch.float4_e2m1fn_x2:
        d = unpack_uint4(d)
    return s.view(torch.uint8).numpy().reshape(-1), d.view(torch.uint8).numpy().reshape(-1, 32)


def _torchao_inf_code(mode: str, emax: int) -> int:
    """torchao's scale code for a block whose max |x| is Inf (difference 2 above)."""
    if mode == "rceil":
        return 254
    return min(128 - emax, 128) + 127


def _check_mx(name: str, mode: str, x: np.ndarray) -> dict:
    dtype, elem = MX[name]
    fmt = get_format(elem)
    emax = math.frexp(fmt.max)[1] - 1
    q = get_quantizer(name, scale_rule=mode).quantize(x)
    ours_s = q.scale_codes.reshape(-1)
    ours_c = q.codes.reshape(-1, 32).astype(np.uint8)
    ta_s, ta_c = _torchao_mx(x, dtype, mode)
    xb = x.reshape(-1, 32)
    has_nan = np.isnan(xb).any(axis=1)
    has_inf = np.isinf(xb).any(axis=1) & ~has_nan
    finite = ~has_nan & ~has_inf
    stats = dict(blocks=len(xb), code0=0, inf=int(has_inf.sum()), nan=int(has_nan.sum()))
    # finite blocks: the same scale codes
    np.testing.assert_array_equal(ta_s[finite], ours_s[finite], err_msg=f"{name} {mode} scale codes")
    assert np.all(ours_s[has_nan] == 255) and np.all(ta_s[has_nan] == 255)
    # difference 2: Inf blocks
    assert np.all(ours_s[has_inf] == 255)
    assert np.all(ta_s[has_inf] == _torchao_inf_code(mode, emax)), (name, mode, ta_s[has_inf])
    for i in np.flatnonzero(has_inf):
        X = np.ldexp(1.0, int(ta_s[i]) - 127)
        y = np.clip(xb[i].astype(np.float64) / X, -fmt.max, fmt.max).astype(F32)
        np.testing.assert_array_equal(ta_c[i], oracle_encode(fmt, y, "nearest_even", "saturate"))
    # finite blocks with code >= 1: identical element codes
    normal = finite & (ours_s > 0)
    np.testing.assert_array_equal(ta_c[normal], ours_c[normal], err_msg=f"{name} {mode} element codes")
    # difference 1: code-0 blocks, fmtlab divides by 2**-127, torchao by 2**-126 (or by 1: RCEIL)
    zero = finite & (ours_s == 0)
    stats["code0"] = int(zero.sum())
    if zero.any():
        xz = xb[zero].astype(np.float64)
        ours_y = (xz / 2.0 ** -127).astype(F32)
        np.testing.assert_array_equal(ours_c[zero].reshape(-1), oracle_encode(
            fmt, ours_y.reshape(-1), "nearest_even", "saturate"))
        ta_div = 1.0 if mode == "rceil" else 2.0 ** -126
        ta_y = (xz / ta_div).astype(F32)
        np.testing.assert_array_equal(ta_c[zero].reshape(-1), oracle_encode(
            fmt, ta_y.reshape(-1), "nearest_even", "saturate"))
        stats["code0_elem_diff"] = int(np.count_nonzero(ta_c[zero] != ours_c[zero]))
    return stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(MX))
def test_mx_random_tensors_match_torchao(name, mode):
    total = 0
    for seed in range(4):
        x = _random_tensor(seed, 16, 32, 16)
        total += _check_mx(name, mode, x)["blocks"]
    assert total == 4 * 16 * 16


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(MX))
def test_mx_edge_blocks_match_torchao_up_to_its_documented_rules(name, mode):
    stats = _check_mx(name, mode, _edge_blocks(32))
    assert stats["inf"] == 2 and stats["nan"] == 1
    assert stats["code0"] >= 3  # the code-0 corner is exercised
    # ... and torchao's 2**-126 / 1 division really changes codes there (difference 1)
    assert stats["code0_elem_diff"] > 0


# ---- NVFP4 ----------------------------------------------------------------------------------
def _nvfp4(x: np.ndarray, two_level: bool):
    q = Quantizer("fp4_e2m1", PerBlock(16, -1, "fp8_e4m3", two_level)).quantize(x)
    pts = per_tensor_amax_to_scale(torch.tensor(float(np.nanmax(np.abs(x))))) if two_level else None
    s, d = nvfp4_quantize(torch.from_numpy(np.ascontiguousarray(x)), 16, pts)
    ta_c = unpack_uint4(d).numpy().reshape(-1, 16)
    ta_s = s.view(torch.uint8).numpy().reshape(-1)
    return q, ta_s, ta_c, (None if pts is None else F32(pts.item()))


def _restate_torchao_nvfp4(x: np.ndarray, g):
    """torchao's nvfp4_quantize restated (difference 3 and 4): scale codes and element codes."""
    e4m3, e2m1 = get_format("fp8_e4m3"), get_format("fp4_e2m1")
    xb = x.reshape(-1, 16)
    bs = (np.abs(xb).max(axis=1) / F32(6.0)).astype(F32)
    if g is not None:
        bs = (bs / g).astype(F32)
    bs = np.clip(bs, F32(2.0 ** -6), F32(448.0))
    sc = oracle_encode(e4m3, bs, "nearest_even", "saturate").astype(np.uint8)
    S8 = e4m3.values()[sc].astype(F32)
    r = (F32(1.0) / S8).astype(F32) if g is None else ((F32(1.0) / g) / S8).astype(F32)
    y = np.clip((xb * r[:, None]).astype(F32), F32(-6), F32(6))
    return sc, oracle_encode(e2m1, y.reshape(-1), "nearest_even", "saturate").reshape(-1, 16)


@pytest.mark.parametrize("two_level", [True, False])
def test_nvfp4_matches_torchao(two_level):
    tiny_blocks = differing = blocks = 0
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        x = (rng.standard_t(4, (64, 256)) * np.exp2(rng.integers(-14, 4, (64, 16, 1)))
             .repeat(16, axis=2).reshape(64, 256)).astype(F32)
        q, ta_s, ta_c, g = _nvfp4(x, two_level)
        ours_s = q.scale_codes.reshape(-1)
        ours_c = q.codes.reshape(-1, 16)
        if two_level:
            assert F32(q.tensor_scale) == g  # the same FP32 tensor scale amax / (448 * 6)
        # torchao restated exactly (clamp at 2**-6, reciprocal multiply)
        rs, rc = _restate_torchao_nvfp4(x, g)
        np.testing.assert_array_equal(ta_s, rs)
        np.testing.assert_array_equal(ta_c, rc)
        # fmtlab == torchao wherever fmtlab's scale code is a normal E4M3 (>= 0x08)
        same = ours_s >= 8
        np.testing.assert_array_equal(ta_s[same], ours_s[same])
        np.testing.assert_array_equal(ta_c[same], ours_c[same])
        # difference 3: below 2**-6 torchao clamps to code 0x08, fmtlab keeps the subnormal code
        assert np.all(ta_s[~same] == 8) and np.all(ours_s[~same] >= 1)
        tiny_blocks += int((~same).sum())
        differing += int(np.count_nonzero(ta_c[~same] != ours_c[~same]))
        blocks += len(ours_s)
    assert blocks == 4 * 64 * 16
    assert tiny_blocks > 0 and differing > 0  # the corner is reached and the clamp matters there


def _exact_e2m1(q: Fraction) -> float:
    """round-to-nearest-even of the exact rational q onto E2M1 (saturating)."""
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    a = abs(q)
    if a >= 6:
        return math.copysign(6.0, q)
    for lo, hi in zip(grid, grid[1:]):
        if a <= hi:
            mid = (Fraction(lo) + Fraction(hi)) / 2
            if a < mid:
                v = lo
            elif a > mid:
                v = hi
            else:  # tie: even code (E2M1 codes 0..7 in grid order)
                v = lo if grid.index(lo) % 2 == 0 else hi
            return math.copysign(v, q) if v else 0.0
    raise AssertionError(q)


def test_nvfp4_ties_division_vs_reciprocal():
    """Difference 4 at exact ties: which side equals round_E2M1(x / (g * S8)) taken exactly."""
    e2m1 = get_format("fp4_e2m1")
    rng = np.random.default_rng(11)
    ours_right = ta_right = both = 0
    for _ in range(40):
        # a tensor whose amax fixes g, and blocks whose elements sit on E2M1 midpoints * g * S8
        # amax = 2688 * j / 512: g = j / 512 exactly, so g * S8 is exact in float32 while 1 / g
        # is not (j odd)
        j = int(rng.integers(256, 512)) * 2 + 1
        amax = F32(2688.0 * j / 1024)
        x = rng.standard_normal((8, 16)).astype(F32)
        x[0, 0] = amax
        q, ta_s, ta_c, g = _nvfp4(x, True)
        S = (F32(g) * get_format("fp8_e4m3").values()[q.scale_codes.reshape(-1)].astype(F32)).astype(F32)
        mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
        for b in range(1, 8):
            x[b] = (rng.choice(mids, 16) * rng.choice([-1, 1], 16) * np.float64(S[b])).astype(F32)
            x[b, 0] = F32(6.0 * np.float64(S[b]))  # keeps the block's max (and scale) in place
        q, ta_s, ta_c, g = _nvfp4(x, True)
        ours_c = q.codes.reshape(-1, 16)
        S8 = get_format("fp8_e4m3").values()[q.scale_codes.reshape(-1)]
        for b in range(8):
            for k in range(16):
                exact = Fraction(float(x[b, k])) / (Fraction(float(g)) * Fraction(float(S8[b])))
                want = _exact_e2m1(exact)
                o = float(e2m1.values()[ours_c[b, k]])
                t = float(e2m1.values()[ta_c[b, k]])
                ours_right += o == want
                ta_right += t == want
                both += (o == want) and (t == want)
    n = 40 * 8 * 16
    # fmtlab's division is exact on these ties (g * S8 and x = mid * fl(g*S8) are exact in
    # float32 here): it equals the exact rounding everywhere; torchao's reciprocal misses some.
    assert ours_right == n, (ours_right, n)
    assert ta_right < n, "torchao's reciprocal multiply hit every tie exactly: difference 4 gone?"


def test_rceil_just_above_a_power_of_two():
    """Difference 5: blocks whose D = fl32(amax / 6) is the first float32 values above 2**k."""
    rows, ks = [], []
    for k in range(-100, 100, 3):
        a = F32(6 * 2.0 ** k)
        for _ in range(3):
            a = np.nextafter(a, F32(np.inf))
            if F32(a / F32(6)) > 2.0 ** k:
                rows.append(a)
                ks.append(k)
                break
    x = np.zeros((len(rows), 32), F32)
    x[:, 0] = rows
    x[:, 1] = -np.asarray(rows, F32) / 3
    ours = get_quantizer("mxfp4", scale_rule="rceil").quantize(x).scale_codes.reshape(-1).astype(int)
    ta, _ = _torchao_mx(x, torch.float4_e2m1fn_x2, "rceil")
    D = (x[:, 0] / F32(6)).astype(F32)
    assert np.all(ours - 127 == np.asarray(ks) + 1)  # exact ceil(log2 D): D > 2**k
    t_log2 = torch.log2(torch.from_numpy(D)).numpy()  # torchao's eager rule, restated
    np.testing.assert_array_equal(ta.astype(int) - 127, np.ceil(t_log2).astype(int))
    assert np.count_nonzero(ta.astype(int) != ours) > len(rows) // 2, "torchao's log2 now exact?"
