"""dpmesh_core imports run one way: the module import graph, read from the AST, has no cycle (DESIGN.md section 2).

Every import counts: top-level ones, those inside functions, those under ``if TYPE_CHECKING:`` and
``importlib.import_module("literal")`` calls. An import hidden in a function still makes the two modules depend
on each other, and mypy follows ``TYPE_CHECKING`` imports, so a cycle through either is a knot all the same.
The implicit import of a parent package (``a.b`` runs ``a/__init__.py`` first) is not an edge: the package
``__init__`` files of dpmesh_core resolve their names lazily.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "dpmesh_core"
Graph = dict[str, dict[str, list[int]]]  # importer -> imported -> line numbers of the imports


def module_name(path: Path, root: Path) -> str:
    """`dpmesh_core/models/head.py` -> `dpmesh_core.models.head`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """`(line, imported module, names imported from it)` for every import anywhere in `tree` (absolute names)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..a import b`
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base, tuple(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func, name = node.func, node.args[0].value
            dynamic = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and isinstance(name, str) and not name.startswith("."):
                yield node.lineno, name, ()


def import_graph(root: Path, package: str) -> Graph:
    """Edges between the modules of `package` (a folder under `root`), with the lines that create them.

    `from a import b` is an edge to `a.b` when `a.b` is a module of the package, else to `a`.
    """
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: Graph = {name: {} for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target, names in _imports(tree, name, path.name == "__init__.py"):
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            for imported in submodules or ([target] if target in files else []):
                graph[name].setdefault(imported, []).append(line)
    return graph


def find_cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """The strongly connected components with a cycle (two or more modules, or one importing itself), each sorted.

    Tarjan's algorithm, iterative (no recursion limit on long chains).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, {})))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, {}):
                        cycles.append(sorted(component))
    return sorted(cycles)


def _describe(graph: Graph, component: list[str]) -> str:
    members = set(component)
    edges = [
        f"    {src} -> {dst} (line {', '.join(map(str, lines))})"
        for src in component
        for dst, lines in sorted(graph[src].items())
        if dst in members
    ]
    return "\n".join([f"  cycle through {', '.join(component)}:", *edges])


def test_dpmesh_core_has_no_import_cycle() -> None:
    graph = import_graph(REPO_ROOT, PACKAGE)
    assert "dpmesh_core.model" in graph
    assert "dpmesh_core.loading" in graph["dpmesh_core.model"]  # the graph is not empty by mistake
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in dpmesh_core (imports must run one way):\n" + "\n".join(
        _describe(graph, c) for c in cycles
    )


@pytest.mark.parametrize("module", ["loading", "checkpoint", "pretrained", "prediction", "postprocessing"])
def test_loading_and_prediction_never_name_the_model_class(module: str) -> None:
    """Loading builds `cls(...)` (diffusers' mixin shape) and prediction types the model by a protocol."""
    path = REPO_ROOT / PACKAGE / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    named = [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id == "DPMesh")
        or (isinstance(node, ast.alias) and node.name == "DPMesh")
        or (isinstance(node, ast.ImportFrom) and node.module == "dpmesh_core.model")
    ]
    assert not named, f"{path.name} names DPMesh / imports dpmesh_core.model at lines {named}"


def test_find_cycles_on_small_graphs() -> None:
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) == []
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a": 1}, "b": {}}) == [["a"]]
    two = {"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"e": 1}, "e": {"c": 1, "a": 1}}
    assert find_cycles(two) == [["a", "b"], ["c", "d", "e"]]


def test_graph_counts_function_level_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """The knot dpmesh_core used to have (model <-> checkpoint through an import inside a function, model <->
    postprocessing through TYPE_CHECKING) is found, and so are relative and `importlib` imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "model.py").write_text("from pkg.sub import helpers\nfrom pkg import checkpoint, post\n")
    (pkg / "checkpoint.py").write_text("def load():\n    from pkg.model import Model\n    return Model\n")
    (pkg / "post.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.model import Model\n"
    )
    helpers = "from .. import leaf\nimport importlib\nimportlib.import_module('pkg.sub')\n"
    (pkg / "sub" / "helpers.py").write_text(helpers)
    (pkg / "leaf.py").write_text("import os\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.model"] == {"pkg.sub.helpers": [1], "pkg.checkpoint": [2], "pkg.post": [2]}
    assert graph["pkg.checkpoint"] == {"pkg.model": [2]}
    assert graph["pkg.post"] == {"pkg.model": [3]}
    assert graph["pkg.sub.helpers"] == {"pkg.leaf": [1], "pkg.sub": [3]}
    assert find_cycles(graph) == [["pkg.checkpoint", "pkg.model", "pkg.post"]]
    (pkg / "checkpoint.py").write_text("def load(cls):\n    return cls()\n")
    (pkg / "post.py").write_text("")
    assert find_cycles(import_graph(tmp_path, "pkg")) == []
