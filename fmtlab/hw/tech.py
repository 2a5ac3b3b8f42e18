"""Cell libraries (gate equivalents) and technology nodes (area and energy scaling).

Units: area in gate equivalents (GE, NAND2 = 1) and um^2; energy in pJ; supply in volts.
Constants live in ``fmtlab/hw/data/*.json``, each with its source:

- ``cells.json``: cell areas of a standard-cell library; GE(cell) = area(cell) / area(NAND2).
- ``tech.json``: area factors and energy fits per node from Stillmaker & Baas (2017).
  area(node) = area(ref) * f_area(node) / f_area(ref);
  energy(node, V) = energy(ref, V_ref) * P(node, V) / P(ref, V_ref), P = a V^2 + b V + c.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from fmtlab.errors import FmtlabError

PRIMITIVES = ("NAND2", "NOR2", "INV", "AND2", "OR2", "XOR2", "XNOR2", "MUX2", "AOI21", "OAI21",
              "AOI22", "FA", "HA", "DFF")


@lru_cache(maxsize=None)
def load_data(name: str) -> dict[str, Any]:
    """Parsed contents of ``fmtlab/hw/data/<name>`` (JSON)."""
    text = resources.files("fmtlab.hw").joinpath("data", name).read_text(encoding="utf-8")
    return json.loads(text)


FA_STYLES = ("gates", "cells")


@dataclasses.dataclass(frozen=True)
class CellLibrary:
    """A standard-cell library seen as gate equivalents of the primitives components count.

    fa: ``gates`` (default) prices a full adder as 2 XOR2 + 3 NAND2 and a half adder as
    XOR2 + AND2 (``cells.json`` 'composite'), as a synthesis tool without multi-output adder
    cells builds them; ``cells`` uses the library's FA/HA cells.
    """

    name: str
    node_nm: int
    source: str
    area_um2: Mapping[str, float] = dataclasses.field(repr=False)
    fa: str = "gates"

    @property
    def nand2_um2(self) -> float:
        return float(self.area_um2["NAND2"])

    def ge(self, cell: str) -> float:
        """Gate equivalents of one ``cell`` (NAND2 = 1)."""
        if self.fa == "gates" and cell in ("FA", "HA"):
            comp = load_data("cells.json")["composite"][cell]
            return sum(n * self.ge(c) for c, n in comp.items())
        try:
            return float(self.area_um2[cell]) / self.nand2_um2
        except KeyError:
            raise FmtlabError(f"cell library {self.name!r} has no primitive {cell!r}") from None


def get_library(name: str = "nangate45", fa: str = "gates") -> CellLibrary:
    """The cell library called ``name`` (``nangate45`` or ``osu018``); ``fa`` see CellLibrary."""
    libs = load_data("cells.json")["libraries"]
    if name not in libs:
        raise FmtlabError(f"unknown cell library {name!r}; known: {', '.join(sorted(libs))}")
    if fa not in FA_STYLES:
        raise FmtlabError(f"fa must be one of {FA_STYLES}, got fa={fa!r}")
    d = libs[name]
    missing = [c for c in PRIMITIVES if c not in d["area_um2"]]
    if missing:
        raise FmtlabError(f"cell library {name!r} lacks {missing}")
    return CellLibrary(name, int(d["node_nm"]), d["source"], dict(d["area_um2"]), fa)


def list_nodes() -> list[int]:
    """Technology nodes (nm) the scaling tables cover, largest first."""
    return sorted((int(k) for k in load_data("tech.json")["nodes"]), reverse=True)


@dataclasses.dataclass(frozen=True)
class Technology:
    """A node (nm) at a supply voltage; scales area and energy from the reference (45 nm, 0.9 V)."""

    node_nm: int = 45
    vdd: float | None = None  # None: the node's nominal supply (see tech.json)

    def __post_init__(self) -> None:
        nodes = load_data("tech.json")["nodes"]
        if str(self.node_nm) not in nodes:
            raise FmtlabError(f"no scaling data for node={self.node_nm!r} nm; known: "
                              f"{', '.join(str(n) for n in list_nodes())}")
        v = nodes[str(self.node_nm)]["vdd_nominal"] if self.vdd is None else float(self.vdd)
        if not 0.3 <= v <= 2.0:
            raise FmtlabError(f"vdd={v!r} V is outside the range the scaling fits cover")
        object.__setattr__(self, "vdd", float(v))

    @staticmethod
    def _node(nm: int) -> dict[str, Any]:
        return load_data("tech.json")["nodes"][str(nm)]

    def area_factor(self, from_node_nm: int) -> float:
        """Multiply an area at ``from_node_nm`` by this to get the area at this node."""
        return self._node(self.node_nm)["area_vs_45nm"] / self._node(from_node_nm)["area_vs_45nm"]

    @staticmethod
    def energy_poly(node_nm: int, vdd: float) -> float:
        a, b, c = Technology._node(node_nm)["energy_poly"]
        return a * vdd * vdd + b * vdd + c

    def energy_factor(self) -> float:
        """Multiply an energy at the reference (45 nm, 0.9 V) by this to get it here."""
        t = load_data("tech.json")
        ref = self.energy_poly(int(t["reference_node_nm"]), float(t["reference_vdd"]))
        return self.energy_poly(self.node_nm, float(self.vdd)) / ref

    def um2_per_ge(self, library: CellLibrary) -> float:
        """Area of one GE at this node for ``library`` (its NAND2 area, scaled from its node)."""
        return library.nand2_um2 * self.area_factor(library.node_nm)

    def __str__(self) -> str:
        return f"{self.node_nm} nm, {self.vdd:g} V"
