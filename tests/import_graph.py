"""The package's import graph, read from the source (nothing is imported): for the architecture tests.

An edge ``a -> b`` is any ``import`` of ``b`` in module ``a``, at module level or inside a
function (a deferred import still runs when that code path does), except imports under
``if TYPE_CHECKING:``, which never run. Importing ``anomaly_spotter.x.y`` also runs the
packages ``anomaly_spotter/__init__.py`` and ``anomaly_spotter/x/__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "anomaly_spotter"


def module_file(name: str) -> Path | None:
    """The file of ``anomaly_spotter...`` module ``name``, or None when it is not one of ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    parts = path.resolve().relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (our package's names resolved to modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.is_relative_to(SRC) else ""

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            # ``from anomaly_spotter.evaluation import metrics`` imports a module, not a name.
            names.update(
                f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}") is not None
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _with_packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def edges(path: Path) -> set[Path]:
    """Our modules (files) that running ``path`` imports directly, packages' ``__init__`` included."""
    found: set[Path] = set()
    for name in imported_names(path):
        for part in _with_packages(name):
            target = module_file(part)
            if target is not None and target != path:
                found.add(target)
    return found


def closure(start: Path) -> set[Path]:
    """Every module of ours that running ``start`` can import, ``start`` included."""
    seen = {start}
    todo = [start]
    while todo:
        for target in edges(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def package_modules() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def find_cycle() -> list[str] | None:
    """One import cycle among the package's modules (as module names), or None."""
    graph = {path: edges(path) for path in package_modules()}
    # A package's __init__ importing its own sub-modules is not a loop that can bite (Python
    # runs the sub-module after the package object exists), so package -> child edges are left out.
    for path, targets in graph.items():
        if path.name == "__init__.py":
            graph[path] = {t for t in targets if not t.is_relative_to(path.parent)}
    state: dict[Path, int] = {}
    stack: list[Path] = []

    def dfs(node: Path) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                return [module_name(p) for p in cycle]
            if target not in state:
                found = dfs(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None
