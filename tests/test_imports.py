"""The folders are the layers and imports run only downward:

    errors, _args, distributed < kernels < core < sources < loader < openpi < tools, testing < demo < cli

A module may import its own floor and the floors below; any import up a floor — module- or function-level —
fails `test_imports_run_only_downward`, naming the file and line. Within a floor, no cycle.

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
           "if TYPE_CHECKING:\n    from fastmix.openpi.config import TrainConfig\n"
           "def f():\n    from fastmix.core import sampler as s\n    from .sources import meta\n")
    names = {n for n, _ in _imported_names(ast.parse(src), "fastmix.x", False)}
    assert {"fastmix.errors", "fastmix.core.sampler", "fastmix.sources.meta"} <= names
    assert "fastmix.openpi.config" not in names and "fastmix.openpi.config.TrainConfig" not in names
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 3}}) is None


def test_no_import_cycle_among_fastmix_modules() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "fastmix.openpi.data_loader" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe(cycle, graph)


# floor of each top-level name under fastmix/ (a folder's modules and its __init__ share its folder's floor)
FLOORS: dict[str, int] = {
    "errors": 0, "_args": 0, "distributed": 0,
    "kernels": 1,
    "core": 2,
    "sources": 3,
    "loader": 4,
    "openpi": 5,
    "tools": 6, "testing": 6,
    "demo": 7,
    "cli": 8, "__main__": 8,
}


def floor(module: str) -> int:
    """The floor of a dotted fastmix module name (KeyError for a module no floor is assigned to)."""
    return FLOORS[module.split(".")[1]]


def test_every_module_has_a_floor_and_the_root_is_small() -> None:
    files = module_files()
    unplaced = sorted(m for m in files if m != ROOT and m.split(".")[1] not in FLOORS)
    assert not unplaced, f"modules in no layer (add them to a folder, or to FLOORS): {unplaced}"
    root_modules = sorted(p.name for p in PACKAGE_DIR.iterdir() if p.is_file() and p.suffix in (".py", ".so"))
    assert len(root_modules) <= 6, f"at most six modules directly in fastmix/, found {root_modules}"
    folders = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").exists()}
    assert folders == {"kernels", "core", "sources", "loader", "openpi", "tools", "testing", "demo"}, folders


def test_imports_run_only_downward() -> None:
    files = module_files()
    graph = import_graph()
    up = [f"  {files[m].relative_to(PACKAGE_DIR.parent)}:{line}: {m} (floor {floor(m)}) imports {t} "
          f"(floor {floor(t)})"
          for m, edges in sorted(graph.items()) for t, line in sorted(edges.items(), key=lambda e: e[1])
          if floor(t) > floor(m)]
    assert not up, "imports that run up a floor:\n" + "\n".join(up)


def test_an_upward_function_level_import_is_seen() -> None:
    src = "def f():\n    from fastmix.demo import spec\n"
    names = [n for n, _ in _imported_names(ast.parse(src), "fastmix.core.sampler", False)]
    assert "fastmix.demo.spec" in names and floor("fastmix.demo.spec") > floor("fastmix.core.sampler")


def test_no_module_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE_DIR.parent)): n for p in PACKAGE_DIR.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_the_native_extension_is_imported_only_by_kernels() -> None:
    graph = import_graph()
    files = module_files()
    native = "fastmix.kernels._native"
    users = []
    for module, path in files.items():
        if module.startswith("fastmix.kernels") or module == ROOT:
            continue
        names = [n for n, _ in _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")]
        if any(n == native or n.startswith(native + ".") for n in names):
            users.append(module)
    assert not users and graph, f"modules importing {native} outside fastmix.kernels: {users}"
