"""Process pools for the data steps (synthetic generation, slicing): one job per core, each single-threaded.

A pool runs `workers` jobs side by side on about as many cores. Left alone, numpy's OpenBLAS (and any OpenMP
library) in each worker starts one thread per core and keeps it spinning after every call, so the workers' idle
BLAS threads compete with the other workers' real work. Measured on 2 cores (synthetic Kaggle images, 2 workers):
9.6 s with the default threads, 3.9 s single-threaded, 7.9 s in one process.

Each worker also keeps the memory it frees (glibc's malloc, where there is one): a patient's volumes, planes and
shard are arrays of 2–60 MB, which glibc otherwise maps from the kernel and hands back one by one, so every array of
every patient paid its page faults again. Measured on 2 cores (AMD EPYC, production spec): slicing 0.44 s a patient
before, 0.26–0.29 s after, and a bare nibabel load 0.30 s before, 0.15–0.17 s after. A worker's resident memory
then stays at its peak, which one patient sets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from threadpoolctl import threadpool_info, threadpool_limits


def process_pool(workers: int, initializer: Callable[[], object] | None = None) -> ProcessPoolExecutor:
    """A pool of `workers` processes whose numerical libraries use one thread each; `initializer` then runs in
    each worker as ProcessPoolExecutor's would."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(initializer,))


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make this process's malloc reuse what it frees: no arrays mapped from the kernel (M_MMAP_MAX 0) and no heap
    given back (M_TRIM_THRESHOLD at its maximum). False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@functools.cache
def prepare_worker() -> bool:
    """Once per process, what a worker of these pools does first: numerical libraries on one thread each, freed
    memory kept (returned: whether it is). Other runners' workers (a Dask cluster's, flows/dask_slicing.py) call it
    before their first job."""
    threadpool_limits(limits=1)
    return keep_freed_memory()


def library_threads() -> int:
    """The most threads any loaded numerical library (BLAS, OpenMP) of this process would start; 1 when none is
    loaded."""
    return max((int(pool.get("num_threads", 1)) for pool in threadpool_info()), default=1)


def _start_worker(initializer: Callable[[], object] | None) -> None:
    prepare_worker()
    _exit_with_parent(os.getppid())
    if initializer is not None:
        initializer()


def _exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """End this worker once its parent is gone. A pool's idle workers wait on a queue whose other end their siblings
    also hold, so after a `kill -9` of the step (the OOM killer's way) they never noticed, and each kept its peak
    memory, a patient's worth, until someone killed them by hand."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
