"""Massive-activation detection on a planted case; the offline texts and token windows."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import CharTokenizer

from fmtlab.errors import FmtlabError, TraceError
from fmtlab.sim.data import default_texts, token_windows
from fmtlab.sim.outliers import massive_activations, summarize_massive
from fmtlab.sim.trace import TraceWriter


def _residual_trace(path, seq_len=8, n_seq=2, blocks=3):
    rng = np.random.default_rng(0)
    wr = TraceWriter(str(path))
    acts = {}
    for b in range(blocks):
        r = rng.standard_normal((n_seq * seq_len, 16)).astype(np.float32)
        if b >= 1:
            r[0, 7] = 2000.0  # sequence 0, position 0, channel 7
            r[seq_len + 3, 7] = -1500.0  # sequence 1, position 3
        wr.add(f"blk{b}:residual", r)
        acts[f"blk{b}:residual"] = {"kind": "residual", "block": b, "tensor": f"blk{b}:residual"}
    wr.add("tokens:input_ids", np.arange(n_seq * seq_len, dtype=np.int64).reshape(n_seq, seq_len))
    return wr.close({"seq_len": seq_len, "activations": acts, "vocab": {"0": "<bos>", "11": "."}})


def test_planted_massive_activations(tmp_path):
    tr = _residual_trace(tmp_path / "r")
    rows = massive_activations(tr, top_k=3, min_ratio=100)
    assert [(r["layer"], r["token"], r["sequence"], r["channel"]) for r in rows] == [(1, 0, 0, 7), (1, 3, 1, 7),
                                                                                      (2, 0, 0, 7), (2, 3, 1, 7)]
    r0 = rows[0]
    med = float(np.median(np.abs(tr.tensor("blk1:residual"))))
    assert r0["value"] == 2000.0 and r0["ratio"] == pytest.approx(2000.0 / med) and r0["token_str"] == "<bos>"
    assert rows[1]["value"] == -1500.0 and rows[1]["token_str"] == "."
    s = summarize_massive(rows)
    assert s["channels"] == [(7, 4)] and s["max"]["layer"] in (1, 2) and s["max"]["value"] == 2000.0
    assert massive_activations(tr, min_abs=1800)[0]["abs"] == 2000.0
    assert summarize_massive([]) == {"count": 0}


def test_massive_needs_residual(tmp_path):
    wr = TraceWriter(str(tmp_path / "n"))
    wr.add("x", np.zeros((2, 2), np.float32))
    tr = wr.close({})
    with pytest.raises(TraceError, match="residual=True"):
        massive_activations(tr)


def test_default_texts_fixed_and_disjoint():
    for src in ("wiki", "lee"):
        cal, ev = default_texts("calib", src), default_texts("eval", src)
        assert len(cal) >= 50 and len(ev) >= 50
        assert not set(cal) & set(ev)
        assert default_texts("calib", src) == cal
    wiki = default_texts("calib", "wiki")
    assert wiki[0].startswith("Anarchism") and "'''" not in wiki[0]
    assert default_texts("eval", "all") == default_texts("eval", "wiki") + default_texts("eval", "lee")
    with pytest.raises(FmtlabError, match="split"):
        default_texts("train")
    with pytest.raises(FmtlabError, match="source"):
        default_texts("calib", "web")


def test_token_windows():
    tok = CharTokenizer()
    wins, p = token_windows(tok, ["abcdefghij", "klmnop"], 4, 3)
    joined = tok("abcdefghij\n\nklmnop")["input_ids"]
    assert p == 0 and wins == [joined[0:4], joined[4:8], joined[8:12]]
    wins, p = token_windows(tok, ["abcdefghij"], 4, 2, prefix="#")
    assert p == 1 and wins[0][0] == wins[1][0] == ord("#") and wins[0][1:] == tok("abc")["input_ids"]
    assert len(token_windows(tok, ["abcdefghij"], 4)[0]) == 2  # all full windows
    with pytest.raises(FmtlabError, match="not enough"):
        token_windows(tok, ["abc"], 4, 1)
    with pytest.raises(FmtlabError, match="prefix"):
        token_windows(tok, ["abcdefgh"], 2, 1, prefix="xyz")
