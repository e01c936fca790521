"""The project's own import graph, read from the source (ast): what a module imports, directly
and transitively, as files. The layering and DVC-deps tests are built on it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prefine", "tasks", "flows")


def module_file(name: str) -> Path | None:
    """The file of a project module or package, None for anything else (torch, prefect, ...)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(file: Path) -> set[str]:
    """Every module name an import statement in `file` names, lazy (in-function) imports too;
    `from a import b` yields a.b as well, in case b is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def direct_files(file: Path) -> frozenset[Path]:
    """Project files that importing `file` loads at once: the modules it names and their packages."""
    found = {module_file(parent) for name in imported_names(file) for parent in _with_parents(name)}
    return frozenset(f for f in found if f is not None and f != file)


def closure(file: Path) -> set[Path]:
    """`file` and every project file it imports, transitively."""
    seen, todo = {file}, [file]
    while todo:
        for dep in direct_files(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def is_trivial(file: Path) -> bool:
    """A package __init__ that holds only its docstring: editing it changes no behaviour."""
    body = ast.parse(file.read_text()).body
    return file.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )
