"""One pipeline run at a time in a project: `dvc repro`'s steps and a Prefect flow run share data/, checkpoints/,
params.yaml and dvc.lock, and two at once would overwrite each other's outputs.

Each step run through the CLI (what dvc.yaml calls) holds the lock while it runs, and so does `python -m tasks set`;
a flow run holds it from start to end (its steps run in its own process). A second run asking for it fails at once
with a message naming the holder, instead of waiting hours or interleaving. `dvc repro` clears a stale stage's
outputs (or restores them from its run cache) before it starts the stage's command, so this lock alone refused a
`dvc repro` started during a flow run only after that: a flow run also holds DVC's read/write lock on every output
(flows/dvc_stage.py, `outputs_held`), which `dvc repro` meets first. `make run` asks first too (`python -m tasks check`
takes the lock and gives it back).

An advisory `flock` on a file in the project folder: released by the kernel when its holder exits, however it exits,
so a killed run never leaves it stale. A flock belongs to the open file, which a forked child shares: the data steps'
process pools fork their workers while the lock is held, and after a `kill -9` of the step those idle orphans kept
the project locked, naming a dead pid. So a child forked while the lock is held lets go of its copy at once.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from tasks import paths
from tasks.errors import SliceWiseError

LOCK_FILE = ".slicewise.lock"
# How long a write of params.yaml waits for DVC's repository lock, which any DVC command holds while it runs
# (`dvc status` in a terminal, an editor's DVC extension, `dvc repro` recording a stage). DVC's own gives up after 3 s.
DVC_LOCK_WAIT_SECONDS = 120
T = TypeVar("T")
_held: list[int] = []  # the descriptor of the lock this process holds (empty when none)


def _let_go_in_child() -> None:
    """In a child just forked: point the inherited lock descriptor at /dev/null, so the lock is released when its
    holder ends even if the child lives on. Not closed: the number stays taken, and nothing else can land on it."""
    for fd in _held:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, fd, inheritable=False)
        os.close(devnull)
    _held.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


@contextmanager
def pipeline_lock(holder: str) -> Iterator[None]:
    """Hold the project's pipeline lock as `holder` (what a refused run is told); SliceWiseError when taken.

    Under `torchrun` the processes of one stage are one run: rank 0 holds the lock for all of them. Only a process of
    such a run (WORLD_SIZE > 1, as the training steps read it) is let through: a shell that merely has RANK set (a
    cluster's environment) skipped the lock while its step trained alone."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") != "0":
        yield
        return
    path = paths.ROOT / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as exc:  # a read-only project folder, a lock file of another user
        raise SliceWiseError(f"cannot open the pipeline lock file ({exc.strerror}); the project folder must be "
                             "writable", path) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "another process"
            raise SliceWiseError(f"another pipeline run is working in this project ({other}); wait for it to end: "
                                 "two at once would overwrite each other's outputs", path) from None
        except OSError as exc:  # e.g. ENOLCK: a file system without locks (some NFS mounts)
            raise SliceWiseError(f"cannot lock the pipeline lock file ({exc.strerror or exc}); the project folder "
                                 "must be on a file system with file locks", path) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder}, pid {os.getpid()}\n")
        handle.flush()
        _held.append(handle.fileno())
        try:
            yield
        finally:
            _held.remove(handle.fileno())


def waiting_for_dvc_lock(attempt: Callable[[], T], wait_seconds: float, then: str) -> T:
    """`attempt()` (a DVC call that takes the repository lock, trying for about 3 s), again and again while another
    DVC command holds the lock, for up to `wait_seconds`; then one line naming the lock and saying `then`."""
    from dvc.lock import LockError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return attempt()
        except LockError as exc:
            if time.monotonic() >= deadline:
                raise SliceWiseError(f"another DVC command has held the repository's lock for over {wait_seconds:g} "
                                     f"s; let it finish and {then}", ".dvc/tmp/lock") from exc


@contextmanager
def dvc_lock_for_params() -> Iterator[None]:
    """DVC's own repository lock, held while params.yaml is rewritten. `dvc repro` gives it up only while a stage's
    command runs, and takes it back to record the stage, reading params.yaml then: a write in that moment (a flow
    started from the UI, `tasks set` in another terminal) would be recorded as the values the stage ran with. A
    folder that is no DVC project has no such lock."""
    if not (paths.ROOT / ".dvc").is_dir():
        yield
        return
    from dvc.repo import Repo  # imported on use: DVC takes a second to import

    with Repo(str(paths.ROOT)) as repo:
        waiting_for_dvc_lock(repo.lock.lock, DVC_LOCK_WAIT_SECONDS, "set the parameters again")
        try:
            yield
        finally:
            repo.lock.unlock()
