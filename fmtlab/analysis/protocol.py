"""The report's measurement protocol: its statement, headline intervals and paired comparisons.

Intervals are seeded percentile bootstraps over sequences (:mod:`fmtlab.sim.stats`): replay
metrics over the evaluation trace's sequences, perplexity over the evaluation windows. A
comparison resamples the same sequences for both configs (paired) and says whether the interval
of the difference excludes zero.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from fmtlab.sim import stats as S

#: the protocol in three lines (the report and the README state it)
PROTOCOL = (
    "Dynamic scales (per-tensor, per-token, per-group, MX, NVFP4) are computed per sequence, as an inference "
    "engine does per request; static scales (the `_static` configs) are calibrated on a calibration split and frozen.",
    "Static scales and fitted transforms (SmoothQuant, AQAS) see calibration text only; every number is scored on a "
    "disjoint evaluation split (replay: a trace recorded on the eval texts; perplexity: eval windows).",
    "Each headline number carries a seeded 95% bootstrap interval over sequences; a stated difference comes with the "
    "paired-bootstrap interval of the difference and whether it excludes zero.",
    "Calibration and evaluation windows start as the model's tokenizer starts a request (Gemma 3's `<bos>`, an "
    "encoder's [CLS] ... [SEP]; SmolLM2's tokenizer adds none); each trace manifest states the tokens "
    "(`text.window_start`), and `record --window-start text` cuts bare text windows for studies of the sink itself.",
)

SEED = S.DEFAULT_SEED
N_BOOT = S.DEFAULT_N_BOOT


def _linear(res, config: str) -> dict[str, np.ndarray] | None:
    try:
        a = res.sequence_arrays(config, "linear")
    except Exception:  # noqa: BLE001 - a config without rows has no interval
        return None
    return a if a["out_noise"].shape[0] >= 2 else None


def sqnr_args(res, config: str) -> tuple[np.ndarray, np.ndarray] | None:
    a = _linear(res, config)
    return None if a is None else (a["out_noise"], a["out_signal"])


def underflow_args(res, config: str) -> tuple[np.ndarray, np.ndarray] | None:
    a = _linear(res, config)
    return None if a is None else (a["a_under"], a["a_nonzero"])


def ppl_args(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    n = np.asarray(row.get("seq_nll") or [], dtype=np.float64)
    t = np.asarray(row.get("seq_tokens") or [], dtype=np.float64)
    return (n, t) if n.size >= 2 and n.size == t.size else None


def interval(stat, args) -> S.Interval | None:
    """Bootstrap interval of ``stat(*args)`` (None when args is None: fewer than 2 sequences)."""
    return None if args is None else S.bootstrap(stat, *args, n_boot=N_BOOT, seed=SEED)


def difference(stat, a, b) -> S.Interval | None:
    """Paired-bootstrap interval of stat(a) - stat(b) (None when either side has no data)."""
    if a is None or b is None or a[0].shape != b[0].shape:
        return None
    return S.paired_difference(stat, a, b, n_boot=N_BOOT, seed=SEED)


def add_intervals(summary_rows: list[dict[str, Any]], res, ppl_rows: Sequence[dict[str, Any]]) -> None:
    """Add ``*_lo`` / ``*_hi`` columns (pooled out SQNR, act underflow, perplexity) in place."""
    ppl_by = {r["config"]: r for r in ppl_rows}
    for s in summary_rows:
        name = s["config"]
        for key, iv in (("pooled_out_sqnr", interval(S.pooled_sqnr_db, sqnr_args(res, name))),
                        ("a_underflow", interval(S.mean_rate, underflow_args(res, name))),
                        ("ppl", interval(S.perplexity_of, ppl_args(ppl_by[name])) if name in ppl_by else None)):
            s[f"{key}_lo"] = iv.lo if iv else math.nan
            s[f"{key}_hi"] = iv.hi if iv else math.nan
    for r in ppl_rows:
        iv = interval(S.perplexity_of, ppl_args(r))
        r["ppl_lo"], r["ppl_hi"] = (iv.lo, iv.hi) if iv else (math.nan, math.nan)


def with_ci(value: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """``"34.31 [33.90, 34.80]"``; the bare value when the interval is unknown."""
    def f(v):
        if not isinstance(v, (int, float)) or v is None:
            return "" if v is None else str(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    if not isinstance(lo, (int, float)) or lo is None or math.isnan(lo):
        return f(value)
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def claim(label: str, iv: S.Interval | None, unit: str, digits: int = 2) -> str:
    """``"+1.37 dB [0.90, 1.80] (interval excludes zero)"``, or a note when no interval exists."""
    if iv is None:
        return f"{label}: no interval (fewer than 2 paired sequences)"
    verdict = "interval excludes zero" if iv.excludes_zero else "interval includes zero: not resolved"
    return (f"{label}: {iv.value:+.{digits}f}{unit} [{iv.lo:+.{digits}f}, {iv.hi:+.{digits}f}] "
            f"({verdict}; paired bootstrap over {iv.n_sequences} sequences)")


def sqnr_text(r: dict[str, Any]) -> str:
    """Pooled out SQNR of a summary row with its interval, in dB."""
    return with_ci(r["pooled_out_sqnr_db"], r.get("pooled_out_sqnr_lo"), r.get("pooled_out_sqnr_hi"), 1) + " dB"


def comparisons(res, ppl_rows) -> list[str]:
    """Paired comparisons the report draws: dINT4 vs INT4 weights, static vs dynamic per-tensor W8A8."""
    out = []
    pairs = [("w4a8_dint_channel", "w4a8_int_channel", "W4A8 dINT4 minus INT4 weights (per channel)"),
             ("w8a8_int_tensor_static", "w8a8_int_tensor", "per-tensor W8A8, static minus dynamic scales")]
    ppl_by = {r["config"]: r for r in ppl_rows}
    for a, b, label in pairs:
        sa, sb = sqnr_args(res, a), sqnr_args(res, b)
        if sa is not None and sb is not None:
            out.append(claim(f"{label}, pooled layer-output SQNR", difference(S.pooled_sqnr_db, sa, sb), " dB"))
        if a in ppl_by and b in ppl_by:
            d = difference(S.perplexity_of, ppl_args(ppl_by[a]), ppl_args(ppl_by[b]))
            out.append(claim(f"{label}, perplexity", d, ""))
    return out
