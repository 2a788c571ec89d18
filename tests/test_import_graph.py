"""kan_zoo's own imports form no circle (issue 22), lazy imports inside functions included.

The graph is read from the sources with ast, nothing is imported. A node is a module of kan_zoo (a package is
its __init__); an edge A -> B says that running A imports B:
  * ``import a.b`` and ``from a.b import name``: B is ``a.b``, or ``a.b.name`` where that is a module;
    relative imports are resolved against A's package;
  * importing ``a.b.c`` first runs the packages ``a`` and ``a.b``: those get an edge too, except the packages
    A itself lies in (Python has already started them before A runs).
Module-level edges (run while A is imported) and function-level ones (a lazy import, run at a call) are told
apart; a circle is a circle either way: a lazy import that dodges one at import time still ties the two
modules to each other.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = "kan_zoo"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
# The core of kan_zoo.layers: what a user of the layers meets, and what no fast path may import.
LAYER_CORE = {f"{PACKAGE}.layers.{name}" for name in ("conv", "bottleneck", "linear", "activation")}

Edge = Tuple[str, str, str]  # (importer, imported, "module" | "function")


def module_names(root: Path = ROOT) -> Dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    names = {}
    for path in root.rglob("*.py"):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(node: ast.AST, importer: str, is_package: bool, modules: Set[str]) -> List[str]:
    """The kan_zoo modules one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = importer.split(".")
        if not is_package:
            package.pop()
        base = ".".join(package[: len(package) - node.level + 1])
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    # ``from package import name``: the submodule where ``name`` is one, else the package's attribute.
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]


def _with_parents(target: str, importer: str) -> List[str]:
    """``target`` and the packages above it that importing it runs, leaving out those that hold ``importer``."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts))]
    holding = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return [p for p in above if p not in holding] + [target]


def import_edges(root: Path = ROOT) -> List[Edge]:
    """Every import of a kan_zoo module by a kan_zoo module under ``root``."""
    modules = module_names(root)
    edges: List[Edge] = []
    for importer, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, scope: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _imported(child, importer, is_package, set(modules)):
                        for module in _with_parents(target, importer):
                            if module in modules:
                                edges.append((importer, module, scope))
                inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, "function" if inner else scope)

        visit(tree, "module")
    return edges


def components(edges: List[Edge]) -> List[List[str]]:
    """The strongly connected components of more than one module, or of a module importing itself (Tarjan):
    the modules that lie on circles, each component sorted."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def circles(edges: List[Edge]) -> List[List[str]]:
    """One shortest circle through the first module of each component."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    return [_shortest_circle(graph, set(c), c[0]) for c in components(edges)]


def _shortest_circle(graph: Dict[str, Set[str]], members: Set[str], start: str) -> List[str]:
    """start -> ... -> start by breadth-first search inside one component."""
    previous: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no circle")


def describe(root: Path = ROOT) -> str:
    """A report of the graph under ``root``: edge counts, lazy imports, circles (``python tests/test_import_graph.py
    [path/to/kan_zoo]``)."""
    edges = import_edges(root)
    lazy = sorted({(a, b) for a, b, scope in edges if scope == "function"})
    lines = [f"{len({(a, b) for a, b, s in edges if s == 'module'})} module-level imports between kan_zoo modules, "
             f"{len(lazy)} function-level (lazy) ones"]
    lines += [f"  lazy: {a} -> {b}" for a, b in lazy]
    for label, chosen in (("module-level imports only", [e for e in edges if e[2] == "module"]), ("all", edges)):
        found = components(chosen)
        lines.append(f"components on circles, {label}: {len(found)}")
        for component, circle in zip(found, circles(chosen)):
            lines.append(f"  {len(component)} modules: {', '.join(component)}")
            lines.append("    e.g. " + " -> ".join(circle))
            inside = sorted({(a, b) for a, b, s in chosen if s == "function" and a in component and b in component})
            lines += [f"    lazy import inside it: {a} -> {b}" for a, b in inside]
    return "\n".join(lines)


def test_the_graph_sees_relative_absolute_package_and_lazy_imports():
    edges = set(import_edges())
    assert (f"{PACKAGE}", f"{PACKAGE}.layers", "module") in edges  # from . import layers
    assert (f"{PACKAGE}.layers.bottleneck", f"{PACKAGE}.layers.conv", "module") in edges  # from .conv import ...
    assert (f"{PACKAGE}.layers.conv", f"{PACKAGE}.layers.bases", "module") in edges  # a package's attribute
    # absolute, from another package: the package kan_zoo.hub runs first, then its submodule
    assert (f"{PACKAGE}.training.export", f"{PACKAGE}.hub", "function") in edges


def test_circles_are_found():
    """The search finds a circle through a lazy import, and one through a package's __init__."""
    edges = [("p", "p.a", "module"), ("p.a", "p.b", "module"), ("p.b", "p.a", "function"), ("p.c", "p.c", "module")]
    assert circles(edges) == [["p.a", "p.b", "p.a"], ["p.c", "p.c"]]
    assert _with_parents("p.q.r", "p.s") == ["p.q", "p.q.r"]  # importing p.q.r from p.s runs p.q first


@pytest.mark.parametrize("scope", ["module", "all"])
def test_kan_zoo_imports_form_no_circle(scope):
    edges = [e for e in import_edges() if scope == "all" or e[2] == "module"]
    assert circles(edges) == [], describe()


def test_no_kernel_path_imports_the_layer_core():
    """kan_zoo.layers.kernels gets what it needs of a layer passed in: it never imports the core modules."""
    back = [(a, b) for a, b, _ in import_edges() if a.startswith(f"{PACKAGE}.layers.kernels") and b in LAYER_CORE]
    assert back == []


if __name__ == "__main__":
    import sys

    print(describe(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
