"""The report's "Beyond the Linear layers" section (fmtlab.analysis.beyond_section) on synthetic rows."""

import math
from types import SimpleNamespace

import numpy as np

from fmtlab.analysis.beyond_section import add_beyond_section, beyond_rows
from fmtlab.analysis.document import Document


def _row(name, nll, ppl=None):
    nll = np.asarray(nll, dtype=np.float64)
    toks = np.full(len(nll), 100.0)
    return {"config": name, "ppl": ppl if ppl is not None else math.exp(nll.sum() / toks.sum()),
            "ppl_lo": 0.0, "ppl_hi": 0.0, "seq_nll": nll.tolist(), "seq_tokens": toks.tolist()}


BASE = [300.0, 310.0, 305.0, 295.0]


def test_rows_pair_with_their_base_and_spread(tmp_path):
    rows = [
        _row("w8a8_int_token", BASE),
        _row("x32:w=int8_per_channel;a=int8_per_token;acc=int32", [b - 0.2 for b in BASE]),  # the spread
        _row("x16:w=int8_per_channel;a=int8_per_token;acc=int16", [b + 50 for b in BASE]),
        _row("w8a8_int_token+kv(spec=int8_sym_per_token)", [b + 0.1 for b in BASE]),  # inside the spread
        _row("w8a8_int_token+attn(spec=fp8_fa3)", [b + 3 + i for i, b in enumerate(BASE)]),
        _row("fp32+kv", [1.0, 2.0, 3.0, 4.0]),  # no base scored
    ]
    out = {r["config"]: r for r in beyond_rows(rows)}
    assert set(out) == {rows[i]["config"] for i in (1, 2, 3, 4, 5)}
    spread = abs(rows[1]["ppl"] - rows[0]["ppl"])
    kv = out["w8a8_int_token+kv(spec=int8_sym_per_token)"]
    assert kv["base"] == "w8a8_int_token" and kv["kind"] == "KV cache" and kv["spread"] == spread
    assert kv["diff"] > 0 and kv["diff"] < spread and kv["called"] == "no (within the arithmetic spread)"
    assert out["w8a8_int_token+attn(spec=fp8_fa3)"]["called"] == "yes"
    acc16 = out["x16:w=int8_per_channel;a=int8_per_token;acc=int16"]
    assert acc16["kind"] == "accumulator int16" and acc16["base"] == "w8a8_int_token" and acc16["called"] == "yes"
    assert math.isnan(out["fp32+kv"]["diff"]) and out["fp32+kv"]["called"] == ""
    doc = Document("t")
    (tmp_path / "tables").mkdir()
    got = add_beyond_section(doc, SimpleNamespace(ppl_rows=rows, out=tmp_path))
    assert len(got) == 5 and (tmp_path / "tables" / "beyond_linear.csv").exists()
    assert "Beyond the Linear layers" in doc.to_markdown()
    doc2 = Document("t")
    assert add_beyond_section(doc2, SimpleNamespace(ppl_rows=rows[:1], out=tmp_path)) == [] and not doc2.blocks
