"""Memory energy per bit: the on-chip SRAM and off-chip DRAM / HBM terms of an inference.

Values and sources live in ``fmtlab/hw/data/memory.json``:

- on-chip SRAM read: Horowitz (ISSCC 2014), 45 nm / 0.9 V, 10 / 20 / 100 pJ per 64-bit read of an
  8 KB / 32 KB / 1 MB array (0.156 / 0.3125 / 1.5625 pJ/bit); scaled to other nodes with the logic
  energy factor of :class:`fmtlab.hw.tech.Technology` (an assumption: SRAM arrays scale like
  logic);
- off-chip: ``ddr_horowitz45`` (Horowitz 2014, DRAM 1.3 nJ per 64 bits = 20.3 pJ/bit) or
  ``hbm2`` (3.9 pJ/bit, attributed to O'Connor et al., MICRO-50 2017 but not verified against the
  paper's text: ``"verified": false`` in the data file, which says what could be checked); these are
  device figures and do not scale with the logic node.

A :class:`MemorySystem` is a plain value: pass one to :func:`fmtlab.hw.inference_cost`, or a
preset name (``"hbm2"``, ``"ddr45"``), or build your own with other per-bit energies.
"""

from __future__ import annotations

import dataclasses

from fmtlab.errors import FmtlabError
from fmtlab.hw.tech import Technology, load_data

__all__ = ["MemorySystem", "get_memory", "MEMORY_PRESETS", "sram_pj_per_bit"]


def sram_pj_per_bit(size: str = "32KB") -> float:
    """Horowitz 2014 SRAM read energy per bit at 45 nm (``size``: 8KB, 32KB or 1MB)."""
    table = load_data("memory.json")["sram"]["pj_per_64b"]
    if size not in table:
        raise FmtlabError(f"no SRAM figure for size={size!r}; known: {', '.join(table)}")
    return float(table[size]) / 64.0


@dataclasses.dataclass(frozen=True)
class MemorySystem:
    """Per-bit energies (pJ/bit) of an accelerator's memories.

    offchip_pj_per_bit: one bit read from (or written to) DRAM / HBM;
    sram_pj_per_bit: one bit read from or written to the on-chip buffer, at 45 nm / 0.9 V (scaled
    to the node by :meth:`sram_at`); name and source say where the numbers come from.
    """

    name: str
    offchip_pj_per_bit: float
    sram_pj_per_bit: float
    source: str = ""

    def __post_init__(self) -> None:
        for k in ("offchip_pj_per_bit", "sram_pj_per_bit"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise FmtlabError(f"memory {self.name!r}: {k} must be a finite number >= 0, got {v!r}")

    def sram_at(self, tech: Technology) -> float:
        """SRAM pJ/bit at ``tech`` (45 nm figure times the logic energy factor)."""
        return self.sram_pj_per_bit * tech.energy_factor()


def _presets() -> dict[str, MemorySystem]:
    d = load_data("memory.json")
    sram_src = d["sram"]["source"]
    out = {}
    for key, off in (("hbm2", "hbm2"), ("ddr45", "ddr_horowitz45")):
        o = d["offchip"][off]
        out[key] = MemorySystem(key, float(o["pj_per_bit"]), sram_pj_per_bit("32KB"),
                                f"off-chip: {o['source']} On-chip (32 KB SRAM): {sram_src}")
    return out


#: ``hbm2``: HBM2 off-chip + a 32 KB SRAM buffer; ``ddr45``: Horowitz's 45 nm DRAM + 32 KB SRAM
MEMORY_PRESETS: dict[str, MemorySystem] = _presets()


def get_memory(memory: "str | MemorySystem") -> MemorySystem:
    """A :class:`MemorySystem` or the preset called ``memory`` (``hbm2``, ``ddr45``)."""
    if isinstance(memory, MemorySystem):
        return memory
    if isinstance(memory, str) and memory.strip().lower() in MEMORY_PRESETS:
        return MEMORY_PRESETS[memory.strip().lower()]
    raise FmtlabError(f"unknown memory {memory!r}; presets: {', '.join(MEMORY_PRESETS)} "
                      "(or pass a fmtlab.hw.memory.MemorySystem)")
