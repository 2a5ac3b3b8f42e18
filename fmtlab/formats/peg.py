"""PEG: per-embedding-group activation quantization (Bondarenko et al. 2021, "Understanding and
Overcoming the Challenges of Efficient Transformer Quantization").

Activations X are [tokens, features] (fmtlab's axis convention). The features are split into K
groups and every group gets one scale. With the *range-based permutation* the features are first
sorted by their range r_j (here: max |x_j| over the data that sets the ranges, the symmetric
reading of the paper's max - min, matching fmtlab's symmetric INT presets), so that the few
outlier features share a group and the others keep a fine scale. Group g holds the features
``perm[bounds[g]:bounds[g+1]]``; groups are contiguous slices of the sorted order, as equal as
possible (``numpy.array_split`` sizes: the first ``d % K`` groups get one feature more).

Static vs dynamic (our reading): the paper calibrates activation ranges on calibration data and
freezes them (static), and the permutation is fixed at calibration too. :meth:`PegQuantizer.calibrate`
does that: ranges, permutation and the K scales all come from calibration rows, and the frozen
result is an ordinary fmtlab :class:`~fmtlab.formats.Quantizer` with one static scale per feature
(``PerChannel(axis=1)``, each feature carrying its group's scale), so its bits are those of the
format's own kernel. An uncalibrated :class:`PegQuantizer` is the *dynamic* variant: every call
derives ranges, permutation and scales from the tensor it is given (in fmtlab's replay and
``quantize_model`` that is one sequence).

Group scale: the element quantizer's scale rule (absmax by default; ``percentile(P)`` / ``mse``)
applied to the group's columns as one per-tensor slot: ``fl32(c / fl32(fmt.max))``. So K = 1 is
exactly per-tensor quantization with the same rule, bit for bit.

Names: ``int8_peg6`` = INT8 elements, K = 6 groups, with the permutation; ``int8_peg6_noperm`` keeps
the feature order (contiguous groups, the paper's PEG without P); any registry INT/FP format name
works before ``_peg``.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from fmtlab.errors import FmtlabError
from fmtlab.formats.quantizer import Quantizer
from fmtlab.formats.scaling import PerChannel, PerTensor, Static, parse_scale_rule

__all__ = ["PegQuantizer", "parse_peg_name", "range_permutation", "group_bounds"]

_NAME_RE = re.compile(r"(.+?)_peg(\d+)(_noperm)?")


def group_bounds(features: int, groups: int) -> np.ndarray:
    """Start offsets of the K groups in the (permuted) feature order, plus ``features`` at the end."""
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise FmtlabError(f"PEG needs groups >= 1, got {groups=!r}")
    if groups > features:
        raise FmtlabError(f"PEG with {groups=} needs at least that many features, got {features=}")
    sizes = [len(a) for a in np.array_split(np.arange(features), groups)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def range_permutation(ranges: np.ndarray, groups: int, permute: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(perm, group_of_feature): ``perm`` sorts features by ascending range (stable, so equal ranges
    keep their order), ``group_of_feature[j]`` is the group of feature j. Without ``permute`` the
    order is the identity (contiguous groups)."""
    r = np.asarray(ranges, dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise FmtlabError("PEG feature ranges must be finite and non-empty")
    perm = np.argsort(r, kind="stable") if permute else np.arange(r.size)
    b = group_bounds(r.size, groups)
    gof = np.empty(r.size, dtype=np.int64)
    for g in range(groups):
        gof[perm[b[g]:b[g + 1]]] = g
    return perm.astype(np.int64), gof


def parse_peg_name(name: str) -> dict | None:
    """``"int8_peg6[_noperm]"`` -> dict(format="int8", groups=6, permute=True); None if not PEG."""
    m = _NAME_RE.fullmatch(str(name).strip().lower())
    if not m:
        return None
    return {"format": m.group(1), "groups": int(m.group(2)), "permute": m.group(3) is None}


@dataclasses.dataclass(frozen=True)
class PegQuantizer:
    """PEG activation quantizer for [tokens, features] arrays (see the module docstring).

    format: element format name (e.g. "int8"); groups: K; permute: range-based permutation;
    scale_rule: the rule that turns a group's values into its scale (absmax default).
    ``fake_quantize`` is dynamic (per call); :meth:`calibrate` returns the frozen static quantizer.
    """

    format: str = "int8"
    groups: int = 6
    permute: bool = True
    scale_rule: str = "absmax"
    name: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.groups, bool) or not isinstance(self.groups, (int, np.integer)) or self.groups < 1:
            raise FmtlabError(f"PEG needs groups >= 1, got groups={self.groups!r}")
        if not isinstance(self.permute, bool):
            raise FmtlabError(f"PEG permute must be a bool, got permute={self.permute!r}")
        self.element_quantizer()  # validates format and rule
        if self.name is None:
            object.__setattr__(self, "name", f"{self.format}_peg{self.groups}" + ("" if self.permute else "_noperm"))

    @classmethod
    def from_name(cls, name: str, **overrides) -> "PegQuantizer":
        spec = parse_peg_name(name)
        if spec is None:
            raise FmtlabError(f"{name!r} is not a PEG name (<format>_peg<K>[_noperm], e.g. int8_peg6)")
        unknown = set(overrides) - {"scale_rule", "permute", "groups"}
        if unknown:
            raise FmtlabError(f"{name}: unknown PEG override(s) {sorted(unknown)}; use scale_rule, permute, groups")
        spec.update(overrides)
        return cls(**spec, name=None if overrides else str(name).strip().lower())

    def element_quantizer(self) -> Quantizer:
        """The per-tensor quantizer whose rule sets one group's scale."""
        return Quantizer(self.format, PerTensor(), parse_scale_rule(self.scale_rule))

    def _check(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x)
        if a.ndim != 2:
            raise FmtlabError(f"PEG takes [tokens, features] activations, got shape {a.shape}")
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        if a.size == 0:
            raise FmtlabError("PEG got an empty activation")
        return a

    def feature_scales(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scale per feature [features] float32, perm, group_of_feature) set from the rows of x."""
        a = self._check(x)
        with np.errstate(invalid="ignore"):
            ranges = np.nanmax(np.abs(a), axis=0) if a.shape[0] else np.zeros(a.shape[1])
        if not np.all(np.isfinite(ranges)):
            raise FmtlabError("PEG ranges: the activation holds Inf; clean it or use a static scale")
        perm, gof = range_permutation(ranges, self.groups, self.permute)
        b = group_bounds(a.shape[1], self.groups)
        q = self.element_quantizer()
        s = np.empty(a.shape[1], dtype=np.float32)
        for g in range(self.groups):
            idx = np.sort(perm[b[g]:b[g + 1]])
            sg, _ = q.compute_scales(np.ascontiguousarray(a[:, idx]))
            s[idx] = np.asarray(sg, dtype=np.float32).reshape(-1)[0]
        return s, perm, gof

    def frozen(self, scales: np.ndarray) -> Quantizer:
        """The static quantizer with these per-feature scales (one per column)."""
        return Quantizer(self.format, PerChannel(1), Static(tuple(float(v) for v in np.asarray(scales).reshape(-1))),
                         name=f"{self.name}[static]")

    def calibrate(self, x_calib: np.ndarray, rule: str | None = None) -> "StaticPeg":
        """Static PEG: ranges, permutation and K scales from calibration rows ``x_calib``, frozen.

        ``rule`` (replay's ``act_calib``: "absmax", "percentile(P)", "mse") overrides the scale rule.
        """
        peg = self if rule is None else dataclasses.replace(self, scale_rule=str(rule), name=self.name)
        a = peg._check(x_calib)
        if not np.any(a):
            raise FmtlabError(f"static calibration of {self.name!r} got no nonzero calibration data")
        s, perm, gof = peg.feature_scales(a)
        return StaticPeg(peg, peg.frozen(s), perm, gof)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """Dynamic PEG: ranges, permutation and scales from ``x`` itself."""
        a = self._check(x)
        s, _, _ = self.feature_scales(a)
        return self.frozen(s).fake_quantize(a)


@dataclasses.dataclass(frozen=True, eq=False)
class StaticPeg:
    """A calibrated PEG quantizer: the frozen per-feature :class:`Quantizer` plus what set it."""

    peg: PegQuantizer
    quantizer: Quantizer
    perm: np.ndarray
    group_of_feature: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.peg.name}[static {self.peg.scale_rule}]"

    @property
    def group_scales(self) -> np.ndarray:
        """The K scales, by group index (float32)."""
        s = np.asarray(self.quantizer.scale_rule.scale, dtype=np.float32)
        out = np.empty(self.peg.groups, dtype=np.float32)
        out[self.group_of_feature] = s
        return out

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        a = self.peg._check(x)
        if a.shape[1] != self.group_of_feature.size:
            raise FmtlabError(f"{self.name}: calibrated for {self.group_of_feature.size} features, got {a.shape[1]}")
        return self.quantizer.fake_quantize(a)
