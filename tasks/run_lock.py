"""One pipeline run at a time in a project: `dvc repro`'s steps and a Prefect flow run share data/, checkpoints/,
params.yaml and dvc.lock, and two at once would overwrite each other's outputs.

Each step run through the CLI (what dvc.yaml calls) holds the lock while it runs, and so does `python -m tasks set`;
a flow run holds it from start to end (its steps run in its own process). A second run asking for it fails at once
with a message naming the holder, instead of waiting hours or interleaving. One limit: `dvc repro` clears a stale
stage's outputs (or restores them from its run cache) before it starts the stage's command, so a `dvc repro` started
during a flow run is refused only after that; the flow does not hold DVC's own lock for hours. `make run` asks first
(`python -m tasks check` takes the lock and gives it back), so only a bare `dvc repro` meets that limit.

An advisory `flock` on a file in the project folder: released by the kernel when its holder exits, however it exits,
so a killed run never leaves it stale.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

from tasks import paths
from tasks.errors import SliceWiseError

LOCK_FILE = ".slicewise.lock"


@contextmanager
def pipeline_lock(holder: str) -> Iterator[None]:
    """Hold the project's pipeline lock as `holder` (what a refused run is told); SliceWiseError when taken.

    Under `torchrun` the processes of one stage are one run: rank 0 holds the lock for all of them."""
    if os.environ.get("RANK", "0") != "0":
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
        yield
