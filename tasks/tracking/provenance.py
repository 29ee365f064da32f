"""Where a model came from: git commit, parameters hash, data hash, Prefect flow run.

These values tag the MLflow runs, the registry versions and the model card, and `python -m tasks lineage`
prints them back. Every function answers "unknown" rather than failing when its source is missing
(no git repository, no dvc.lock yet), so tracking never stops a pipeline run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from tasks import paths

UNKNOWN = "unknown"
DVC_LOCK = paths.ROOT / "dvc.lock"
# The tag naming a checkpoint by its sha256: on the training step run that wrote it and on the registry version
# that ships it, which links the two in `tasks lineage`.
CHECKPOINT_TAG = "checkpoint_sha256"
FLOW_RUN_ENV = "SLICEWISE_PREFECT_FLOW_RUN_ID"  # set by flows/lineage.py for the steps it runs
# Source files whose uncommitted edits make a run "dirty". dvc.lock and the DVC metrics files are left out:
# DVC rewrites them while the pipeline runs, and the pipeline must not look dirty halfway through.
SOURCE_PATHSPEC = (":(glob)**/*.py", "params.yaml", "dvc.yaml", "requirements.txt")
# dvc.lock outs that identify the data, tag name -> (stage, out path).
DATA_OUTS = {
    "data_raw_hash": ("fetch", paths.RAW.as_posix()),
    "data_hash": ("slice", paths.PROCESSED.as_posix()),
    "splits_hash": ("split", paths.SPLITS.as_posix()),
}


_asked: dict[tuple[str, ...], str | None] | None = None  # git's answers inside git_asked_once(), else None


@contextmanager
def git_asked_once() -> Iterator[None]:
    """Within the block, each git question (commit, diff) is asked once and its answer reused.

    For a pipeline run in one process (the Prefect flow): its lineage tags and every step's MLflow tags ask the
    same questions, and neither the commit nor the source diff changes while it runs (dvc.lock, which it does
    write, is not among SOURCE_PATHSPEC). Nested blocks share the outer block's answers.
    """
    global _asked
    if _asked is not None:
        yield
        return
    _asked = {}
    try:
        yield
    finally:
        _asked = None


def _git(*args: str) -> str | None:
    if _asked is None:
        return _ask_git(*args)
    if args not in _asked:
        _asked[args] = _ask_git(*args)
    return _asked[args]


def _ask_git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_commit() -> str:
    """HEAD's commit; outside a git repository (the training image has no .git) the one the image was built from,
    which its build passes in as SLICEWISE_GIT_COMMIT."""
    out = _git("rev-parse", "HEAD")
    if out:
        return out.strip()
    built_from = os.environ.get("SLICEWISE_GIT_COMMIT", "").strip()
    return built_from if built_from and built_from != UNKNOWN else UNKNOWN


def source_diff() -> str | None:
    """Uncommitted changes of the source files (None outside a git repository)."""
    return _git("diff", "HEAD", "--", *SOURCE_PATHSPEC)


def git_dirty() -> str:
    """"true" when source files differ from the commit, "false" when not, "unknown" outside git."""
    diff = source_diff()
    return UNKNOWN if diff is None else str(bool(diff.strip())).lower()


def params_hash(settings) -> str:
    """Hash of the parsed parameters (comments and key order do not matter)."""
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flat_params(settings) -> dict[str, object]:
    """Every parameter as dotted keys (what the parent MLflow run records); of the profiles only the active one."""
    dumped = settings.model_dump(mode="json")
    dumped["profiles"] = {settings.profile: dumped["profiles"][settings.profile]}
    return flatten(dumped)


def flatten(node: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one dict of dotted keys."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _md5_of_files(files: list[Path]) -> str | None:
    if not files or not all(f.exists() for f in files):
        return None
    digest = hashlib.md5()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def data_hashes(lock_path: Path = DVC_LOCK, manifest: Path = paths.MANIFEST,
                splits_dir: Path = paths.SPLITS) -> dict[str, str]:
    """The md5 DVC recorded for the raw data, the processed shards and the splits.

    Without a dvc.lock entry (steps run outside DVC before any `dvc repro`), data_hash and splits_hash fall back
    to the md5 of the manifest and of the split lists, prefixed "manifest:" / "lists:" so that they are never
    mistaken for DVC's hashes.
    """
    outs: dict[tuple[str, str], str] = {}
    if lock_path.exists():
        try:
            stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
        except yaml.YAMLError:
            stages = {}
        for stage, entry in stages.items():
            for out in entry.get("outs", []) or []:
                if "md5" in out:
                    outs[(stage, out["path"])] = out["md5"].removesuffix(".dir")
    hashes = {tag: outs.get(key, UNKNOWN) for tag, key in DATA_OUTS.items()}
    fallbacks = {"data_hash": ("manifest:", [manifest]),
                 "splits_hash": ("lists:", [splits_dir / f"{name}.txt" for name in ("train", "val", "test")])}
    for tag, (prefix, files) in fallbacks.items():
        if hashes[tag] == UNKNOWN and (md5 := _md5_of_files(files)):
            hashes[tag] = prefix + md5
    return hashes


def data_fingerprint(processed: Path = paths.PROCESSED, splits_dir: Path = paths.SPLITS) -> str:
    """sha256 (16 hex) of what is on disk now: the manifest (every slice row), the slice step's per-patient
    fingerprints (each patient's raw file digests and slicing spec) and the split lists. dvc.lock's hashes say what
    DVC last recorded, which a step run by hand afterwards (`python -m tasks split`) leaves stale; register compares
    this too before it takes a champion's recorded figures as measured on the same test data.

    tasks/data/datasets.data_fingerprint hashes the same files (paths.data_identity_files) and the shards too, for
    training's resume key; it is not called here, as it would bring torch and the training data code into register's
    start-up and DVC dependencies for a registry tag. This one's bytes stay as registered champions were tagged."""
    digest = hashlib.sha256()
    for path in paths.data_identity_files(processed, splits_dir):
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"-") + b"\0")
    return digest.hexdigest()[:16]


def prefect_flow_run_id() -> str | None:
    """The Prefect flow run driving this process, if any (env from a Prefect worker, or the in-process runtime)."""
    # Set by our flow (flows/lineage.py) for its steps, or by a Prefect worker for the flow's own process.
    if flow_run_id := os.environ.get(FLOW_RUN_ENV) or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return flow_run_id
    if "prefect" not in sys.modules:  # importing Prefect costs seconds; it is loaded only when Prefect runs us
        return None
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # Prefect's runtime raises various errors outside a run context
        return None


def kaggle_versions(recorded: Path = paths.KAGGLE_VERSIONS) -> str | None:
    """Which Kaggle data set versions data/raw holds, as fetch recorded them ("awsaf49/brats20-...: v3, ..."); the
    data hash says that the data changed, this says to what."""
    try:
        entries = json.loads(recorded.read_text())
    except (OSError, ValueError):
        return None
    shown = [f"{e['dataset']}: v{e['version']}" for e in entries.values()
             if isinstance(e, dict) and "dataset" in e and "version" in e] if isinstance(entries, dict) else []
    return ", ".join(shown) or None


def run_tags(settings) -> dict[str, str]:
    """Tags every MLflow run and registry version of this pipeline run carries."""
    tags = {"git_commit": git_commit(), "git_dirty": git_dirty(), "profile": settings.profile,
            "data_source": settings.data.source, "params_hash": params_hash(settings), **data_hashes()}
    if settings.data.source == "kaggle" and (versions := kaggle_versions()):
        tags["kaggle_versions"] = versions
    if flow_run_id := prefect_flow_run_id():
        tags["prefect_flow_run_id"] = flow_run_id
    return tags
