"""Replay of recorded attention (Q, K, V after RoPE; P) under KV-cache and attention specs, in numpy.

A trace recorded with ``fmtlab record --qkv`` (:func:`fmtlab.models.record.record`, ``qkv=True``)
holds, per attention layer, Q [sequences, heads, tokens, head_dim] after RoPE and the cache's K, V
[sequences, kv_heads, tokens, head_dim] (Gemma 3: after q-/k-norm), with the layer's softmax
scaling, logit softcap and sliding window (manifest section ``attention``); with ``--attention``
also P (the softmax output). :func:`replay_attention` scores configs on them:

* a config is ``"kv=<KV spec>"``, ``"attn=<preset>"`` or both, ``"kv=<spec>;attn=<preset>"``
  (specs: :mod:`fmtlab.sim.attention_specs`, the same as ``quantize_model(kv_cache=, attention=)``);
* K and V are quantized as the KV cache stores them in one prefill (per token rows of head_dim, per
  tensor per sequence, per channel per sequence; ``@static``: one per-tensor scale per layer and
  K / V from the calibration trace, absmax), then Q, K, P, V as the attention preset quantizes them
  (K and V after ``repeat_kv``). The quantization is the numpy ``Quantizer`` the torch path wraps,
  on the same reshapes (:func:`quantize_kv`, :func:`quantize_qk`, :func:`quantize_pv`): the same
  bits as ``fmtlab.pytorch`` for the same input (tested); SageAttention's K smoothing subtracts a
  float64 mean rounded to float32 on both sides;
* the attention output O = P·V per head is recomputed in float32 (S = Q Kᵀ · scaling, softcap,
  causal mask with the sliding window, softmax), once from the float operands (the reference) and
  once from the quantized ones. Its SQNR per layer (10 log10 sum O_ref² / sum (O - O_ref)²) comes
  with a seeded bootstrap interval over sequences (:mod:`fmtlab.sim.stats`); the row ``all`` pools
  the layers (mean noise-to-signal ratio). Underflow (nonzero inputs that become 0, share of the
  nonzero) and clipping (share of all inputs beyond the range after scaling) are given for K, V
  (the cache's quantization) and Q, K, P, V (the attention preset's).
* Where P was recorded, ``p_check`` is the largest |softmax(Q Kᵀ) recomputed here - P recorded|
  of the layer (float32 rounding of a different summation order: ~1e-7; a mask or scaling mismatch
  would show as O(1)).

The reference and quantized paths share the float32 arithmetic, so the SQNR measures the formats,
not a torch / numpy difference. Only prefill is replayed (decoding's frozen per-tensor / per-channel
scales of later tokens are not).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np

from fmtlab.errors import FmtlabError, compile_pattern
from fmtlab.formats import PerBlock, PerTensor, Quantizer, Static
from fmtlab.sim import metrics as M
from fmtlab.sim.attention_specs import (AttentionQuantizers, attention_preset, kv_granularity, kv_quantizers)
from fmtlab.sim.quant import QuantFn
from fmtlab.sim.stats import bootstrap, pooled_sqnr_db
from fmtlab.sim.trace import Trace, open_trace

__all__ = ["AttentionConfig", "parse_attention_config", "has_attention", "quantize_kv", "quantize_qk",
           "quantize_pv", "attention_output", "replay_attention", "DEFAULT_ATTENTION_CONFIGS"]

#: the configs the report scores when a trace holds attention tensors
DEFAULT_ATTENTION_CONFIGS = ("kv=int8_sym_per_token", "kv=int4_sym_per_token", "kv=fp8_e4m3_per_tensor",
                             "kv=nvfp4", "attn=fp8_fa3", "attn=sage_int8_fp8", "attn=mxfp8")

_ROLES = ("kv_k", "kv_v", "q", "k", "p", "v")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """One replay config: a KV spec string (or None), an attention preset (or None), its name."""

    name: str
    kv: str | None = None
    attn: str | None = None


def parse_attention_config(text: str) -> AttentionConfig:
    """``"kv=<spec>"``, ``"attn=<preset>"`` or ``"kv=<spec>;attn=<preset>"`` (parts in any order);
    FmtlabError for anything else (the specs are resolved now)."""
    if isinstance(text, AttentionConfig):
        return text
    if not isinstance(text, str) or not text.strip():
        raise FmtlabError(f"an attention replay config is 'kv=SPEC', 'attn=PRESET' or both joined by ';', got {text!r}")
    kv = attn = None
    for part in text.split(";"):
        key, sep, val = part.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not sep or not val or key not in ("kv", "attn") or (key == "kv" and kv) or (key == "attn" and attn):
            raise FmtlabError(f"attention replay config {text!r}: each part is 'kv=SPEC' or 'attn=PRESET', once")
        if key == "kv":
            kv = val
        else:
            attn = val
    if kv is not None:
        kv_quantizers(kv)
    if attn is not None:
        attention_preset(attn)
    return AttentionConfig(text.strip(), kv, attn)


def has_attention(trace: Trace) -> bool:
    """True when ``trace`` holds recorded attention tensors (``record --qkv``)."""
    return bool(trace.manifest.get("attention"))


# ------------------------------------------------------------------ quantization (torch twins)

class _Counts:
    """Underflow / clipping counts of one operand role."""

    def __init__(self) -> None:
        self.n = self.nonzero = self.under = self.clip = 0.0

    def add(self, x: np.ndarray, xq: np.ndarray, clip: Any) -> None:
        s = M.error_sums(x, xq, clip)
        self.n += s["n"]
        self.nonzero += s["n_nonzero"]
        self.under += s["n_under"]
        self.clip += s["n_clip"]

    def shares(self) -> tuple[float, float]:
        return (self.under / self.nonzero if self.nonzero else math.nan,
                self.clip / self.n if self.n else math.nan)


def _fq(q: Quantizer, x2: np.ndarray, counts: _Counts | None) -> np.ndarray:
    """q's fake-quant of the 2-D float32 ``x2``, counting underflow and clipping."""
    x2 = np.ascontiguousarray(x2, dtype=np.float32)
    if counts is None:
        return q.fake_quantize(x2).astype(np.float32, copy=False)
    xq, clip = QuantFn(q.name, q.fake_quantize, q).with_clip(x2)
    counts.add(x2, xq, clip)
    return xq


def _rows_only(q: Quantizer) -> bool:
    g = q.granularity
    return not (isinstance(g, PerBlock) and g.tensor_scale)


def quantize_kv(q: Quantizer | None, x: np.ndarray, counts: _Counts | None = None) -> np.ndarray:
    """The KV cache's fake-quant of one prefill write ``x`` [batch, kv_heads, tokens, head_dim]
    (numpy twin of ``fmtlab.pytorch.kv_cache.KVCacheQuantizer.quantize`` with dynamic scales, or
    static ones baked into ``q`` as a ``Static`` rule)."""
    if q is None:
        return x
    B, H, T, D = x.shape
    gran = kv_granularity(q)
    if gran == "token":
        if _rows_only(q):
            return _fq(q, x.reshape(-1, D), counts).reshape(x.shape)
        return np.stack([_fq(q, s.reshape(-1, D), counts).reshape(H, T, D) for s in x])
    if gran == "tensor":
        return np.stack([_fq(q, s.reshape(H * T, D), counts).reshape(H, T, D) for s in x])
    return np.stack([_fq(q, s.transpose(1, 0, 2).reshape(T, H * D), counts).reshape(T, H, D).transpose(1, 0, 2)
                     for s in x])


def _pad_last(x2: np.ndarray, mult: int) -> tuple[np.ndarray, int]:
    n = x2.shape[-1]
    pad = (-n) % mult
    if pad:
        x2 = np.concatenate([x2, np.zeros((x2.shape[0], pad), x2.dtype)], axis=1)
    return x2, n


def _quant(q: Quantizer | None, x: np.ndarray, gran: str, counts: _Counts | None) -> np.ndarray:
    """Twin of ``fmtlab.pytorch.attention._quant`` on x [B, H, T, D]."""
    if q is None:
        return x
    B, H, T, D = x.shape
    if gran == "head":
        return _fq(q, x.reshape(B * H, T * D), counts).reshape(x.shape)
    if gran in ("token", "static"):
        return _fq(q, x.reshape(-1, D), counts).reshape(x.shape)
    if gran == "channel":
        return _fq(q, x.transpose(0, 1, 3, 2).reshape(-1, T), counts).reshape(B, H, D, T).transpose(0, 1, 3, 2)
    xp, n = _pad_last(x.reshape(-1, D), getattr(q.granularity, "size", 1))
    return _quant_padded(q, xp, n, counts).reshape(x.shape)


def _quant_padded(q: Quantizer, xp: np.ndarray, n: int, counts: _Counts | None) -> np.ndarray:
    """Quantize zero-padded rows; counts cover the real columns only."""
    if counts is None or xp.shape[1] == n:
        return _fq(q, xp, counts)[:, :n]
    xq, clip = QuantFn(q.name, q.fake_quantize, q).with_mask(np.ascontiguousarray(xp, dtype=np.float32))
    counts.add(xp[:, :n], xq[:, :n], None if clip is None else clip[:, :n])
    return xq[:, :n]


def smooth_keys(k: np.ndarray) -> np.ndarray:
    """K minus its per-head mean over tokens (axis 2), the mean summed in float64 and rounded to
    float32 (as ``fmtlab.pytorch.attention.smooth_keys``)."""
    return (k - k.astype(np.float64).mean(axis=2, keepdims=True).astype(np.float32)).astype(np.float32)


def quantize_qk(a: AttentionQuantizers, q: np.ndarray, k: np.ndarray,
                counts: dict[str, _Counts] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Q, K [B, H, T, D] (K after repeat_kv) as the attention preset ``a`` quantizes them."""
    if a.smooth_k:
        k = smooth_keys(k)
    c = counts or {}
    return _quant(a.q, q, a.grans[0], c.get("q")), _quant(a.k, k, a.grans[1], c.get("k"))


def quantize_pv(a: AttentionQuantizers, p: np.ndarray, v: np.ndarray,
                counts: dict[str, _Counts] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P [B, H, T, S], V [B, H, S, D] (after repeat_kv) as the attention preset ``a`` quantizes them."""
    c = counts or {}
    if a.p is not None:
        if a.grans[2] == "block":  # blocks along the keys
            pp, n = _pad_last(p.reshape(-1, p.shape[-1]), a.p.granularity.size)
            p = _quant_padded(a.p, pp, n, c.get("p")).reshape(p.shape)
        else:
            p = _quant(a.p, p, a.grans[2], c.get("p"))
    if a.v is not None:
        if a.grans[3] == "block":  # blocks along the keys
            vt = np.ascontiguousarray(v.transpose(0, 1, 3, 2))
            v = _quant(a.v, vt, "block", c.get("v")).transpose(0, 1, 3, 2)
        else:
            v = _quant(a.v, v, a.grans[3], c.get("v"))
    return p, v


# ------------------------------------------------------------------ attention in float32

def _repeat_kv(x: np.ndarray, n: int) -> np.ndarray:
    return x if n == 1 else np.repeat(x, n, axis=1)


def _mask(T: int, S: int, window: int | None) -> np.ndarray:
    """Allowed (query, key) pairs: causal (keys at or before the query; queries are the last T of
    S positions), and within ``window`` positions (q - k < window) when given."""
    qpos = np.arange(S - T, S)[:, None]
    kpos = np.arange(S)[None, :]
    ok = kpos <= qpos
    if window is not None:
        ok &= (qpos - kpos) < window
    return ok


def softmax_probs(q: np.ndarray, k: np.ndarray, scaling: float, softcap: float | None,
                  window: int | None) -> np.ndarray:
    """P = softmax(Q Kᵀ · scaling [softcap], causal [sliding window]) in float32; q [B, H, T, D],
    k [B, H, S, D] (heads already repeated)."""
    w = np.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(scaling)
    if softcap is not None:
        w = np.tanh(w / np.float32(softcap)) * np.float32(softcap)
    ok = _mask(q.shape[2], k.shape[2], window)
    w = np.where(ok, w, np.float32(-np.inf))
    w = w - w.max(axis=-1, keepdims=True)
    e = np.exp(w)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)


def attention_output(q: np.ndarray, k: np.ndarray, v: np.ndarray, meta: dict[str, Any],
                     kvq: tuple[Quantizer | None, Quantizer | None] | None = None,
                     aq: AttentionQuantizers | None = None, counts: dict[str, _Counts] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(O [B, H, T, D], P) of one layer in float32: K, V quantized by the KV-cache quantizers
    ``kvq`` (keys, values) first, then Q, K, P, V by the attention preset ``aq``."""
    c = counts or {}
    if kvq is not None:
        k = quantize_kv(kvq[0], k, c.get("kv_k"))
        v = quantize_kv(kvq[1], v, c.get("kv_v"))
    groups = q.shape[1] // k.shape[1]
    k = _repeat_kv(k, groups)
    v = _repeat_kv(v, groups)
    if aq is not None and not aq.identity:
        q, k = quantize_qk(aq, q, k, c)
    p = softmax_probs(q, k, meta["scaling"], meta.get("softcap"), meta.get("sliding_window"))
    pq = p
    if aq is not None and not aq.identity:
        pq, v = quantize_pv(aq, p, v, c)
    return np.matmul(pq, v), p


# ------------------------------------------------------------------ replay

def _static_kv(q: Quantizer | None, calib: Trace, meta_name: str, role: str) -> Quantizer | None:
    """``q`` with its one per-tensor scale calibrated (absmax) on the calibration trace's K or V
    of layer ``meta_name`` (``fmtlab.pytorch.calibrate``'s rule for static KV scales)."""
    if q is None:
        return None
    if kv_granularity(q) != "tensor" or q.is_block:
        raise FmtlabError(f"KV spec @static: the replay calibrates per-tensor scales only, got {q.name} "
                          f"({q.granularity}); use the perplexity path (quantize_model) for per-channel static scales")
    info = calib.manifest.get("attention", {}).get(meta_name)
    if info is None:
        raise FmtlabError(f"the calibration trace {calib.path} has no attention tensors of layer {meta_name} "
                          "(record it with --qkv)")
    x = np.ascontiguousarray(calib.tensor(info[role]), dtype=np.float32)
    if not np.any(x):
        raise FmtlabError(f"layer {meta_name}: the calibration {role} are all zero")
    s, z = q.compute_scales(x.reshape(-1, x.shape[-1]))
    s0 = float(np.asarray(s).reshape(-1)[0])
    z0 = None if z is None else int(np.asarray(z).reshape(-1)[0])
    return dataclasses.replace(q, scale_rule=Static(s0, z0), granularity=PerTensor())


def replay_attention(trace: Trace | str, configs: Iterable[str | AttentionConfig] = DEFAULT_ATTENTION_CONFIGS, *,
                     calib: Trace | str | None = None, layers: str | None = None, level: float = 0.95,
                     n_boot: int = 1000, seed: int = 0, verify: bool = True) -> list[dict[str, Any]]:
    """One row per (config, attention layer) plus a pooled ``all`` row per config (module docstring):
    ``sqnr_db`` [``sqnr_lo``, ``sqnr_hi``] of the attention output, ``<role>_underflow`` and
    ``<role>_clip`` for roles kv_k, kv_v (the cache) and q, k, p, v (the attention preset), and
    ``p_check``. ``calib``: the calibration trace (needed by ``@static`` KV specs)."""
    tr = open_trace(trace, verify=verify)
    att = tr.manifest.get("attention") or {}
    if not att:
        raise FmtlabError(f"trace {tr.path} holds no attention tensors; record it with --qkv")
    cfgs = [parse_attention_config(c) for c in configs]
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise FmtlabError(f"attention replay config names must be unique: {names}")
    if layers is not None:
        pat = compile_pattern(layers, "layers")
        att = {n: m for n, m in att.items() if pat.search(n)}
        if not att:
            raise FmtlabError(f"no attention layer of {tr.path} matches {layers!r}")
    cal = open_trace(calib, verify=verify) if calib is not None else None
    tensors = set(tr.tensor_names)
    n_seq = int(tr.manifest["n_sequences"])
    rows: list[dict[str, Any]] = []
    per_cfg: dict[str, tuple[list, list]] = {c.name: ([], []) for c in cfgs}
    for lname, meta in att.items():
        q, k, v = (np.asarray(tr.tensor(meta[r]), dtype=np.float32) for r in ("q", "k", "v"))
        p_rec = tr.tensor(meta["probs"]) if meta.get("probs") and meta["probs"] in tensors else None
        o_ref, p_ref, check = [], [], 0.0
        for s in range(n_seq):
            o, p = attention_output(q[s:s + 1], k[s:s + 1], v[s:s + 1], meta)
            o_ref.append(o)
            if p_rec is not None:
                check = max(check, float(np.max(np.abs(p[0] - p_rec[s]))))
        for cfg in cfgs:
            kvq = None
            if cfg.kv is not None:
                kq, vq, scales, _ = kv_quantizers(cfg.kv)
                if scales == "static":
                    if cal is None:
                        raise FmtlabError(f"config {cfg.name!r}: @static KV scales need the calibration trace (calib=)")
                    kq, vq = _static_kv(kq, cal, lname, "k"), _static_kv(vq, cal, lname, "v")
                kvq = (kq, vq)
            aq = attention_preset(cfg.attn) if cfg.attn is not None else None
            counts = {r: _Counts() for r in _ROLES}
            noise = np.zeros(n_seq)
            signal = np.zeros(n_seq)
            for s in range(n_seq):
                o, _ = attention_output(q[s:s + 1], k[s:s + 1], v[s:s + 1], meta, kvq, aq, counts)
                ref = o_ref[s].astype(np.float64)
                signal[s] = float(np.sum(ref * ref))
                d = o.astype(np.float64) - ref
                noise[s] = float(np.sum(d * d))
            iv = bootstrap(lambda n_, s_: pooled_sqnr_db(n_[:, None], s_[:, None]), noise, signal,
                           level=level, n_boot=n_boot, seed=seed)
            row = {"config": cfg.name, "layer": lname, "block": meta.get("block"), "sqnr_db": iv.value,
                   "sqnr_lo": iv.lo, "sqnr_hi": iv.hi, "n_sequences": n_seq,
                   "p_check": check if p_rec is not None else math.nan}
            for r in _ROLES:
                row[f"{r}_underflow"], row[f"{r}_clip"] = counts[r].shares()
            rows.append(row)
            per_cfg[cfg.name][0].append(noise)
            per_cfg[cfg.name][1].append(signal)
    for cfg in cfgs:
        nz, sg = (np.stack(a, axis=1) for a in per_cfg[cfg.name])
        iv = bootstrap(pooled_sqnr_db, nz, sg, level=level, n_boot=n_boot, seed=seed)
        rows.append({"config": cfg.name, "layer": "all", "block": None, "sqnr_db": iv.value, "sqnr_lo": iv.lo,
                     "sqnr_hi": iv.hi, "n_sequences": n_seq, "p_check": math.nan,
                     **{f"{r}_{m}": math.nan for r in _ROLES for m in ("underflow", "clip")}})
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`replay_attention` rows (SQNR, interval, K/V/P shares)."""
    head = f"{'config':<34} {'layer':<28} {'SQNR dB':>8} {'95% CI':>17} {'K uf':>7} {'K clip':>7} " \
           f"{'V uf':>7} {'P uf':>7} {'P clip':>7} {'p_check':>8}"
    out = [head]

    def pct(x: float) -> str:
        return "" if x != x else f"{100 * x:.2f}%"
    for r in rows:
        ku = r["kv_k_underflow"] if r["kv_k_underflow"] == r["kv_k_underflow"] else r["k_underflow"]
        kc = r["kv_k_clip"] if r["kv_k_clip"] == r["kv_k_clip"] else r["k_clip"]
        vu = r["kv_v_underflow"] if r["kv_v_underflow"] == r["kv_v_underflow"] else r["v_underflow"]
        out.append(f"{r['config']:<34.34} {r['layer']:<28.28} {r['sqnr_db']:>8.2f} "
                   f"[{r['sqnr_lo']:>6.2f}, {r['sqnr_hi']:>6.2f}] {pct(ku):>7} {pct(kc):>7} {pct(vu):>7} "
                   f"{pct(r['p_underflow']):>7} {pct(r['p_clip']):>7} "
                   + ("" if r["p_check"] != r["p_check"] else f"{r['p_check']:>8.1e}"))
    return "\n".join(out)
