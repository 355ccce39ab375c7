"""The package's import graph keeps the layout's promises (docs/architecture.md).

Read from the source with ``ast`` (every ``import`` counts, also those inside a
function or under ``TYPE_CHECKING``: an import moved out of sight to dodge a
cycle is still a cycle):

* no cycles among the ``aether.server`` modules, nor anywhere in the package;
* ``aether.core`` and ``aether.model`` import nothing from ``server``, ``node``,
  ``cli`` or ``store``, and ``model`` nothing from ``core`` (``model`` is the
  shared vocabulary, ``core`` the pure logic over it);
* no leader loop imports another loop, and none imports the ASGI factory;
* ``aether.model`` reads no files and talks to nothing (it says "no I/O").
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "aether").rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The aether modules ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                child = f"{origin}.{alias.name}"
                found.add(child if child in known else origin)
    result = set()
    for imported in found:
        while imported and imported not in known:  # a name inside a module: the module
            imported = imported.rpartition(".")[0]
        if imported.startswith("aether") and imported != name:
            result.add(imported)
    return result


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Strongly connected components of more than one module among ``within``'s (Tarjan)."""
    nodes = [n for n in graph if n == within or n.startswith(within + ".")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def _edges_into(graph: dict[str, set[str]], sources: str, targets: Iterable[str]) -> list[str]:
    prefixes = tuple(targets)
    return sorted(
        f"{module} -> {imported}"
        for module, imports in graph.items()
        if module == sources or module.startswith(sources + ".")
        for imported in imports
        if any(imported == t or imported.startswith(t + ".") for t in prefixes)
    )


GRAPH = _graph()


def test_the_scan_sees_the_package() -> None:
    """The scan itself: it finds the modules and a known import (a broken scan passes all)."""
    assert len(GRAPH) > 150
    assert "aether.server.context" in GRAPH["aether.server.asgi"]
    assert "aether.core.scheduler" in GRAPH["aether.server.leader.reconcile"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert _cycles(graph, "p") == [["p.a", "p.b", "p.c"]]


@pytest.mark.parametrize("package", ["aether.server", "aether"])
def test_no_import_cycles(package: str) -> None:
    assert _cycles(GRAPH, package) == []


@pytest.mark.parametrize("package", ["aether.core", "aether.model"])
def test_the_pure_layers_import_no_shell(package: str) -> None:
    shell = ("aether.server", "aether.node", "aether.cli", "aether.store")
    assert _edges_into(GRAPH, package, shell) == []


def test_the_model_does_not_import_the_core() -> None:
    assert _edges_into(GRAPH, "aether.model", ["aether.core"]) == []


def test_no_leader_loop_imports_another() -> None:
    loops = [m for m in GRAPH if m.startswith("aether.server.leader.")]
    shared = {"aether.server.leader.observation"}  # the narrow interface, not a loop
    crossing = sorted(
        f"{m} -> {i}" for m in loops for i in GRAPH[m] if i in loops and i not in shared
    )
    assert crossing == []
    assert _edges_into(GRAPH, "aether.server.leader", ["aether.server.asgi"]) == []


_IO_MODULES = ("os", "io", "shutil", "subprocess", "socket", "tomllib", "httpx", "sqlalchemy")


def _top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_model_does_no_io() -> None:
    doing_io = {
        name: sorted(_top_level_imports(path) & set(_IO_MODULES))
        for name, path in _modules().items()
        if name.startswith("aether.model")
    }
    assert {name: mods for name, mods in doing_io.items() if mods} == {}
