"""The report's accumulation study (MAC pricing of a config lives in :mod:`fmtlab.hw.config_pricing`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fmtlab.formats import get_quantizer
from fmtlab.hw.config_pricing import hw_operand, price_config  # noqa: F401 - re-exported for fmtlab.analysis.report
from fmtlab.hw.datapath import dot

# ------------------------------------------------------------------------- accumulation study

def accumulation_study(x: np.ndarray, w: np.ndarray, n_tokens: int = 16, n_rows: int = 256) -> list[dict[str, Any]]:
    """Dot-product error against accumulator width on a real layer (bit-accurate datapath).

    X [tokens, K] and W [out, K] are quantized (INT8 per-token / per-channel; FP8 E4M3 per-tensor)
    and their codes multiplied-accumulated as the MAC hardware would (FP8 also through the
    Hopper-style 1/8/13 accumulator with and without fp32 promotion every 128 products, see
    :mod:`fmtlab.hw.promotion`; acc_bits 22 is the inner accumulator's width). rel_error is
    ||acc - exact||_2 / ||exact||_2 over the n_tokens x n_rows outputs; overflow_rate is the share
    of dot products with at least one overflow event.
    """
    x = np.ascontiguousarray(x[:n_tokens], dtype=np.float32)
    w = np.ascontiguousarray(w[:n_rows], dtype=np.float32)
    rows: list[dict[str, Any]] = []
    cases = [
        ("int8 x int8 (wrap)", "int8_per_channel", "int8_per_token", "int8", "int8",
         [(b, f"int{b}") for b in (16, 17, 18, 19, 20, 24, 32)]),
        ("int8 x int8 (saturate)", "int8_per_channel", "int8_per_token", "int8", "int8",
         [(b, f"int{b}_sat") for b in (16, 17, 18, 19, 20, 24, 32)]),
        ("fp8_e4m3 x fp8_e4m3", "fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor", "fp8_e4m3", "fp8_e4m3",
         [(16, "bf16"), (16, "fp16"), (32, "fp32")]),
        ("fp8_e4m3 (Hopper MMA, no promotion)", "fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor", "fp8_e4m3",
         "fp8_e4m3", [(22, "hopper_fp8_mma_nopromo")]),
        ("fp8_e4m3 (Hopper MMA, fp32 every 128)", "fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor", "fp8_e4m3",
         "fp8_e4m3", [(22, "hopper_fp8_mma")]),
    ]
    for label, wq_name, aq_name, wf, af, accs in cases:
        wc = get_quantizer(wq_name).quantize(w).codes
        xc = get_quantizer(aq_name).quantize(x).codes
        W = np.broadcast_to(wc[None, :, :], (xc.shape[0],) + wc.shape)
        X = np.broadcast_to(xc[:, None, :], (xc.shape[0], wc.shape[0], xc.shape[1]))
        for bits, acc in accs:
            try:
                r = dot(np.ascontiguousarray(W), np.ascontiguousarray(X), wf, af, acc)
            except Exception as exc:  # noqa: BLE001 - report what the datapath cannot do
                rows.append({"config": label, "accumulator": acc, "acc_bits": bits, "rel_error": math.nan,
                             "overflow_rate": math.nan, "note": str(exc)})
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.where(np.isfinite(r.value), r.value - r.exact, np.nan)
                denom = float(np.sqrt(np.sum(r.exact ** 2)))
                err = float(np.sqrt(np.nansum(diff ** 2)) / denom) if denom > 0 else 0.0
            rows.append({"config": label, "accumulator": acc, "acc_bits": bits, "rel_error": err,
                         "overflow_rate": float(np.mean(np.asarray(r.overflows) > 0)),
                         "non_finite": int(np.sum(~np.isfinite(r.value))), "note": ""})
    return rows
