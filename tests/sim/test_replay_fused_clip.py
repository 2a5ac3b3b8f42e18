"""Replay's one-pass clip statistics (scales taken from the fake-quant pass, the clip mask evaluated
inside the error pass) equal the straightforward computation: the quantizer's own scales recomputed,
a materialized mask, and the numpy sums, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtlab.sim import metrics as M
from fmtlab.sim.quant import _fmtlab_clip_mask, calibrate_static, resolve
from fmtlab.sim.replay import ReplayConfig, replay
from fmtlab.sim.trace import TraceWriter

NAMES = ["int8_per_tensor", "int8_per_token", "int8_per_channel", "int4_per_channel", "fp8_e4m3_per_tensor",
         "mxfp8_e4m3", "mxfp4", "nvfp4", "dint4_per_channel", "int4_g32_asym", "log4_per_channel"]


def _x(seed=0, shape=(48, 128)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 3] *= 300.0
    x[5, 7] = 1e-6
    x[6, :] = 0.0
    return x


def _reference_sums(x, q, mask):
    """The sums of metrics.error_sums, written out in plain numpy (float64)."""
    x64, q64 = x.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    e = q64 - x64
    m = mask.ravel()
    nz = x64 != 0
    under = nz & (q64 == 0)
    return {"n": x.size, "n_nonzero": int(nz.sum()), "n_under": int(under.sum()), "n_clip": int(m.sum()),
            "signal": float(np.sum(x64 * x64)), "noise": float(np.sum(e * e)),
            "clip_energy": float(np.sum(x64[m] ** 2)), "clip_noise": float(np.sum(e[m] ** 2))}


@pytest.mark.parametrize("name,static_scale", [(n, False) for n in NAMES]
                         + [("int8_per_tensor", True), ("fp8_e4m3_per_tensor", True)])
def test_scaled_clip_equals_recomputed_mask(name, static_scale):
    x = _x()
    q = resolve(name)
    if static_scale:  # a frozen per-tensor scale small enough that many elements clip
        q = calibrate_static(q, x * 0.05, "absmax")
    xq, clip = q.with_clip(x)
    mask = _fmtlab_clip_mask(q.obj, x)  # scales recomputed: compute_scales / quantize(x).scales
    np.testing.assert_array_equal(xq, q.obj.fake_quantize(x))
    if isinstance(clip, M.ScaledClip):
        np.testing.assert_array_equal(clip.mask(x), mask)
    else:
        np.testing.assert_array_equal(clip, mask)
    fused = M.error_sums(x, xq, clip)
    assert repr(fused) == repr(M.error_sums(x, xq, mask))  # bit-identical sums, same order
    assert int(mask.sum()) == q.obj.quantize(x).report.clipped
    ref = _reference_sums(x, xq, mask)
    for k in ("n", "n_nonzero", "n_under", "n_clip"):
        assert fused[k] == ref[k], k
    for k in ("signal", "noise", "clip_energy", "clip_noise"):
        assert fused[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-300), k
    if static_scale:
        assert fused["n_clip"] > 0


def test_replay_rows_equal_straightforward_metrics(tmp_path):
    """Every a_/w_ metric of a replay row equals error_stats of the quantizer applied per sequence
    with the recomputed clip mask (exact equality)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    x[:, :2] *= 40
    w = (rng.standard_normal((32, 64)) * 0.05).astype(np.float32)
    wr = TraceWriter(str(tmp_path / "t"))
    wr.add("L:input", x)
    wr.add("L:weight", w)
    tr = wr.close({"seq_len": 32, "n_tokens": 64, "layers": {"L": {
        "op": "linear", "type": "proj", "block": 0, "in_features": 64, "out_features": 32,
        "input": "L:input", "weight": "L:weight"}}})
    cfgs = [ReplayConfig("a", "int4_per_channel", "int8_per_token"), ReplayConfig("b", "mxfp4", "mxfp4"),
            ReplayConfig("c", "int8_per_tensor", "fp8_e4m3_per_tensor")]
    res = replay(tr, cfgs, progress=False, workers=1)
    for row, c in zip(res.rows, cfgs):
        wq, aq = resolve(c.weight), resolve(c.act)
        a_parts = [M.error_sums(x[i:i + 32], aq.obj.fake_quantize(x[i:i + 32]), _fmtlab_clip_mask(aq.obj, x[i:i + 32]))
                   for i in (0, 32)]
        ea = M.stats_from_sums(M.merge_sums(a_parts))
        ew = M.error_stats(w, wq.obj.fake_quantize(w), _fmtlab_clip_mask(wq.obj, w))
        for k in ("underflow_rate", "clip_rate", "clipped_energy_frac", "clip_error_share", "mse", "sqnr_db"):
            for got, want in ((row[f"a_{k}"], ea[k]), (row[f"w_{k}"], ew[k])):
                assert got == want or (math.isnan(got) and math.isnan(want)), (c.name, k)


@pytest.mark.parametrize("seed", range(4))
def test_clip_thresholds_exact_at_the_boundary(seed):
    """The per-slot float32 thresholds give the division mask exactly, also for inputs a few ulps
    either side of hi * s and lo * s, with zero points, tiny and huge scales."""
    rng = np.random.default_rng(seed)
    C, Q = 64, 40
    s = (2.0 ** rng.uniform(-140, 100, C) * rng.uniform(1, 2, C)).astype(np.float32)
    s[:4] = [np.float32(2.0 ** -149), np.float32(1.0), np.float32(3e38), np.float32(1 / 3)]
    z = rng.integers(-8, 8, C) if seed % 2 else None
    hi, lo = 127.5, -128.5
    edge_hi = (hi - (0 if z is None else z)) * s.astype(np.float64)
    edge_lo = (lo - (0 if z is None else z)) * s.astype(np.float64)
    x = np.empty((C, Q), np.float32)
    with np.errstate(all="ignore"):
        for k in range(C):
            base = np.float32([edge_hi[k]] * 10 + [edge_lo[k]] * 10)
            steps = np.arange(-5, 5)
            vals = [np.float32(b) for b in base]
            for i, b in enumerate(vals):
                v = b
                for _ in range(abs(steps[i % 10])):
                    v = np.nextafter(v, np.float32(np.inf) if steps[i % 10] > 0 else np.float32(-np.inf))
                x[k, i] = v
            x[k, 20:] = (rng.standard_normal(Q - 20) * float(edge_hi[k])).astype(np.float32)
    x[0, 30], x[1, 31], x[2, 32] = np.inf, -np.inf, np.nan
    clip = M.ScaledClip(s, z, Q, C, False, lo, hi)
    th = clip.thresholds()
    assert th is not None
    mask = clip.mask(x)
    got = (x > th[1][:, None]) | (x < th[0][:, None])
    np.testing.assert_array_equal(got, mask)
    assert 0 < mask.sum() < mask.size
    q = np.zeros_like(x)
    q[~np.isfinite(x)] = 0.0
    assert repr(M.error_sums(x, q, clip)) == repr(M.error_sums(x, q, mask))  # NaN sums too


def test_output_stats_row_blocks_equal_whole_array():
    """output_error_stats sums rows in cache-sized blocks: the per-token SQNR is the same as from
    the whole float64 arrays at once (exact)."""
    rng = np.random.default_rng(1)
    y = rng.standard_normal((301, 1536)).astype(np.float32)
    yq = (y + rng.standard_normal(y.shape).astype(np.float32) * 1e-2).astype(np.float32)
    r = y.astype(np.float64)
    e = yq.astype(np.float64) - r
    rs, rn = np.einsum("ij,ij->i", r, r), np.einsum("ij,ij->i", e, e)
    tok = 10.0 * np.log10(rs / rn)
    got = M.output_error_stats(y, yq)
    assert got["tok_sqnr_db"] == float(np.median(tok))
    assert got["sqnr_db"] == M.error_stats(y, yq)["sqnr_db"]


@pytest.mark.parametrize("bounds", [[(0, 301)], [(0, 64), (64, 128), (128, 301)], [(0, 1)] + [(1, 301)]])
def test_output_stats_by_rows_equal_separate_passes(bounds):
    """The one-pass output statistics with per-sequence sums equal output_error_stats of the whole
    and error_sums of each row range (exact, NaN and zero rows included)."""
    rng = np.random.default_rng(2)
    y = rng.standard_normal((301, 96)).astype(np.float32)
    yq = (y + rng.standard_normal(y.shape).astype(np.float32) * 1e-2).astype(np.float32)
    y[7] = 0.0
    yq[9, 3] = np.nan
    yq[11, :5] = 0.0
    got, sig, noi = M.output_error_stats_by_rows(y, yq, bounds)
    assert repr(got) == repr(M.output_error_stats(y, yq))
    parts = [M.error_sums(y[a:b], yq[a:b]) for a, b in bounds]
    assert repr(sig) == repr([p["signal"] for p in parts])
    assert repr(noi) == repr([p["noise"] for p in parts])


def test_units_of_one_layer_share_its_inputs(tmp_path, monkeypatch):
    """Run one config per unit (the explore search): the layer's inputs are read once per layer
    (LayerCache), and the rows and per-sequence sums equal a replay of all configs at once."""
    from fmtlab.sim.executor import SerialExecutor, Unit, replay_tasks, run_units
    from fmtlab.sim.trace import Trace, open_trace

    rng = np.random.default_rng(4)
    wr = TraceWriter(str(tmp_path / "t"))
    meta = {}
    for i in range(2):
        x = rng.standard_normal((64, 64)).astype(np.float32)
        x[:, :2] *= 40
        wr.add(f"L{i}:input", x)
        wr.add(f"L{i}:weight", (rng.standard_normal((32, 64)) * 0.05).astype(np.float32))
        meta[f"L{i}"] = {"op": "linear", "type": "proj", "block": i, "in_features": 64, "out_features": 32,
                         "input": f"L{i}:input", "weight": f"L{i}:weight"}
    path = wr.close({"seq_len": 32, "n_tokens": 64, "layers": meta})
    cfgs = [ReplayConfig("a", "int4_per_channel", "int8_per_token"), ReplayConfig("b", "mxfp4", "mxfp4"),
            ReplayConfig("c", "int8_per_tensor", "fp8_e4m3_per_tensor")]
    whole = replay(path, cfgs, progress=False, workers=1)
    reads = []
    orig = Trace.tensor
    monkeypatch.setattr(Trace, "tensor", lambda self, name, writable=False: reads.append(name)
                        or orig(self, name, writable))
    tr = open_trace(path)
    units = [Unit(tr.path, None, k, names, t, (c,), label="t", digests=(tr.digest, None))
             for k, names, t in replay_tasks(tr) for c in cfgs]
    got = run_units(SerialExecutor(), units)
    rows = [r for u in units for r in got[u.key][0]]
    seqs = [s for u in units for s in got[u.key][1]]
    assert repr(rows) == repr(whole.rows) and repr(seqs) == repr(whole.per_sequence)
    assert sorted(n for n in reads if n != "tokens:position") == sorted(
        [f"L{i}:input" for i in range(2)] + [f"L{i}:weight" for i in range(2)])
