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
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from fmtlab.analysis.tables import write_csv
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


def add_beyond_section(doc, run) -> list[dict[str, Any]]:
    """Write ``tables/beyond_linear.csv`` and the section (nothing when no perplexity config goes
    beyond the Linear layers). Returns the rows."""
    rows = beyond_rows(run.ppl_rows)
    if not rows:
        return []
    doc.heading("Beyond the Linear layers: KV cache, attention, accumulators")
    doc.paragraph("Perplexity of configs that store the KV cache in a format (`+kv`), run Q·Kᵀ and P·V in "
                  "a format (`+attn`) or accumulate dot products in a given accumulator (`acc=`), with the "
                  "paired difference to the same config without that change (95% bootstrap over windows). "
                  "`spread`: the perplexity change of the base config between a float32 GEMM and exact "
                  "int32 sums (both scored when the report has `acc=int32` beside it); a difference is "
                  "called only when its interval excludes 0 and it exceeds that spread.")
    doc.table(rows, ["config", "kind", "ppl", "ppl_lo", "ppl_hi", "base", "diff", "diff_lo", "diff_hi",
                     "spread", "called"])
    write_csv(rows, run.out / "tables" / "beyond_linear.csv")
    return rows
