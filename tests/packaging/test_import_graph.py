"""No import cycles in agent/, cloud_bridge/ and export/, not even through an import inside a
function or under ``if TYPE_CHECKING:`` (house style 15).

A cycle closed through a function-level import works until someone moves the import to
the top of the file; a type-only one still ties two modules' designs together. Python
does not refuse either, so this test reads every module with ``ast`` (nothing is imported,
nothing runs) and fails naming each cycle, one path through it per strongly connected
component. What it cannot see: imports by string (``importlib.import_module(name)``, the
router-kind registry's ``"module:Class"`` entries, the CLI's lazy commands).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("agent", "cloud_bridge", "export")
Graph = Mapping[str, frozenset[str]]


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module that ``name`` (a module, or a name defined in one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, modules: Mapping[str, Path]) -> Iterator[str]:
    """Every module of the packages that ``module`` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in base
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                target = _owner(name, modules)
                if target is not None and target != module:
                    yield target


def import_graph(root: Path = REPO) -> dict[str, frozenset[str]]:
    modules = _modules(root)
    return {m: frozenset(_imported(m, p, modules)) for m, p in modules.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component of more than
    one module (Tarjan, iterative: no recursion limit to hit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.add(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        components.append(comp)
    return [_path_through(comp, graph) for comp in components]


def _path_through(comp: set[str], graph: Graph) -> list[str]:
    """A shortest cycle from the component's first module back to itself."""
    first = min(comp)
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & comp):
                if nxt == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return [first, *reversed(path[:-1]), first]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{sorted(comp)} is not a cycle")


def test_the_packages_have_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (move the shared concept to a leaf module):\n" + "\n".join(
        " -> ".join(c) for c in found)


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    """Guards the reader: without these edges the test above would pass on any tree."""
    graph = import_graph()
    assert len(graph) > 100 and {"agent.settings", "cloud_bridge.client"} <= set(graph)
    # function level: export_bundle imports the irt exporter only for an irt router
    assert "export.irt_export" in graph["export.onnx_export"]
    # `from export import length_fit` (a submodule named in the import list), in a function
    assert "export.length_fit" in graph["export.profile_fit"]
    # under `if TYPE_CHECKING:` (the kinds' fit takes a TrainingSet)
    assert "export.routers.training" in graph["export.routers.kinds"]
    # the daemon never imports the pipeline; cloud_bridge never imports the daemon
    assert not any(t.startswith("export") for m, ts in graph.items()
                   if not m.startswith("export") for t in ts)
    assert not any(t.startswith("agent") for m, ts in graph.items()
                   if m.startswith("cloud_bridge") for t in ts)


def test_the_cycle_finder_names_each_cycle(tmp_path: Path) -> None:
    """A made-up tree with a function-level cycle, a relative-import cycle and a leaf."""
    pkg = tmp_path / "export"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from export.b import g\n",
        "b.py": "import export.a\nfrom export import leaf\n",
        "leaf.py": "",
        "sub/__init__.py": "",
        "sub/x.py": "from . import y\n",
        "sub/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from .x import Thing\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    for package in ("agent", "cloud_bridge"):
        (tmp_path / package).mkdir()
    graph = import_graph(tmp_path)
    assert graph["export.b"] == {"export.a", "export.leaf"}
    assert sorted(cycles(graph)) == [["export.a", "export.b", "export.a"],
                                     ["export.sub.x", "export.sub.y", "export.sub.x"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
