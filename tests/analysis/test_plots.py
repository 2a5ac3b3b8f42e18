"""Every plot renders to a non-empty PNG from small inputs (the Pareto front: tests/explore/test_pareto.py)."""

import numpy as np
import pytest

from fmtlab.analysis import plots


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_format_grids(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, size=5000).astype(np.float32)
    out = plots.plot_format_grids(["int8", "dint4", "log4", "fp8_e4m3"], x, tmp_path / "g.png", "l0")
    assert _is_png(out)


def test_format_grids_rejects_all_zero(tmp_path):
    with pytest.raises(ValueError, match="nonzero"):
        plots.plot_format_grids(["int8"], np.zeros(10), tmp_path / "g.png")


def test_heatmap_and_log(tmp_path):
    rows = [{"config": c, "layer": f"l{i}", "sqnr": float(i + j)} for j, c in enumerate("ab") for i in range(5)]
    assert _is_png(plots.plot_layer_heatmap(rows, "sqnr", tmp_path / "h.png", "t", "dB"))
    assert _is_png(plots.plot_layer_heatmap(rows, "sqnr", tmp_path / "h2.png", "t", "1", log=True))


def test_outliers(tmp_path):
    m = np.abs(np.random.default_rng(1).standard_normal((4, 32))) + 0.1
    m[2, 7] = 500
    massive = [{"layer": "l2", "token": 0, "channel": 7, "value": 500.0, "ratio": 800.0}]
    assert _is_png(plots.plot_outliers(m, [f"l{i}" for i in range(4)], massive, tmp_path / "o.png"))
    with pytest.raises(ValueError, match="n_layers"):
        plots.plot_outliers(m, ["l0"], massive, tmp_path / "o2.png")


def test_tradeoff_and_accumulation(tmp_path):
    pts = [{"config": f"c{i}", "area_um2": 100.0 * (i + 1), "energy_pj": 0.1 * (i + 1),
            "output_sqnr_db": 10.0 + 3 * i} for i in range(4)]
    assert _is_png(plots.plot_tradeoff(pts, tmp_path / "t.png"))
    rows = [{"config": "int8", "acc_bits": b, "rel_error": 2.0 ** -b} for b in (16, 20, 24, 32)]
    assert _is_png(plots.plot_accumulation(rows, tmp_path / "a.png"))
