"""Imports among fastmix modules run one way (leaf modules -> config -> sources -> loader -> commands): no cycle.

Every module's imports are read with `ast`, function-level imports included; `if TYPE_CHECKING:` blocks and the
lazy `fastmix/__init__.py` (it imports on attribute access only) are left out. Importing `fastmix.a.b` also
runs the package `fastmix/a/__init__.py`, so that is an edge too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fastmix"
ROOT = "fastmix"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages as their __init__)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of every import outside `if TYPE_CHECKING:` blocks; `from a import b` gives a.b."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.append((base, node.lineno))
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported fastmix module: first line}, the lazy package __init__ left out."""
    files = module_files()
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        if module == ROOT:
            continue
        edges: dict[str, int] = {}
        for name, line in _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the module and every package above it, except the root
                target = ".".join(parts[:i])
                if target in files and target != module:
                    edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle [m0, m1, ..., m0] of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, {}):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            if t not in state and (cycle := dfs(t)) is not None:
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := dfs(m)) is not None:
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    files = module_files()
    return "\n".join(f"  {a} -> {b}  ({files[a].relative_to(PACKAGE_DIR.parent)}:{graph[a][b]})"
                     for a, b in zip(cycle, cycle[1:], strict=False))


def test_the_graph_sees_function_level_imports_and_skips_type_checking() -> None:
    src = ("from typing import TYPE_CHECKING\nfrom fastmix.errors import ConfigError\n"
           "if TYPE_CHECKING:\n    from fastmix.config import TrainConfig\n"
           "def f():\n    from fastmix import sampler as s\n    from .sources import meta\n")
    names = {n for n, _ in _imported_names(ast.parse(src), "fastmix.x", False)}
    assert {"fastmix.errors", "fastmix.sampler", "fastmix.sources.meta"} <= names
    assert "fastmix.config" not in names and "fastmix.config.TrainConfig" not in names
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 3}}) is None


def test_no_import_cycle_among_fastmix_modules() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "fastmix.data_loader" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe(cycle, graph)
