"""Energy model: pJ per GE per operation for each energy class, calibrated to Horowitz (2014).

Model: E(unit) = sum over parts of GE(part) * e[class(part)] (one toggle of the part per
operation; the activity of each class is folded into its e). The classes ``arith`` (adders,
incrementers, comparators, XOR rows), ``mult`` (multiplier arrays: partial products and their
reduction, where glitches dominate) and ``shift`` (shifters, muxes, LZC) are fitted; ``logic``
(decode/control) and ``reg`` (registers; no calibration op contains one) take ``arith``'s value.

Calibration: the eight 45 nm / 0.9 V figures of Horowitz, ISSCC 2014 (``data/horowitz2014.json``)
are modelled with the same components (8/32-bit ripple adders, 8x8 and 32x32 array multipliers,
FP16/FP32 adders and rounding multipliers) and e is the non-negative least-squares fit of the
*relative* errors. :func:`calibration_report` lists how far each op lands from its figure.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from fmtlab.hw.blocks import Part, Styles, float_decode_parts, fp_adder_parts, fp_multiplier_parts
from fmtlab.hw.components import (ENERGY_CLASSES, AdderStyle, MultiplierStyle, adder,
                                  multiplier)
from fmtlab.hw.operands import FloatAcc
from fmtlab.hw.tech import CellLibrary, get_library, load_data

FITTED_CLASSES = ("arith", "mult", "shift")
TIED = {"logic": "arith", "reg": "arith"}


def reference_ops(st: Styles = Styles()) -> dict[str, list[Part]]:
    """The calibration operations as parts lists (same components as the MAC units)."""
    fp16, fp32 = FloatAcc(5, 10), FloatAcc(8, 23)

    def fadd(f: FloatAcc) -> list[Part]:
        we = f.exp_bits + 2
        return float_decode_parts(f, "x") + fp_adder_parts(f.man_bits + 1, we, f, st, False, "y")[:-1]

    def fmul(f: FloatAcc) -> list[Part]:
        return fp_multiplier_parts(f, f, st)

    return {
        "int8_add": [Part("adder", adder(8, st.adder))],
        "int32_add": [Part("adder", adder(32, st.adder))],
        "int8_mult": [Part("multiplier", multiplier(8, 8, False, st.multiplier))],
        "int32_mult": [Part("multiplier", multiplier(32, 32, False, st.multiplier))],
        "fp16_add": fadd(fp16),
        "fp16_mult": fmul(fp16),
        "fp32_add": fadd(fp32),
        "fp32_mult": fmul(fp32),
    }


def class_ge(parts: list[Part], lib: CellLibrary) -> dict[str, float]:
    """GE of a parts list per energy class."""
    out = {c: 0.0 for c in ENERGY_CLASSES}
    for p in parts:
        out[p.component.energy_class] += p.count * p.component.ge(lib)
    return out


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Fitted pJ per GE per operation at 45 nm, 0.9 V, for each energy class."""

    library: str
    fa: str
    adder_style: AdderStyle
    multiplier_style: MultiplierStyle
    e_pj_per_ge: tuple[tuple[str, float], ...]
    rows: tuple[tuple[str, float, float], ...]  # (op, Horowitz pJ, model pJ)

    @property
    def e(self) -> dict[str, float]:
        return dict(self.e_pj_per_ge)

    def errors(self) -> dict[str, float]:
        """Relative error (model / Horowitz - 1) per calibration op."""
        return {op: model / ref - 1.0 for op, ref, model in self.rows}

    def table(self) -> str:
        lines = ["| op | Horowitz 2014 (pJ) | model (pJ) | error |", "|---|---:|---:|---:|"]
        for op, ref, model in self.rows:
            lines.append(f"| {op} | {ref:.3g} | {model:.3g} | {100 * (model / ref - 1):+.0f}% |")
        return "\n".join(lines)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a few unknowns: the best unconstrained solution over
    every subset of free variables that comes out non-negative (exact for small n)."""
    n = A.shape[1]
    best, best_r = np.zeros(n), float(np.sum(b * b))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(A[:, cols], b, rcond=None)
        if np.any(sol < 0):
            continue
        x = np.zeros(n)
        x[cols] = sol
        r = float(np.sum((A @ x - b) ** 2))
        if r < best_r:
            best, best_r = x, r
    return best


def calibrate(library: str = "nangate45", adder_style: "AdderStyle | str" = AdderStyle.RIPPLE,
              multiplier_style: "MultiplierStyle | str" = MultiplierStyle.ARRAY,
              fa: str = "gates") -> Calibration:
    """Fit e[class] to Horowitz's figures (non-negative least squares on relative errors)."""
    return _fit(library, AdderStyle.parse(adder_style), MultiplierStyle.parse(multiplier_style), fa)


@lru_cache(maxsize=None)
def _fit(library: str, adder_style: AdderStyle, multiplier_style: MultiplierStyle,
         fa: str) -> Calibration:
    lib = get_library(library, fa)
    st = Styles(adder_style, multiplier_style)
    ops = reference_ops(st)
    ref = load_data("horowitz2014.json")["ops_pj"]
    names = list(ops)
    A = np.zeros((len(names), len(FITTED_CLASSES)))
    y = np.array([float(ref[n]) for n in names])
    for i, n in enumerate(names):
        g = class_ge(ops[n], lib)
        for c, t in TIED.items():
            g[t] += g.pop(c)
        A[i] = [g[c] for c in FITTED_CLASSES]
    x = _nnls(A / y[:, None], np.ones(len(names)))
    e = dict(zip(FITTED_CLASSES, (float(v) for v in x)))
    for c, t in TIED.items():
        e[c] = e[t]
    model = A @ x
    rows = tuple((n, float(y[i]), float(model[i])) for i, n in enumerate(names))
    return Calibration(library, fa, adder_style, multiplier_style,
                       tuple((c, e[c]) for c in ENERGY_CLASSES), rows)


def calibration_report(library: str = "nangate45", adder_style: "AdderStyle | str" = AdderStyle.RIPPLE,
                       multiplier_style: "MultiplierStyle | str" = MultiplierStyle.ARRAY,
                       fa: str = "gates") -> str:
    """Markdown: the fitted pJ/GE per class and each calibration op against Horowitz."""
    cal = calibrate(library, adder_style, multiplier_style, fa)
    head = ", ".join(f"{c} {v * 1e3:.3f} fJ/GE" for c, v in cal.e.items() if c in FITTED_CLASSES)
    errs = np.abs(np.array(list(cal.errors().values())))
    return (f"Energy per GE per operation (45 nm, 0.9 V; {library}, FA as {fa}, "
            f"{cal.adder_style.value} adders, {cal.multiplier_style.value} multipliers): {head}; "
            "logic and registers use arith's.\n"
            f"Mean |error| {100 * errs.mean():.0f}%, max {100 * errs.max():.0f}%.\n\n" + cal.table())
