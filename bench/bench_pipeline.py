"""The quick pipeline from scratch (seconds per stage and in all), a no-op `dvc repro`, and a fully cached Prefect
flow run against a bare Prefect flow of nine no-op tasks on the same server in the same process.

Usage: .venv/bin/python -m bench.bench_pipeline [--keep DIR]
Everything runs in a throw-away copy of the project (the profile params.yaml selects, MLflow tracking on into the
copy's own store), so the project's data, checkpoints and registry are left alone. `--keep DIR` builds the copy
in DIR and leaves it there (bench/__main__.py reuses its data for the slicing and export benchmarks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv" / "bin" / "dvc"
REPEATS = 3  # timed runs of each flow, after one warm-up run each


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def stage_names(project: Path) -> list[str]:
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def pipeline_times(project: Path) -> dict:
    """`dvc repro` stage by stage (each one alone, in pipeline order), then a no-op `dvc repro` of everything."""
    stages = {name: round(timed([str(DVC), "repro", "--single-item", name], project), 1)
              for name in stage_names(project)}
    noop = timed([str(DVC), "repro"], project)
    return {"stage_seconds": stages, "pipeline_seconds": round(sum(stages.values()), 1),
            "noop_dvc_repro_seconds": round(noop, 2)}


def flow_ratio() -> dict:
    """Run inside a project whose pipeline is up to date: cached flow run versus nine no-op tasks. A stale project is
    refused before the flow starts: its run would be the whole pipeline, training included, in that project."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        if stale := repo.status():
            raise SystemExit(f"the pipeline is not up to date here ({', '.join(stale)} changed): run `make run` "
                             "first; --flow-ratio times a flow that finds every stage cached")
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import STAGE_TASKS, slicewise_pipeline

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def bare_flow(n: int) -> None:
        for i in range(n):
            noop(i)

    def seconds(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    with prefect_test_harness(server_startup_timeout=180):
        states = slicewise_pipeline()  # warm-up: imports, first contact with the server
        not_cached = {stage: s["state"] for stage, s in states.items() if s["state"] != "Cached"}
        if not_cached:
            raise SystemExit(f"the pipeline was not up to date, the flow ran: {not_cached}")
        bare_flow(len(STAGE_TASKS))
        cached, bare = [], []
        for _ in range(REPEATS):  # interleaved: the server's database grows run by run, for both alike
            cached.append(seconds(slicewise_pipeline))
            bare.append(seconds(lambda: bare_flow(len(STAGE_TASKS))))
    cached_s, bare_s = statistics.median(cached), statistics.median(bare)
    return {"tasks": len(STAGE_TASKS), "cached_flow_seconds": round(cached_s, 2),
            "bare_flow_seconds": round(bare_s, 2), "cached_over_bare_ratio": round(cached_s / bare_s, 2)}


def run(keep: Path | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.project_copy import copy_project  # the tests' project copy: code, params, a link to .venv

    folder = keep or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    folder.mkdir(parents=True, exist_ok=True)
    project = copy_project(folder, tiny=False, **{"tracking.enabled": True})
    profile = yaml.safe_load((project / "params.yaml").read_text())["profile"]
    report = {"profile": profile, **pipeline_times(project)}
    done = subprocess.run([sys.executable, "-m", "bench.bench_pipeline", "--flow-ratio"], cwd=project,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cached flow benchmark failed:\n{done.stderr[-3000:]}")
    report["prefect"] = json.loads(done.stdout.strip().splitlines()[-1])
    report["project"] = str(project)
    if keep is None:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the project copy here and keep it")
    parser.add_argument("--flow-ratio", action="store_true", help=argparse.SUPPRESS)  # the in-copy half
    args = parser.parse_args()
    if args.flow_ratio:
        print(json.dumps(flow_ratio()))
        return
    report = run(args.keep)
    print(json.dumps(report, indent=2))
    print(f"quick pipeline {report['pipeline_seconds']:.0f} s; no-op dvc repro {report['noop_dvc_repro_seconds']:.1f} s; "
          f"cached flow / bare flow = {report['prefect']['cached_over_bare_ratio']:.2f}")


if __name__ == "__main__":
    main()
