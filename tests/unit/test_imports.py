"""milterd's import graph, read with ``ast``: no cycle, no hidden function-local imports.

Every ``import`` statement counts, at module level and inside functions
(an import under ``if TYPE_CHECKING:`` is for the type checker only and is
left out), and so does a module named in a string for importlib
(``"milterd.commands.db:add_parser"``).  Relative imports are resolved against
the importing module.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "milterd"
#: A string naming one of the package's modules, optionally with ":function".
DYNAMIC = re.compile(r"^milterd(\.\w+)+(:\w+)?$")

#: Function-local imports that are meant, with the reason: (importing module, imported module) → why.
ALLOWED_LOCAL: dict[tuple[str, str], str] = {
    ("milterd.metrics", "prometheus_client"): "prometheus_client reads PROMETHEUS_MULTIPROC_DIR when first imported, which metrics sets just before",
    ("milterd.metrics", "milterd.metricsserver"): "with metrics off nothing is imported: the HTTP server's modules (wsgiref, http.server) neither",
}


@dataclass(frozen=True)
class Edge:
    """One import statement: who imports what, where."""

    source: str
    target: str
    line: int
    local: bool  # inside a function


def module_name(path: Path) -> str:
    """The dotted name of a file under the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The modules an ``from … import …`` names (a name may be a submodule)."""
    if node.level:
        base = source.split(".") if is_package else source.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    return [stem] + [f"{stem}.{alias.name}" for alias in node.names]


def edges(modules: dict[str, Path]) -> list[Edge]:
    """Every import statement in the package, type-checking-only ones left out."""
    found: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, local: bool, name: str = name, is_package: bool = is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for other in child.orelse:
                        visit(other, local)
                    continue
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    found.extend(Edge(name, alias.name, child.lineno, local) for alias in child.names)
                elif isinstance(child, ast.Constant) and isinstance(child.value, str) and DYNAMIC.match(child.value):
                    # A module named in a string ("milterd.commands.db:add_parser") is imported
                    # by name (importlib): an edge like any other, hidden from the import statements.
                    target = child.value.partition(":")[0]
                    if target in modules:
                        found.append(Edge(name, target, child.lineno, local))
                elif isinstance(child, ast.ImportFrom):
                    stem, *names = _resolve(name, is_package, child)
                    submodules = [t for t in names if t in modules]
                    found.extend(Edge(name, t, child.lineno, local) for t in submodules or [stem])
                visit(child, inner)

        visit(tree, False)
    return found


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def internal_graph(found: list[Edge], modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package's modules it imports.  Importing ``a.b`` runs ``a`` first, so a
    package's ``__init__`` counts as imported too (but not by a module inside it, which only
    runs after it; a module that imports names from its own package does depend on it)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in found:
        if edge.target not in modules:
            continue
        parts = edge.target.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            implicit = i < len(parts)  # importing a.b runs a's __init__ first, as the source's own package already ran
            if target in modules and target != edge.source and not (implicit and edge.source.startswith(target + ".")):
                graph[edge.source].add(target)
    return graph


def test_the_reader_sees_imports_of_every_kind(tmp_path: Path) -> None:
    """The checker itself: relative, local and TYPE_CHECKING imports, and a cycle."""
    pkg = tmp_path / "milterd"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from ..a import x\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import y\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import z\n")
    (pkg / "c.py").write_text('LOADERS = {"b": "milterd.b:f"}\n')
    modules = {module_name_in(pkg, p): p for p in sorted(pkg.rglob("*.py"))}
    found = edges(modules)
    assert Edge("milterd.sub", "milterd.a", 1, False) in found
    assert Edge("milterd.b", "milterd.sub", 2, True) in found
    assert Edge("milterd.c", "milterd.b", 1, False) in found
    assert not [e for e in found if e.source == "milterd.a" and e.target.startswith("milterd")]
    assert find_cycle(internal_graph(found, modules)) is None
    (pkg / "a.py").write_text("from .b import f\n")
    found = edges(modules)
    assert find_cycle(internal_graph(found, modules)) == ["milterd.a", "milterd.b", "milterd.sub", "milterd.a"]


def module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = package_modules()
    return modules, edges(modules)


def test_no_import_cycle(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    modules, found = graph
    cycle = find_cycle(internal_graph(found, modules))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_no_function_local_imports_but_the_listed_ones(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    _, found = graph
    local = sorted({(e.source, e.target, e.line) for e in found if e.local and (e.source, e.target) not in ALLOWED_LOCAL})
    assert not local, "function-local imports (move them to the top, or list them in ALLOWED_LOCAL with the reason):\n" + "\n".join(f"  {s}:{n} imports {t}" for s, t, n in local)


def test_the_allow_list_names_imports_that_exist(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    _, found = graph
    local = {(e.source, e.target) for e in found if e.local}
    assert not set(ALLOWED_LOCAL) - local, f"allowed but gone (remove them): {sorted(set(ALLOWED_LOCAL) - local)}"
