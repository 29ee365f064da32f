"""Seconds per training stage on the processed data of the active profile, and the final joint model's test
accuracy (0.5 threshold) and pooled Dice.

Usage: .venv/bin/python -m bench.bench_train [--threads N] [--compare-layout]   (run `make run` or the slice and
split steps first). Checkpoints go to a temporary folder, so the project's own checkpoints are left alone.
--compare-layout runs the stages four times, NHWC (channels_last), NCHW, NCHW, NHWC, and prints the ratio of the two
layouts' mean totals: the first run pays the cold page cache and lazy imports, which always favoured the layout run
second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from tasks import paths
from tasks.config import Settings, load_settings
from tasks.data.datasets import load_slices
from tasks.data.splits import read_split
from tasks.inference.checkpoints import load_model
from tasks.training.plan import PREVIOUS_STAGE, plan_stage
from tasks.training.stage import train_stage
from tasks.training.steps import StageLoss, evaluate

def run_stages(settings: Settings, workdir: Path) -> dict[str, float]:
    """Train seg → cls → joint into workdir; wall seconds per stage and CPU seconds of the whole run.

    CPU seconds matter on a shared machine: with --threads 1 they are the wall time an idle core would take.
    """
    seconds, cpu = {}, {}
    for stage, previous in PREVIOUS_STAGE.items():
        plan = dataclasses.replace(
            plan_stage(settings, stage),
            checkpoint_dir=workdir / stage,
            history_path=workdir / f"{stage}.csv",
            init_checkpoint=workdir / previous / "best.pt" if previous else None,
        )
        cpu_started = time.process_time()
        result = train_stage(plan)
        seconds[stage], cpu[stage] = result["seconds"], round(time.process_time() - cpu_started, 1)
        print(f"{stage:>6}: {result['seconds']:6.1f} s wall  {cpu[stage]:6.1f} s CPU  {result['epochs_run']} epochs  "
              f"{result['metric']} {result['best_metric']}", flush=True)
    seconds["total"] = round(sum(seconds.values()), 1)
    seconds["cpu_total"] = round(sum(cpu.values()), 1)
    return seconds


def test_scores(settings: Settings, best_joint: Path) -> dict[str, float]:
    """Accuracy at 0.5 and pooled Dice of the joint model on the test split (evaluate.py has the full report)."""
    model, _ = load_model(best_joint)
    test = load_slices(paths.PROCESSED, read_split("test"), ("brats", "kaggle"))
    row = evaluate(model, test, StageLoss("joint", settings.train_joint), settings.train, torch.device("cpu"))
    return {"test_accuracy": round(row["val_accuracy"], 4), "test_dice": round(row["val_dice"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: train.threads)")
    parser.add_argument("--compare-layout", action="store_true", help="also time NCHW and print the ratio")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not paths.MANIFEST.exists():
        raise SystemExit(f"{paths.MANIFEST}: no processed data; run `make run` (or fetch, slice, split) first")
    settings = load_settings()
    train = settings.train.model_copy(update={"threads": args.threads} if args.threads is not None else {})
    settings = settings.model_copy(update={"train": train})
    print(f"profile {settings.profile}, model {settings.active.model}, epochs {settings.active.epochs}, threads {train.threads or 'all'}")

    report: dict[str, list[dict]] = {}
    for channels_last in layout_order(args.compare_layout, train.channels_last):
        variant = settings.model_copy(update={"train": train.model_copy(update={"channels_last": channels_last})})
        with tempfile.TemporaryDirectory() as tmp:
            print(f"-- channels_last={channels_last}")
            seconds = run_stages(variant, Path(tmp))
            report.setdefault(f"channels_last={channels_last}", []).append(
                {**seconds, **test_scores(variant, Path(tmp) / "joint" / "best.pt")})
    for name, runs in report.items():
        print(f"{name}: {json.dumps(runs)}")
    if len(report) == 2:
        nhwc, nchw = (mean_total(runs) for runs in report.values())
        print(f"NCHW / NHWC mean total time = {nchw / nhwc:.2f} ({nchw:.1f} s / {nhwc:.1f} s)")


def layout_order(compare: bool, channels_last: bool) -> list[bool]:
    """The channels_last value of each run: ABBA when comparing, so that what the first run pays alone (cold caches,
    lazy imports) and any drift of the machine fall on both layouts alike."""
    return [True, False, False, True] if compare else [channels_last]


def mean_total(runs: list[dict]) -> float:
    return sum(run["total"] for run in runs) / len(runs)


if __name__ == "__main__":
    main()
