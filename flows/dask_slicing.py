"""The `slice` step across Dask workers: its per-patient jobs as Prefect tasks on a `DaskTaskRunner`.

`python -m flows run --slice-runner dask` (or the flow parameter `slice_runner="dask"`) runs the step as the
subflow `slice-on-dask`: tasks/data/slicing.py plans, finalises and writes the manifest exactly as it does under
`dvc repro`; only its per-patient jobs (`map_jobs`) become one task each on a Dask cluster, a local one with
`slice.workers` single-threaded worker processes by default, or the one at `dask_address`. Their results come
back in job order, so the output is the one the local process pool writes.

The workers read data/raw and write the shards under data/processed themselves, by paths relative to the
project root, and the scheduler and workers unpickle this project's code. So an existing cluster's scheduler
and workers run in the project folder, on a filesystem the workers share with the flow, with the project
importable (`cd /shared/slicewise && PYTHONPATH=. .venv/bin/dask worker tcp://scheduler:8786`), and the
workers must reach the flow's Prefect API (PREFECT_API_URL set to an address they can reach, not 127.0.0.1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import paths
from tasks import slice as slice_step
from tasks.config import load_settings
from tasks.data.process_pool import library_threads, prepare_worker
from tasks.errors import SliceWiseError

# Where the per-patient slicing jobs run. Not a params.yaml key: it changes where the work happens, never what
# it produces (tests/test_flows.py checks that), so DVC must not see it, and a change must not rerun the stage.
SliceRunner = Literal["processes", "dask"]


def dask_task_runner(address: str | None, workers: int):
    """The scheduler at `address`, or a throw-away local cluster of `workers` single-threaded processes."""
    from prefect_dask import DaskTaskRunner  # imported on use: distributed takes a while to import

    if address:
        return DaskTaskRunner(address=address)
    # Processes, one thread each: slicing is CPU-bound numpy and gzip decompression, mostly under the GIL.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


def slice_on_dask(address: str | None = None) -> dict:
    """Run the `slice` step with its per-patient jobs on Dask; returns the step's result."""
    settings = load_settings(paths.PARAMS)
    runner = dask_task_runner(address, settings.slice.workers)
    # The workers get this process's Prefect settings. Without PREFECT_API_URL, the flow reports to a temporary
    # server that this process started and the workers know nothing of: each would start one of its own (seconds).
    api_url = PREFECT_API_URL.value() or str(get_client(sync_client=True).api_url)
    with temporary_settings({PREFECT_API_URL: api_url}):
        return slice_subflow.with_options(task_runner=runner)(str(Path.cwd().resolve()))


@flow(name="slice-on-dask", persist_result=False)
def slice_subflow(project_root: str) -> dict:
    """The `slice` step; its per-patient jobs run as tasks on this flow's (Dask) task runner."""
    settings = load_settings(paths.PARAMS)

    def map_as_tasks(job: Callable[..., Any], jobs: list[tuple]) -> Iterable[Any]:
        # Everything is submitted at once; results are collected in job order, as tasks/data/slicing.py expects.
        futures = [run_job.submit(job, args, project_root, label=Path(args[0]).name) for args in jobs]
        return (future.result() for future in futures)

    return slice_step.main(settings, map_jobs=map_as_tasks)


@task(name="slice_patient", task_run_name="slice {label}", cache_policy=NO_CACHE, persist_result=False)
def run_job(job: Callable[..., Any], args: tuple, project_root: str, label: str) -> Any:
    """One per-patient job of the slice step, on whichever worker the task runner picked."""
    if os.path.realpath(os.getcwd()) != project_root:
        raise SliceWiseError(f"this Dask worker runs in {os.getcwd()}, not in the project folder: start the "
                             "workers there (PYTHONPATH=. dask worker ...), on a filesystem they share with the "
                             "flow", project_root)
    worker = _dask_worker()
    # As the local process pool's workers do (tasks/data/process_pool.py): one BLAS/OpenMP thread, and the memory
    # a patient's arrays free kept for the next patient instead of faulted in again. A Dask nanny limits the threads
    # through the environment, but sets malloc to give freed memory back.
    kept = prepare_worker() if worker is not None else False
    get_run_logger().info("%s on %s (pid %d, BLAS/OpenMP threads %d, freed memory %s)", label,
                          f"Dask worker {worker}" if worker else "the flow's own process", os.getpid(),
                          library_threads(), "kept" if kept else "returned")
    return job(*args)


def _dask_worker() -> str | None:
    """This Dask worker's address; None when not on a Dask worker (another task runner)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
