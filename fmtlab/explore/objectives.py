"""Objectives and constraints of a design-space search: replay accuracy and MAC cost.

Accuracy (per candidate, from the replay rows of its Linear layers on the *evaluation* trace; static
scales and fitted transforms are calibrated on the calibration trace only, per the measurement
protocol of :mod:`fmtlab.sim.replay_engine`):

* ``pooled_out_sqnr_db`` = -10 log10(mean over layers of noise/signal of the layer output);
* ``min_out_sqnr_db`` (worst layer), ``mean_out_sqnr_db``;
* ``a_underflow_rate`` / ``a_clip_rate`` / ``w_underflow_rate`` / ``w_clip_rate``: means over layers.

Cost (per candidate, from :func:`fmtlab.hw.mac_cost` at the space's node, priced like the report:
:func:`fmtlab.hw.config_pricing.hw_operand`): ``area_um2`` and ``area_ge`` per MAC, ``energy_pj``
per MAC; ``w_bits`` / ``a_bits`` are storage bits per element including shared scales.
With the cost objective ``energy_per_token_uj`` (``fmtlab explore --cost energy_per_token``) each
point also gets :func:`energy_columns`: energy per decoded token (uJ) of the trace's model from
:func:`fmtlab.hw.inference_cost` at batch 1 and batch 64 (context 1024, HBM2, the space's node),
transform overheads and scale / quantizer units included.

Constraints read ``METRIC OP VALUE [x REF]``: METRIC is area (um^2), area_ge, energy (pJ),
bits (= w_bits, the weight memory per element), w_bits or a_bits; OP is <=, <, >= or >; with
``x REF`` the bound is VALUE times the REF x REF MAC unit's metric (``area <= 1.0 x int8``:
no larger than an int8 x int8 MAC).
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from fmtlab.errors import FmtlabError, SpaceError
from fmtlab.formats import get_format, parse_quantizer
from fmtlab.hw import SMOLLM2_135M, inference_cost, mac_cost
from fmtlab.hw.config_pricing import FP8_SCALE_NOTE, block_scale_per_mac, hw_operand
from fmtlab.sim.metrics import sqnr_db
from fmtlab.sim.quant import resolve

__all__ = ["Constraint", "parse_constraint", "price", "int_acc_exact", "acc_measured", "accuracy_from_rows",
           "element_formats", "group_size", "ACCURACY_COLUMNS", "COST_COLUMNS", "ENERGY_COLUMNS",
           "energy_columns"]

ACCURACY_COLUMNS = ("pooled_out_sqnr_db", "min_out_sqnr_db", "mean_out_sqnr_db", "a_underflow_rate",
                    "a_clip_rate", "w_underflow_rate", "w_clip_rate", "n_layers")
COST_COLUMNS = ("mac_unit", "area_um2", "area_ge", "energy_pj", "w_bits", "a_bits")
#: energy-per-token cost columns (uJ per decoded token; see :func:`energy_columns`)
ENERGY_COLUMNS = ("energy_per_token_uj", "energy_per_token_b64_uj")
#: decode setting of the energy columns
ENERGY_CONTEXT = 1024
_METRICS = {"area": "area_um2", "area_um2": "area_um2", "area_ge": "area_ge", "energy": "energy_pj",
            "energy_pj": "energy_pj", "bits": "w_bits", "w_bits": "w_bits", "a_bits": "a_bits"}
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_RE = re.compile(r"\s*(\w+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(?:x\s*([\w.]+)(?:\s*x\s*([\w.]+))?)?\s*")


@dataclass(frozen=True)
class Constraint:
    """``metric op value`` (value already multiplied by the reference unit's metric)."""

    text: str
    metric: str
    op: str
    value: float

    def ok(self, point: Mapping[str, Any]) -> bool:
        v = point.get(self.metric)
        return v is not None and not math.isnan(float(v)) and _OPS[self.op](float(v), self.value)


def parse_constraint(text: str, node: int = 45) -> Constraint:
    """A :class:`Constraint` from ``"area <= 1.0 x int8"`` and the like (FmtlabError if malformed)."""
    m = _RE.fullmatch(text)
    if not m or m.group(1) not in _METRICS:
        raise SpaceError(f"constraints: cannot read {text!r}; write METRIC OP VALUE [x REF], METRIC one of "
                         f"{', '.join(sorted(set(_METRICS)))} (e.g. 'area <= 1.0 x int8', 'bits <= 4.5')")
    metric = _METRICS[m.group(1)]
    try:
        value = float(m.group(3))
    except ValueError:
        raise SpaceError(f"constraints: {m.group(3)!r} in {text!r} is not a number") from None
    ref_w, ref_a = m.group(4), m.group(5) or m.group(4)
    if ref_w:
        if metric not in ("area_um2", "area_ge", "energy_pj"):
            raise SpaceError(f"constraints: {text!r}: 'x REF' applies to area or energy, not {m.group(1)}")
        try:
            ref = _mac(ref_w, ref_a, None, node)
        except Exception as exc:  # noqa: BLE001
            raise SpaceError(f"constraints: {text!r}: reference unit {ref_w} x {ref_a}: {exc}") from None
        value *= {"area_um2": ref[1], "area_ge": ref[2], "energy_pj": ref[3]}[metric]
    return Constraint(text, metric, m.group(2), value)


@functools.lru_cache(maxsize=4096)
def _mac(w: str, a: str, acc: str | None, node: int) -> tuple[str, float, float, float]:
    c = mac_cost(w, a, acc, node=node)
    return c.unit, float(c.area_um2_per_mac), float(c.area_ge_per_mac), float(c.energy_pj)


@functools.lru_cache(maxsize=4096)
def _operand(spec: str) -> tuple[str | None, str]:
    return hw_operand(spec)


@functools.lru_cache(maxsize=1024)
def product_bits(w_fmt: str, a_fmt: str) -> int | None:
    """Signed fixed-point bits of one w x a product (None for non-integer-like grids, e.g. FP)."""
    spans = []
    for f in (w_fmt, a_fmt):
        v = np.asarray(get_format(f).values(), dtype=np.float64)
        v = np.abs(v[np.isfinite(v)])
        nz = v[v > 0]
        if nz.size == 0:
            return None
        spans.append((float(nz.max()), float(nz.min())))
    ratio = spans[0][0] * spans[1][0] / (spans[0][1] * spans[1][1])
    return int(math.floor(math.log2(ratio))) + 2


def int_acc_exact(acc: str, w_fmt: str, a_fmt: str, k_max: int) -> bool:
    """True when an ``intN[_sat]`` accumulator cannot overflow on a K-long dot product of w x a
    products: product_bits + ceil(log2 K) <= N. Non-integer accumulators: True."""
    m = re.fullmatch(r"int(\d+)(_sat)?", acc)
    if not m:
        return True
    pb = product_bits(w_fmt, a_fmt)
    return pb is not None and pb + math.ceil(math.log2(max(2, k_max))) <= int(m.group(1))


def element_formats(spec: str) -> str:
    """The element format name of a quantizer spec (parsed by the one resolver)."""
    fmt = parse_quantizer(spec).format
    if fmt is None:
        raise SpaceError(f"quantizer {spec!r} has no element format")
    return fmt.name


def acc_measured(acc: str, w_spec: str, a_spec: str, k_max: int) -> bool:
    """True when replay must compute a candidate's dot products with its accumulator: an
    ``intN[_sat]`` that may overflow for K = ``k_max`` (:func:`int_acc_exact`), or any float
    accumulator other than fp32 (bf16, fp16, tf32, e<E>m<M>, promoted, chunked ``_k<N>``).
    ``auto``, ``fp32``, ``kulisch`` and exact integer accumulators share the float32-GEMM replay."""
    if acc in ("auto", "fp32", "kulisch") or re.fullmatch(r"kulisch\d*", acc):
        return False
    if re.fullmatch(r"int(\d+)(_sat)?", acc):
        return not int_acc_exact(acc, element_formats(w_spec), element_formats(a_spec), k_max)
    return True


def _priced_acc(acc: str | None) -> str | None:
    """The MAC model's accumulator name: a chunk suffix ``_k<N>`` is an accuracy setting only."""
    return None if acc is None else re.sub(r"_k\d+$", "", acc)


@functools.lru_cache(maxsize=4096)
def group_size(spec: str) -> int | None:
    """Elements per scale along the reduction axis of a quantizer spec (groups, blocks; a 2-D
    r x c tile: c), or None."""
    g = resolve(spec).obj.granularity
    tile = getattr(g, "tile", None)
    return tile[1] if tile else getattr(g, "size", None)


def price(cand, node: int = 45, k_max: int = 4096, k_all: tuple[int, ...] = ()) -> dict[str, Any]:
    """Cost columns of a :class:`fmtlab.explore.space.Candidate`, or {"error": reason} when the MAC
    model cannot price it, or a group/block size does not divide one of the trace's reduction
    lengths ``k_all`` (``k_max`` is kept for callers; accumulators are measured, see
    :func:`acc_measured`)."""
    for spec in (cand.weight, cand.act):
        g = group_size(spec)
        bad = [k for k in k_all if g and k % g]
        if bad:
            return {"error": f"group/block size {g} does not divide K={bad[0]} of the trace"}
    w, wn = _operand(cand.weight)
    a, an = _operand(cand.act)
    if w is None or a is None:
        return {"error": f"not priceable: w {wn}, a {an}"}
    acc = None if cand.accumulator == "auto" else _priced_acc(cand.accumulator)
    try:
        unit, area, ge, pj = _mac(w, a, acc, node)
        if FP8_SCALE_NOTE in wn + an:  # NVFP4-style E4M3 block scales: their multiply per block
            dge, dum2, dpj = block_scale_per_mac(w, a, node)
            area, ge, pj = area + dum2, ge + dge, pj + dpj
    except Exception as exc:  # noqa: BLE001 - unpriceable pairs are not points of the space
        return {"error": f"not priceable: {' '.join(str(exc).split())}"}
    return {"mac_unit": unit, "area_um2": area, "area_ge": ge, "energy_pj": pj,
            "w_bits": cand.w_bits, "a_bits": cand.a_bits}


def accuracy_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy columns (see the module doc) of one config's Linear-layer replay rows."""
    rows = [r for r in rows if r.get("kind", "linear") == "linear"]
    if not rows:
        raise FmtlabError("no Linear-layer rows to score")

    def col(k):
        return np.array([float(r.get(k, math.nan)) for r in rows], dtype=np.float64)

    nsr = col("out_nsr")
    nsr = nsr[~np.isnan(nsr)]
    sq = col("out_sqnr_db")
    sq = sq[~np.isnan(sq)]
    out = {"pooled_out_sqnr_db": sqnr_db(1.0, float(nsr.mean())) if nsr.size else math.nan,
           "min_out_sqnr_db": float(sq.min()) if sq.size else math.nan,
           "mean_out_sqnr_db": float(sq[np.isfinite(sq)].mean()) if np.isfinite(sq).any() else math.nan}
    for k in ("a_underflow_rate", "a_clip_rate", "w_underflow_rate", "w_clip_rate"):
        v = col(k)
        v = v[~np.isnan(v)]
        out[k] = float(v.mean()) if v.size else math.nan
    out["n_layers"] = len(rows)
    return out


def feasible(point: Mapping[str, Any], constraints: Iterable[Constraint]) -> list[str]:
    """Texts of the constraints ``point`` breaks (empty: feasible)."""
    return [c.text for c in constraints if not c.ok(point)]


def energy_columns(cand, node: int = 45, model=None) -> dict[str, Any]:
    """Energy per decoded token (uJ) of a candidate at batch 1 and 64 (:data:`ENERGY_COLUMNS`),
    or {"error": reason}. ``model``: a :class:`fmtlab.hw.ModelShape` (default SmolLM2-135M)."""
    cfg = dict(name=cand.replay_key, weight=cand.weight, act=cand.act, transform=cand.transform,
               act_calib=cand.act_calib, accumulator=None if cand.accumulator == "auto" else _priced_acc(cand.accumulator))
    try:
        e1, e64 = (inference_cost(model or SMOLLM2_135M, cfg, batch=b, context=ENERGY_CONTEXT, node=node).energy_j
                   for b in (1, 64))
    except Exception as exc:  # noqa: BLE001 - an unpriceable point is left out, with its reason
        return {"error": f"energy per token not priceable: {' '.join(str(exc).split())}"}
    return {"energy_per_token_uj": e1 * 1e6, "energy_per_token_b64_uj": e64 * 1e6}
