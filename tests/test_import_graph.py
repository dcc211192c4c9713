"""Imports flow one way: no cycle inside a package, and the layers of ARCHITECTURE.md hold.

The graph is read from the source with :mod:`ast` (nothing is imported), counting every import:
module level, inside functions, and under ``TYPE_CHECKING`` (a type-only import is still a
dependency a reader and a type checker follow). Only imports between the four packages'
own modules are edges; ``from pkg import name`` points at the submodule ``pkg.name`` when
there is one, else at ``pkg``. Cycles are found by the standard library's
:class:`graphlib.TopologicalSorter`.

The layers: ``rtrecon`` never imports ``engine``, ``scanner_bridge`` or ``stimulus`` (its command
line, ``rtrecon/cli.py``, alone may, to start them); the scanner side and the stimulus PC reach in
``rtrecon`` only the light contract, directly or through what the contract imports, so that their
machines need neither torch nor nilearn.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rtrecon", "engine", "scanner_bridge", "stimulus")
CONTRACT = frozenset({"rtrecon", "rtrecon.contract", "rtrecon.contract.wire", "rtrecon.contract.config", "rtrecon.contract.transport", "rtrecon.contract.keys",
                      "rtrecon.contract.layout", "rtrecon.contract.logs", "rtrecon.contract.children", "rtrecon.session"})
LIGHT_PACKAGES = ("scanner_bridge", "stimulus")
RTRECON_MAY_START = frozenset({"rtrecon.cli"})

Graph = dict[str, set[str]]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The names ``node`` imports, resolved against ``module`` and narrowed to ``known`` modules."""
    known = set(known)
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        targets = {f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names}
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Each module of ``packages`` under ``root`` mapped to the modules of those packages it imports."""
    files = {_module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    graph: Graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(node, module, path.name == "__init__.py", files)
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (first module repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Each import that breaks the layer rule, as ``importer -> imported`` (with the path when indirect)."""
    bad = []
    for module, targets in sorted(graph.items()):
        if module.split(".")[0] == "rtrecon" and module not in RTRECON_MAY_START:
            bad += [f"{module} -> {t}" for t in sorted(targets) if t.split(".")[0] != "rtrecon"]
    for module in sorted(m for m in graph if m.split(".")[0] in LIGHT_PACKAGES):
        # Breadth-first through rtrecon: a contract module importing the model stack counts too.
        paths = {t: [module, t] for t in graph[module] if t.split(".")[0] == "rtrecon"}
        queue = list(paths)
        while queue:
            current = queue.pop(0)
            if current not in CONTRACT:
                bad.append(" -> ".join(paths[current]))
                continue
            for nxt in sorted(graph[current]):
                if nxt not in paths:
                    paths[nxt] = paths[current] + [nxt]
                    queue.append(nxt)
    return bad


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, PACKAGES)


def test_graph_sees_every_package_and_function_level_imports(graph: Graph) -> None:
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    # A function-level import in the stimulus command (SoundError is imported where it is caught).
    assert "stimulus.sound" in graph["stimulus.commands"]
    assert "rtrecon.contract.wire" in graph["stimulus.link"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(graph: Graph, package: str) -> None:
    inside = {m: {t for t in ts if t.split(".")[0] == package} for m, ts in graph.items() if m.split(".")[0] == package}
    cycle = find_cycle(inside)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_across_packages(graph: Graph) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_hold(graph: Graph) -> None:
    assert layer_violations(graph) == []


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_control_a_function_level_and_type_only_cycle_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import x\n",
        "pkg/b.py": "def f():\n    from pkg.c import y\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
    })
    cycle = find_cycle(import_graph(tmp_path, ["pkg"]))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}
    _write(tmp_path, {"pkg/c.py": ""})
    assert find_cycle(import_graph(tmp_path, ["pkg"])) is None


def test_control_layer_breaks_are_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "rtrecon/__init__.py": "",
        "rtrecon/contract/wire.py": "",
        "rtrecon/contract/config.py": "from rtrecon.models import mindeye\n",
        "rtrecon/models/__init__.py": "",
        "rtrecon/models/mindeye.py": "",
        "rtrecon/cli.py": "import stimulus.app\n",
        "rtrecon/report.py": "def f():\n    from engine import store\n",
        "engine/__init__.py": "", "engine/store.py": "",
        "scanner_bridge/__init__.py": "", "scanner_bridge/sender.py": "from rtrecon.contract import wire\n",
        "stimulus/__init__.py": "", "stimulus/app.py": "from rtrecon.contract.config import X\n",
    })
    graph = import_graph(tmp_path, PACKAGES)
    assert layer_violations(graph) == [
        "rtrecon.report -> engine.store",
        "stimulus.app -> rtrecon.contract.config -> rtrecon.models.mindeye",
    ]
