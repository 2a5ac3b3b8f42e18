"""The report's "Beyond the Linear layers" section: KV cache, attention and accumulator configs.

Perplexity configs that run the KV cache in a format (``<config>+kv(spec=...)``,
:mod:`fmtlab.methods.kv_cache_variant`), the attention matmuls in a format
(``<config>+attn(spec=...)``, :mod:`fmtlab.methods.attention_variant`) or compute their dot
products in an accumulator (inline ``acc=``, :mod:`fmtlab.sim.accumulate`) are tabulated with their
perplexity interval and, where the report also scored the same config without that change (its
*base*: the config before ``+``, or the same weights / activations without ``acc=``), the paired
difference to it with its 95% bootstrap interval over windows (:mod:`fmtlab.sim.stats`).

Numerical sensitivity (issue 24, item 6): where a config was also scored with ``acc=int32`` (its
dot products as exact integer sums instead of a float32 GEMM), the perplexity change between the
two arithmetics is that config's *spread*. A difference is called (``called``) only when its
paired interval excludes zero and it exceeds the spread of its base; without a measured spread
the column says so.

Where an evaluation trace holds attention tensors (``fmtlab record --qkv``, e.g. a trace given to
the report with ``--trace``), the section also shows their replay
(:func:`fmtlab.sim.attention_replay.replay_attention`, the default KV / attention configs): the
SQNR of the attention output per layer with its bootstrap interval over sequences and the
underflow / clipping shares of K, V and P (``tables/attention_replay.csv``). The report's own
traces stay as they were (no attention tensors) unless recorded so.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from fmtlab.analysis.tables import write_csv
from fmtlab.sim.attention_replay import DEFAULT_ATTENTION_CONFIGS, has_attention, replay_attention
from fmtlab.sim.replay import make_config
from fmtlab.sim.stats import paired_difference, perplexity_of

_VARIANT = re.compile(r"\+(kv|attn)(\(.*\))?$")


def _arrays(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(row["seq_nll"], dtype=np.float64), np.asarray(row["seq_tokens"], dtype=np.float64)


def _wa(name: str) -> tuple[Any, Any, Any, Any] | None:
    try:
        c = make_config(name)
    except Exception:  # noqa: BLE001 - a variant config or a name the replay grammar does not know
        return None
    return (str(c.weight), str(c.act), c.transform, c.act_calib), c.accumulator


def beyond_rows(ppl_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per perplexity config beyond the Linear layers (module docstring)."""
    by_name = {r["config"]: r for r in ppl_rows}
    parsed = {n: _wa(n) for n in by_name}
    plain = {k[0]: n for n, k in parsed.items() if k is not None and k[1] is None}
    exact = {k[0]: n for n, k in parsed.items() if k is not None and k[1] == "int32"}
    spread: dict[str, float] = {}
    for key, n in plain.items():
        if key in exact:
            spread[n] = abs(by_name[exact[key]]["ppl"] - by_name[n]["ppl"])
    out = []
    for n, r in by_name.items():
        m = _VARIANT.search(n)
        k = parsed[n]
        if m:
            kind, base = ("KV cache" if m.group(1) == "kv" else "attention"), n[: m.start()]
        elif k is not None and k[1] is not None:
            kind, base = f"accumulator {k[1]}", plain.get(k[0])
        else:
            continue
        row = {"config": n, "kind": kind, "ppl": r["ppl"], "ppl_lo": r.get("ppl_lo"), "ppl_hi": r.get("ppl_hi"),
               "base": base or "", "diff": math.nan, "diff_lo": math.nan, "diff_hi": math.nan,
               "spread": spread.get(base, math.nan) if base else math.nan, "called": ""}
        b = by_name.get(base) if base else None
        if b is not None and len(b["seq_nll"]) == len(r["seq_nll"]) and len(r["seq_nll"]) >= 2:
            d = paired_difference(perplexity_of, _arrays(r), _arrays(b))
            row.update(diff=d.value, diff_lo=d.lo, diff_hi=d.hi)
            if not d.excludes_zero:
                row["called"] = "no (interval includes 0)"
            elif math.isnan(row["spread"]):
                row["called"] = "yes (interval); spread not measured"
            else:
                row["called"] = "yes" if abs(d.value) > row["spread"] else "no (within the arithmetic spread)"
        out.append(row)
    return out


def attention_rows(traces, calibs=()) -> list[dict[str, Any]]:
    """The attention replay rows of every trace that holds attention tensors (tagged by
    ``seq_len``); the calibration trace of the same index serves ``@static`` specs."""
    out: list[dict[str, Any]] = []
    calibs = list(calibs)
    for i, tr in enumerate(traces):
        if not has_attention(tr):
            continue
        cal = calibs[i] if i < len(calibs) and has_attention(calibs[i]) else None
        for r in replay_attention(tr, DEFAULT_ATTENTION_CONFIGS, calib=cal):
            out.append({"seq_len": tr.manifest.get("seq_len"), **r})
    return out


_ATT_COLS = ["seq_len", "config", "layer", "sqnr_db", "sqnr_lo", "sqnr_hi", "kv_k_underflow", "kv_k_clip",
             "kv_v_underflow", "kv_v_clip", "q_underflow", "k_underflow", "p_underflow", "p_clip", "v_underflow",
             "p_check"]


def add_beyond_section(doc, run) -> list[dict[str, Any]]:
    """Write ``tables/beyond_linear.csv`` and the section (nothing when no perplexity config goes
    beyond the Linear layers and no trace holds attention tensors). Returns the perplexity rows
    followed by the attention replay rows (``kind`` "attention replay")."""
    rows = beyond_rows(run.ppl_rows)
    att = attention_rows(getattr(run, "traces", ()), getattr(run, "calibs", ()))
    if not rows and not att:
        return []
    doc.heading("Beyond the Linear layers: KV cache, attention, accumulators")
    if rows:
        doc.paragraph("Perplexity of configs that store the KV cache in a format (`+kv`), run Q·Kᵀ and P·V in "
                      "a format (`+attn`) or accumulate dot products in a given accumulator (`acc=`), with the "
                      "paired difference to the same config without that change (95% bootstrap over windows). "
                      "`spread`: the perplexity change of the base config between a float32 GEMM and exact "
                      "int32 sums (both scored when the report has `acc=int32` beside it); a difference is "
                      "called only when its interval excludes 0 and it exceeds that spread.")
        doc.table(rows, ["config", "kind", "ppl", "ppl_lo", "ppl_hi", "base", "diff", "diff_lo", "diff_hi",
                         "spread", "called"])
        write_csv(rows, run.out / "tables" / "beyond_linear.csv")
    if att:
        doc.paragraph("Attention replay of the recorded Q, K, V (after RoPE) per layer: K and V quantized as the "
                      "KV cache stores them (`kv=`), Q, K, P, V as the attention preset (`attn=`), the attention "
                      "output recomputed per head in float32; SQNR of that output against the float operands "
                      "with its 95% bootstrap interval over sequences (`all`: pooled over layers). Underflow: "
                      "share of nonzero inputs that became 0; clip: share beyond the range after scaling "
                      "(`kv_k`, `kv_v`: the cache; `q`, `k`, `p`, `v`: the attention preset). `p_check`: the "
                      "largest difference between the recomputed and the recorded softmax (when P was recorded).")
        doc.table(att, _ATT_COLS)
        write_csv(att, run.out / "tables" / "attention_replay.csv")
    return rows + [{"kind": "attention replay", **r} for r in att]
