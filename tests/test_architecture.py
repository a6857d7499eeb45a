"""The package's shape: no import cycle between its modules, and no function longer than about a screen.

Run it as a script for the report: ``python tests/test_architecture.py`` prints
the longest functions in src/ and any import cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LONGEST_FUNCTION = 80
"""Lines a function in src/ may span at most (signature, docstring and body)."""


# ---------------------------------------------------------------------- the measures
def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any level (function-level imports included).

    ``from X import name`` counts as importing ``X.name`` when that is a
    module of the package, else ``X`` itself.
    """
    files = {_module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def function_lengths(package_dir: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to its last line) of every function and method."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        module = ".".join(path.relative_to(package_dir).with_suffix("").parts)

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    out.append((f"{prefix}.{child.name}", child.end_lineno - first + 1))
                    walk(child, f"{prefix}.{child.name}")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}.{child.name}")
                else:
                    walk(child, prefix)

        walk(ast.parse(path.read_text(encoding="utf-8")), module)
    return out


# ---------------------------------------------------------------------- the package
def test_no_import_cycle_between_the_packages_modules():
    graph = import_graph(SRC / "scratchformer")
    assert "scratchformer.evaluate" in graph["scratchformer.train.trainer"]  # the graph sees the real imports
    assert import_cycles(graph) == []


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("scratchformer.evaluate", "scratchformer.train"),
        ("scratchformer.losses", "scratchformer.train"),
        ("scratchformer.tasks.text", "scratchformer.tasks.classification"),  # (the other way is fine)
        ("scratchformer.tasks.files", "scratchformer.tasks.text"),
    ],
)
def test_a_module_does_not_reach_back_to_a_later_stage(module, forbidden):
    graph = import_graph(SRC / "scratchformer")
    assert not {m for m in graph[module] if m == forbidden or m.startswith(forbidden + ".")}


def test_no_function_in_src_is_longer_than_a_screen():
    name, lines = max(function_lengths(SRC / "scratchformer"), key=lambda item: item[1])
    assert lines <= LONGEST_FUNCTION, f"{name} spans {lines} lines (at most {LONGEST_FUNCTION}); split it"


# ---------------------------------------------------------------------- the measures themselves
def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import f\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\nfrom .sub.b import f\nimport os\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.a", "pkg.sub.b"}
    assert graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert import_cycles(import_graph(pkg)) == []


def test_function_lengths_count_decorators_and_nested_functions(tmp_path):
    (tmp_path / "m.py").write_text(
        "def f():\n    def g():\n        return 1\n\n    return g\n\n\n"
        "class C:\n    @property\n    def h(self):\n        pass\n"
    )
    assert sorted(function_lengths(tmp_path)) == [("m.C.h", 3), ("m.f", 5), ("m.f.g", 2)]


if __name__ == "__main__":
    lengths = sorted(function_lengths(SRC / "scratchformer"), key=lambda item: -item[1])
    print(f"longest functions in src/ (limit {LONGEST_FUNCTION} lines):")
    for name, lines in lengths[:15]:
        print(f"  {lines:4d}  {name}")
    cycles = import_cycles(import_graph(SRC / "scratchformer"))
    print("import cycles:", cycles or "none")
    sys.exit(1 if cycles or lengths[0][1] > LONGEST_FUNCTION else 0)
