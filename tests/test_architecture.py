"""The package layers (issue 19): the import-linter contracts of pyproject.toml hold, and no import
cycle exists among fmtlab modules, counting function-level (deferred) imports too."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: cycles other work owns (issue 19); remove an entry when its cycle is gone (none left)
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_import_contracts_hold():
    """`lint-imports` (layers: cli > analysis > explore > methods > models > pytorch > sim > hw >
    formats > safe_io > errors; formats, hw and sim never import torch/transformers) passes."""
    pytest.importorskip("importlinter")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: fmtlab modules it imports}, from every import statement, at any depth (a
    ``from pkg import sub`` names the submodule when ``sub`` is one)."""
    files = {_module_name(p): p for p in (ROOT / "fmtlab").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in files]
                targets = subs or [name]
            for t in targets:
                while t and t not in files:  # `import fmtlab.hw.mac.x` -> the nearest module that exists
                    t = t.rpartition(".")[0]
                if t.startswith("fmtlab") and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = set(cycles(import_graph()))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"import cycles (a cycle means a piece lives on the wrong floor: move it): {new}"


#: modules whose function-level fmtlab imports other work of issue 19 still sorts out (the quantizer
#: resolver: formats, sim/quant.py, pytorch/specs.py; the model variants: methods, analysis's report
#: and methods sections, sim/replay.py); remove an entry when its module follows the rule
LAZY_RULE_PENDING = ("fmtlab.formats", "fmtlab.methods", "fmtlab.analysis.methods", "fmtlab.analysis.report",
                     "fmtlab.analysis.report_text", "fmtlab.sim.quant", "fmtlab.sim.replay", "fmtlab.pytorch.specs")


def _pending(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in LAZY_RULE_PENDING)


def test_deferred_fmtlab_imports_say_why():
    """A function-level import of an fmtlab module is there for laziness (it would pull in torch,
    numba, ... where that must not happen) and says so: ``# lazy: <reason>`` on its line, or on the
    comment line right above its block of imports."""
    bad = []
    for path in sorted((ROOT / "fmtlab").rglob("*.py")):
        mod = _module_name(path)
        if _pending(mod):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("fmtlab"):
                    pass
                elif isinstance(node, ast.Import) and any(a.name.startswith("fmtlab") for a in node.names):
                    pass
                else:
                    continue
                i = node.lineno - 1
                while i > 0 and lines[i - 1].strip().startswith(("from ", "import ")):
                    i -= 1  # the first import of the block
                if "# lazy:" not in lines[node.lineno - 1] and not (i > 0 and "# lazy:" in lines[i - 1]):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "function-level fmtlab imports without '# lazy: <reason>':\n" + "\n".join(bad)
