"""Two-level ("promoted") accumulators as values: :class:`PromotedAcc` and the named presets.

The semantics and the sources of the presets are in :mod:`fmtlab.hw.promotion` (which simulates
them bit for bit); this module holds only the description, so the cost model can price a promoted
unit without loading the simulator.
"""

from __future__ import annotations

import dataclasses

from fmtlab.errors import FmtlabError
from fmtlab.hw.accumulators import AccRounding, FloatAcc, parse_accumulator

__all__ = ["PromotedAcc", "PRESETS", "parse_promoted"]


@dataclasses.dataclass(frozen=True)
class PromotedAcc:
    """``inner`` float accumulator promoted into ``outer`` every ``interval`` products."""

    inner: FloatAcc
    outer: FloatAcc
    interval: int
    label: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for what in ("inner", "outer"):
            acc = getattr(self, what)
            if isinstance(acc, str):
                acc = parse_accumulator(acc)
                object.__setattr__(self, what, acc)
            if not isinstance(acc, FloatAcc):
                raise FmtlabError(f"a promoted accumulator's {what} must be a float accumulator "
                                  f"(e.g. fp32, e8m13_rtz), got {getattr(acc, 'name', acc)!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise FmtlabError(f"promotion interval must be an int >= 1, got interval={self.interval!r}")

    @property
    def name(self) -> str:
        return self.label or f"{self.inner.name}->{self.outer.name}@{self.interval}"


#: named accumulator presets of real accelerators (see the module docstring for the sources)
PRESETS: dict[str, PromotedAcc] = {
    "hopper_fp8_mma": PromotedAcc(FloatAcc(8, 13, AccRounding.TOWARD_ZERO), FloatAcc(8, 23), 128,
                                  label="hopper_fp8_mma"),
    "hopper_fp8_mma_nopromo": PromotedAcc(FloatAcc(8, 13, AccRounding.TOWARD_ZERO), FloatAcc(8, 23), 1 << 62,
                                          label="hopper_fp8_mma_nopromo"),
}


def parse_promoted(spec: "str | PromotedAcc") -> PromotedAcc | None:
    """The PromotedAcc for a preset name or a PromotedAcc; None for any other accumulator spec."""
    if isinstance(spec, PromotedAcc):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in PRESETS:
        return PRESETS[spec.strip().lower()]
    return None
