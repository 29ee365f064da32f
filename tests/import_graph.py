"""The project's import graph, read from the sources with `ast` (nothing is imported): which project modules a
module reaches, following every import, at module level and inside functions alike.

`from pkg import name` counts as importing the module pkg.name when there is one, else pkg; importing
pkg.sub.mod also runs pkg/__init__.py and pkg/sub/__init__.py, so those are reached too.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("tasks", "models", "serve", "flows")


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None when there is none."""
    if module.partition(".")[0] not in PROJECT_PACKAGES:
        return None
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(file: Path) -> str:
    """tasks/data/shards.py -> tasks.data.shards, tasks/data/__init__.py -> tasks.data."""
    parts = file.resolve().relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=None)
def direct_imports(module: str) -> frozenset[str]:
    """Every module `module`'s source imports (project or not), anywhere in the file, with the packages whose
    __init__ the import runs."""
    file = module_file(module)
    if file is None:
        return frozenset()
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .mod import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")}
    return frozenset(found | {parent for name in found for parent in _parents(name)})


def reachable(*roots: str) -> set[str]:
    """The project modules the roots reach by import, transitively (the roots included)."""
    seen: set[str] = set()
    todo = [root for root in roots]
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        todo += direct_imports(module)
    return seen


def external_imports(modules: set[str]) -> set[str]:
    """Top-level names of the non-project modules these project modules import."""
    return {name.partition(".")[0] for module in modules for name in direct_imports(module)
            if name and name.partition(".")[0] not in PROJECT_PACKAGES}


def is_docstring_only(module: str) -> bool:
    """A module with nothing but a docstring (a package marker): importing it can change nothing."""
    body = ast.parse(module_file(module).read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def modules_under(folder: Path) -> set[str]:
    """Every project module in `folder` and below."""
    return {module_name(file) for file in folder.rglob("*.py")}
