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
import logging
import os
import signal
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from tasks import paths
from tasks.errors import SliceWiseError
from tasks.run_lock import waiting_for_dvc_lock
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
# to record itself, and ran again on the next flow run. Never forever: a hung DVC command would hold it forever.
LOCK_WAIT_SECONDS = 120


def _waiting_for_lock(attempt):
    """`attempt()` (a DVC call that takes the repository lock), waiting up to LOCK_WAIT_SECONDS for another DVC
    command to give the lock up (tasks/run_lock.py)."""
    return waiting_for_dvc_lock(attempt, LOCK_WAIT_SECONDS, "run the flow again (a finished step's outputs are "
                                "recorded then, or rebuilt)")


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


@contextmanager
def outputs_held() -> Iterator[None]:
    """Every output of the pipeline write-locked in DVC's own read/write lock (.dvc/tmp/rwlock) while a flow runs.

    `dvc repro` takes that lock for a stage's deps and outs before it clears the outputs of a stale stage, and
    refuses a path another live process has locked ("'data/raw' is busy, it is being blocked by: (PID n):
    …/flows/__main__.py run"). Without it, a `dvc repro` started during a flow run deleted the outputs the flow was writing
    before the step's command met the pipeline lock (tasks/run_lock.py). `dvc commit` and `dvc status` (which reads
    every stage under that lock, as while `dvc repro` runs a stage) are refused the same way; `dvc metrics show`
    takes no such lock. Held under the name DVC gives this process (its command line), as DVC's lock on its own
    calls, so the flow's own DVC calls (its status and commits) pass. No kernel lock: DVC drops an entry whose
    process has died."""
    from dvc.lock import LockError
    from dvc.rwlock import _edit_rwlock, rwlock

    info = {"pid": os.getpid(), "cmd": " ".join(sys.argv)}  # what DVC's `rwlocked` names this process's own calls
    held = ExitStack()
    # Taken under DVC's repository lock, waited for as the flow's other DVC calls wait: `dvc status`, `commit` and
    # `checkout` hold their entries only while they hold that lock (a `dvc status` typed at that moment refused the
    # flow), so only a `dvc repro` whose stage's command runs can refuse it. Signals held: DVC rewrites the file in
    # place.
    with _repo() as repo, _locked(repo), signals_held():
        outs = [out.fs_path for stage in repo.index.stages for out in stage.outs]
        tmp_dir, fs, hardlink = repo.tmp_dir, repo.fs, repo.config["core"].get("hardlink_lock", False)
        os.makedirs(tmp_dir, exist_ok=True)
        with _edit_rwlock(tmp_dir, fs, hardlink) as entries:  # DVC's own editing of the file (pinned, requirements.txt)
            _drop_entries_of(entries, info)
        try:
            held.enter_context(rwlock(tmp_dir, fs, info["cmd"], [], outs, hardlink))
        except LockError as exc:  # a `dvc repro` in the middle of a stage
            busy, blocker = (str(exc).splitlines() + [""])[:2]
            raise SliceWiseError(f"a DVC command is working on the pipeline's outputs ({busy} {blocker.strip()}); "
                                 "let it finish and run the flow again (no such process running: remove the file)",
                                 ".dvc/tmp/rwlock") from exc
    try:
        yield
    finally:
        with signals_held():  # a second Ctrl-C while DVC rewrote the file left it cut, and every dvc command failed
            try:
                held.close()
            except AssertionError:  # DVC's release asserts its entries are there: the file was removed or edited
                logging.getLogger(__name__).warning("DVC's lock file .dvc/tmp/rwlock lost this flow's entries "
                                                    "during the run (removed or edited by hand?): nothing to release")


def _drop_entries_of(entries: dict, info: dict) -> None:
    """Remove the entries that name this process (its pid and command line) from the rwlock file's content. This
    process holds none yet, so they were left by a run killed outright that had the same pid (a container's flow
    gets the same one at each start): DVC takes such an entry for this process's own, never releases it, and after
    the flow a `dvc repro` met it as long as any process had that pid."""
    for path in [path for path, holder in entries["write"].items() if holder == info]:
        del entries["write"][path]
    for path, readers in list(entries["read"].items()):
        if kept := [reader for reader in readers if reader != info]:
            entries["read"][path] = kept
        else:
            del entries["read"][path]


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

    def __init__(self, stages: list[str], stale: dict[str, list], lock: dict[str, dict],
                 code: dict[str, str] | None = None):
        self.stages, self._stale, self._lock, self.current = stages, stale, lock, True
        self.code = code if code is not None else code_digests()

    @classmethod
    def read(cls) -> PipelineStatus:
        """One `Repo`, one status call for all stages, one parse of dvc.yaml and of dvc.lock; and the code as it is
        now (`code_edited`)."""
        code = code_digests()
        with _repo() as repo:
            stale = _status(repo)
        return cls(pipeline_stages(), stale, lock_entries(), code)

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

    def code_edited(self, stage: str) -> list[str]:
        """The stage's code files (its dvc.yaml deps under CODE_FOLDERS) that differ on disk from when this snapshot
        was read. A step runs in the flow's process with the modules it has imported, while DVC records the files
        as they are when the stage is committed: an edit made meanwhile would be recorded as code the step ran."""
        deps = stage_code_deps(stage)
        now = code_digests()
        return sorted(path for path in now.keys() | self.code.keys()
                      if now.get(path) != self.code.get(path) and _under(path, deps))


# Where a step's code lives: dvc.yaml lists the files and folders of these a stage imports as its deps.
CODE_FOLDERS = ("tasks", "models")


def code_digests(root: Path = paths.ROOT) -> dict[str, str]:
    """sha256 of every Python file under CODE_FOLDERS, by its path from `root` (about 150 files: milliseconds)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in CODE_FOLDERS for path in sorted((root / folder).rglob("*.py"))}


def stage_code_deps(stage: str, dvc_yaml: Path = DVC_YAML) -> list[str]:
    """The stage's deps in dvc.yaml that are code: files and folders under CODE_FOLDERS."""
    deps = (((_load_yaml(dvc_yaml) or {}).get("stages") or {}).get(stage) or {}).get("deps") or []
    names = [dep if isinstance(dep, str) else next(iter(dep)) for dep in deps]
    return [name for name in names if name.split("/")[0] in CODE_FOLDERS]


def _under(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back, then delivered, around a write of dvc.lock: DVC rewrites the file in place, and
    a flow run stopped while it wrote left it empty or cut in the middle of a line (review 2026-12-07), after which
    neither `dvc` nor the flow could start. Meanwhile a signal is only noted; once the file is whole, the first one
    noted is raised again under the handlers of before (Prefect's, or the default). Python runs signal handlers in the
    main thread only, where the flow runs its steps: elsewhere nothing can be held, and nothing is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    before = {held: signal.getsignal(held) for held in (signal.SIGINT, signal.SIGTERM)}
    for held, handler in before.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be set back
            signal.signal(held, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for held, handler in before.items():
            if handler is not None:
                signal.signal(held, handler)
        if noted:
            signal.raise_signal(noted[0])


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
            repo.stage_cache.restore(stage_obj)  # outputs only: a cut restore is outputs DVC finds changed
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
        with signals_held():
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
