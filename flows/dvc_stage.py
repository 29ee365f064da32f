"""The DVC bridge: DVC alone decides whether a stage is fresh, and records what a step produced.

A Prefect task asks `stage_changes(stage)` before doing any work; an empty answer means the stage's deps,
params, cmd and outs all match dvc.lock, exactly what `dvc status` / `dvc repro` would conclude. After the
step has run in-process, `commit_stage(stage)` writes the stage's dvc.lock entry and copies its outputs into
the DVC cache, the same entry `dvc repro` writes (tests/test_flows.py compares the two). Because both front
doors read and write the same dvc.lock, they can never disagree about what is up to date.

A flow run asks once for the whole pipeline (`PipelineStatus.read()`: one `Repo`, one status call, one parse of
dvc.yaml and dvc.lock) and its tasks answer from that snapshot until the first step changes the workspace; from
then on each task asks DVC about its own stage again. A flow run that finds everything cached asks DVC once.

No Prefect here: this module only speaks to DVC, through its Python API (`dvc.repo.Repo`).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from tasks import paths
from tasks.errors import SliceWiseError
from tasks.tracking.provenance import DVC_LOCK

DVC_YAML = paths.ROOT / "dvc.yaml"
# libyaml when PyYAML has it: dvc.lock grows with every output file's hash, and the pure-Python parser takes
# a quarter of a second for the quick pipeline's.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _repo():
    from dvc.repo import Repo  # imported on use: DVC takes a second to import

    return Repo(str(paths.ROOT))


# How long the flow waits for DVC's repository lock, which any DVC command holds while it runs (`dvc status` in a
# terminal, an editor's DVC extension). DVC's own gives up after 3 s: a step that had run for an hour then failed
# to record itself, and ran again on the next flow run. Never forever: a `dvc repro` holds it for the whole pipeline.
LOCK_WAIT_SECONDS = 120


def _waiting_for_lock(attempt):
    """`attempt()` (a DVC call that takes the repository lock, trying for about 3 s), again and again while another
    DVC command holds the lock, for up to LOCK_WAIT_SECONDS; then one line naming the lock."""
    from dvc.lock import LockError

    wait_seconds = LOCK_WAIT_SECONDS
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return attempt()
        except LockError as exc:
            if time.monotonic() >= deadline:
                raise SliceWiseError(f"another DVC command has held the repository's lock for over {wait_seconds:g} "
                                     "s; let it finish and run the flow again (a finished step's outputs are "
                                     "recorded then, or rebuilt)", ".dvc/tmp/lock") from exc


@contextmanager
def _locked(repo) -> Iterator[None]:
    _waiting_for_lock(repo.lock.lock)
    try:
        yield
    finally:
        repo.lock.unlock()


def _status(repo, **kwargs) -> dict:
    """`repo.status(**kwargs)`, waiting for the lock as `_locked` does: status takes the lock itself (so it cannot run
    under `_locked`), and DVC's own 3 s failed a flow at its next stage when a `dvc status` was typed meanwhile."""
    return _waiting_for_lock(lambda: repo.status(**kwargs))


def pipeline_stages(dvc_yaml: Path = DVC_YAML) -> list[str]:
    """Stage names declared in dvc.yaml, in file order."""
    return list((_load_yaml(dvc_yaml) or {}).get("stages", {}))


def stage_changes(stage: str) -> list:
    """What DVC finds changed for this one stage (empty when up to date); upstream stages are not checked.

    Same answer as `dvc status <stage>`: e.g. [{"changed deps": {"params.yaml": {"split": "modified"}}}],
    ["changed command"] for a stage that never ran, [{"changed outs": {"data/splits": "deleted"}}].
    """
    with _repo() as repo:
        return _status(repo, targets=[stage]).get(stage, [])


def stale_stages() -> dict[str, list]:
    """Every stage DVC finds changed, as `dvc status` lists them (empty when the whole pipeline is fresh)."""
    with _repo() as repo:
        return _status(repo)


class PipelineStatus:
    """DVC's view of every stage at one moment: the stages of dvc.yaml, their dvc.lock entries, what `dvc status` finds.

    Read once per flow run. It stays true while nothing writes to the workspace; `workspace_changed()` (called
    before a step runs or outputs are restored) retires it, and from then on each question goes to DVC again,
    for that stage alone, because a stage that ran changes what its downstream stages depend on.
    """

    def __init__(self, stages: list[str], stale: dict[str, list], lock: dict[str, dict]):
        self.stages, self._stale, self._lock, self.current = stages, stale, lock, True

    @classmethod
    def read(cls) -> PipelineStatus:
        """One `Repo`, one status call for all stages, one parse of dvc.yaml and of dvc.lock."""
        with _repo() as repo:
            stale = _status(repo)
        return cls(pipeline_stages(), stale, lock_entries())

    @property
    def stale(self) -> dict[str, list]:
        """stage → changes, for the stages DVC found changed when the snapshot was read."""
        return self._stale

    def workspace_changed(self) -> None:
        self.current = False

    def changes(self, stage: str) -> list:
        """What `stage_changes(stage)` answers, from the snapshot while it is current."""
        return self._stale.get(stage, []) if self.current else stage_changes(stage)

    def lock_entry(self, stage: str) -> dict | None:
        return self._lock.get(stage) if self.current else lock_entry(stage)

    def fingerprint(self, stage: str) -> str:
        return entry_fingerprint(self.lock_entry(stage))


def clear_or_restore(stage: str, use_run_cache: bool = True) -> bool:
    """What `dvc repro` does before running a stale stage; True when the run is not needed after all.

    It deletes the stage's outputs (those marked `persist` stay), so no stale file from an earlier run can
    slip into the new output, then checks out the outputs from DVC's run cache when this exact cmd, deps and
    params ran before (e.g. a parameter set back to an earlier value). `use_run_cache=False` is `repro -f`.
    """
    from dvc.stage.cache import RunCacheNotFoundError

    with _repo() as repo, _locked(repo):
        (stage_obj,) = repo.stage.collect(stage)
        stage_obj.remove_outs(ignore_remove=False, force=False)
        if not use_run_cache:
            return False
        try:
            repo.stage_cache.restore(stage_obj)
        except RunCacheNotFoundError:
            return False
        return True


def commit_stage(stage: str) -> str:
    """Record the stage's current deps, params and outs in dvc.lock and the cache; returns its fingerprint.

    The same entry `dvc repro` writes after running the stage, and, like repro, outputs are added to .gitignore
    and dvc.lock is staged when `core.autostage` is on. Into DVC's run cache only as repro puts it there: not for a
    stage with an uncached output that is neither a metric nor a plot (register's register.json, evaluate's plots
    folder). Restoring such a stage from the run cache would skip what it does besides its files (register
    registers a model and moves the champion alias), so `dvc repro` never records it, and neither may the flow.
    """
    with _repo() as repo, _locked(repo), repo.scm_context:
        (stage_obj,) = repo.stage.collect(stage)
        uncached = any(not out.use_cache for out in stage_obj.outs if not (out.is_metric or out.is_plot))
        stage_obj.save(run_cache=not uncached)
        stage_obj.commit()
        stage_obj.dvcfile.dump_stages([stage_obj], update_pipeline=False)
    return lock_fingerprint(stage)


def lock_fingerprint(stage: str, lock: Path = DVC_LOCK) -> str:
    """sha256 of the stage's dvc.lock entry (cmd, deps, params, outs with their hashes); '' without one."""
    return entry_fingerprint(lock_entry(stage, lock))


def entry_fingerprint(entry: dict | None) -> str:
    return "" if entry is None else hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def lock_entry(stage: str, lock: Path = DVC_LOCK) -> dict | None:
    return lock_entries(lock).get(stage)


def lock_entries(lock: Path = DVC_LOCK) -> dict[str, dict]:
    """stage → its dvc.lock entry (empty without a dvc.lock)."""
    if not lock.exists():
        return {}
    return (_load_yaml(lock) or {}).get("stages") or {}


def _load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=_YAML_LOADER)


def describe_changes(changes: list) -> str:
    """One line for logs and state messages, e.g. "changed deps: params.yaml (split: modified)"."""
    parts = []
    for change in changes:
        if isinstance(change, str):
            parts.append(change)
            continue
        for kind, items in change.items():
            if isinstance(items, dict):
                parts.append(f"{kind}: " + ", ".join(_describe_item(path, what) for path, what in items.items()))
            else:
                parts.append(f"{kind}: {items}")
    return "; ".join(parts) or "no recorded run"


def _describe_item(path: str, what: object) -> str:
    if isinstance(what, dict):  # params: {key: "modified" | "new" | "deleted"}
        return f"{path} (" + ", ".join(f"{key}: {state}" for key, state in what.items()) + ")"
    return f"{path} ({what})"
