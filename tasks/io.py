"""Files the way every step writes and reads them: atomically (temp file + rename), JSON, sha256.

A step's output is written under a temporary name next to it and renamed into place only when complete, so a
killed run never leaves a half-written file (or folder) that looks like a finished one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks.errors import SliceWiseError

log = logging.getLogger(__name__)

_REQUIRED = object()


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` for the block to write; renamed over `path` when the block succeeds,
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(data: Any, path: Path) -> None:
    """The reports' JSON format: indented by 2, one trailing newline."""
    write_text_atomic(json.dumps(data, indent=2) + "\n", path)


@contextmanager
def staged_folder(final: Path, staging: Path | None = None) -> Iterator[Path]:
    """An empty staging folder (default: `.tmp-<name>` beside `final`) for the block to fill; when the block
    succeeds it replaces `final`, a previous `final` being removed first. When it fails, `final` stays as it was
    and the staging folder goes (a killed process leaves it to the next run, which empties it first)."""
    final = Path(final)
    staging = staging or final.with_name(f".tmp-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def read_json(path: Path, producer: str | None = None, default: Any = _REQUIRED) -> Any:
    """The JSON in `path`.

    Without `default`, a missing or unreadable file is a SliceWiseError naming it (and `producer`, the step that
    writes it); with `default`, a missing file gives `default`, and so does an unreadable one, with a warning.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        if default is not _REQUIRED:
            return default
        raise SliceWiseError(f"not found (run the {producer} step first)" if producer else "not found", path) from exc
    except (OSError, ValueError) as exc:
        if default is not _REQUIRED:
            log.warning("ignoring %s: %s", path, exc)
            return default
        reason = f"not valid JSON: {exc}" if isinstance(exc, ValueError) else f"unreadable: {exc}"
        raise SliceWiseError(reason, path) from exc


def nested_value(data: dict, dotted: str) -> Any:
    """data["a"]["b"]["c"] for "a.b.c" (metrics.json's sections nest: segmentation_regions.<region>.<metric>);
    None where any part is missing."""
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_identity(path: Path) -> bytes:
    """What a module computes, without its comments and docstrings: its syntax tree, docstrings removed. An edited
    comment then keeps every patient's shard (slicing) and a resumable last.pt (training); a changed line of code
    redoes them, as it may change the output."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux: a container's or taskset's share, not the
    machine's count); elsewhere (macOS has no affinity call) all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
