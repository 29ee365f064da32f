"""The API image's Python environment, emulated without Docker: a site-packages holding exactly the distributions
docker/requirements-api.in brings in (linked from this venv), and the modules serve/ imports (tests/test_docker.py)."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.import_graph import direct_imports, module_name

REPO = Path(__file__).resolve().parents[1]


def install_as_in_image(distributions: set[str], site: Path) -> None:
    """A site-packages holding only `distributions`, linked from this venv (so its bytecode caches stay valid).

    A top-level folder that only allowed distributions own is linked whole; one shared with others (namespace
    packages such as google/) is linked file by file, so nothing of a left-out distribution slips in.
    """
    from packaging.utils import canonicalize_name

    allowed = {canonicalize_name(name) for name in distributions}
    owners: dict[str, set[str]] = {}
    files: dict[str, list[tuple[Path, Path]]] = {}
    top_paths: dict[str, Path] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            if file.parts[0] == "..":
                continue  # console scripts live outside site-packages
            owners.setdefault(file.parts[0], set()).add(name)
            if name in allowed:
                files.setdefault(file.parts[0], []).append((Path(file), Path(dist.locate_file(file))))
                top_paths[file.parts[0]] = Path(dist.locate_file(file.parts[0]))
    site.mkdir(parents=True, exist_ok=True)
    for top, entries in files.items():
        if owners[top] <= allowed and top_paths[top].exists():
            (site / top).symlink_to(top_paths[top])
            continue
        for relative, source in entries:
            if source.is_file() and relative.suffix != ".pyc":
                (site / relative).parent.mkdir(parents=True, exist_ok=True)
                (site / relative).symlink_to(source)


# Runs with -S (none of this venv's site-packages): the emulated image's packages, then the sources as /app holds
# them. Reports every module that fails to import, except the Grad-CAM-only ones the slim image leaves out.
IMPORT_IN_IMAGE = """
import importlib, json, sys
site, app, optional, *modules = sys.argv[1:]
sys.path[:0] = [site, app]
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", None) not in optional.split(","):
            failed[module] = repr(exc)
print(json.dumps(failed))
"""
GRADCAM_ONLY = "torch,monai"
# Imported where the API image does without it: tasks/data/gzip_nifti.py falls back to the standard library's gzip.
NOT_IN_API_IMAGE = "isal"


def requirement_closure(requirements_file: Path) -> set[str]:
    """Distributions a `pip install -r file` brings in, read from this venv's metadata (markers evaluated)."""
    from packaging.utils import canonicalize_name

    lines = [line.split("#")[0].strip() for line in requirements_file.read_text().splitlines()]
    todo = [Requirement(line) for line in lines if line]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for dependency in map(Requirement, metadata.requires(requirement.name) or []):
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                todo.append(dependency)
    return seen


# Imported lazily by shared task modules on paths serving never takes.
NOT_ON_SERVING_PATHS = {
    "prefect": "tasks.tracking.provenance asks Prefect for the flow run id only when Prefect already runs the code",
    "ruamel": "tasks.params_edit.set_params rewrites params.yaml, a CLI path",
}


def modules_serve_imports() -> list[str]:
    """serve/'s modules and, transitively through the project's own modules, every module they import."""
    files = sorted((REPO / "serve").glob("*.py"))
    if not any(f.stem not in {"__init__", "__main__"} for f in files):
        pytest.skip("serve/ has no modules yet")
    todo = [module_name(f) for f in files]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module.partition(".")[0] in NOT_ON_SERVING_PATHS:
            continue
        seen.add(module)
        todo += direct_imports(module)  # a project module's imports, lazy ones too; nothing for the others
    # __main__ is scanned for its imports but not imported: that would start the server.
    return sorted(m for m in seen if m.partition(".")[0] not in sys.stdlib_module_names and m != "serve.__main__")
