"""An equal-time peer: what a user would write in an afternoon, trained for as long as SliceWise's quick model.

Usage: .venv/bin/python -m bench.bench_peer [--project DIR] [--seconds S] [--peer-seeds N ...]
                                             [--quick-checkpoints FILE ...]

The peer is MONAI's `BasicUNet` with its default widths, Adam at 1e-3 and MONAI's `DiceCELoss`, trained on the same
BraTS training slices (shuffled, no augmentation, no schedule, fp32, its last weights) to the whole tumour (labels
1, 2 and 4; until 2026-12-05 it was given the label codes themselves as targets, 2 and 4 included, which no sigmoid
reaches: a loss without a floor that held it back, so the ratios measured before are too high) for the wall-clock
seconds the quick profile's three training stages took (their per-epoch `seconds` in reports/training/*.csv;
timings that name another machine than this one are refused: git or `dvc pull` may have brought them). Both models
are then scored by the evaluation's own code on the same test slices: mean Dice over the test slices with tumour
(what metrics.json calls `segmentation.dice`), except that both models' masks are cut at 0.5 with no clean-up
(evaluate's cut is chosen on validation: 0.75 for the make run model, hence 0.869 here against its 0.866). The ratio
is quick model / peer. Run it in a project whose pipeline has run (`make run`) on a quiet machine: the budget is the
time that run's training took. The training histories also record CPU seconds; when the training kept far fewer CPU
seconds busy per wall second than the peer does now (`budget_check`), other work shared the machine while it trained,
and the report says so.

The peer is trained once per peer seed (default: three) and the ratio uses their median: one peer run under a
wall-clock budget moved ±0.02 in Dice between two runs on the same machine (177 against 182 steps), as much as the
ratio's margin. The range over the peer runs is reported beside it. The quick side is the project's joint best.pt,
or, with `--quick-checkpoints`, several quick models trained on the same data with other training seeds (e.g. the
DVC experiments of `dvc exp run -S seed=N` with fetch, slice and split frozen): then its median faces the peer's, so
both sides' training noise counts alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from tasks import paths

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 16
PEER_RUNS = 3  # peer runs by default: the project's seed, then the first of 1, 2, 3, ... that differ from it



def default_peer_seeds(project_seed: int, runs: int = PEER_RUNS) -> list[int]:
    """The project's seed, then the seed sweep's first seeds (1, 2, 3, ...) other than it: `runs` peer runs whatever
    the project's seed (a project of seed 1 once got two, its own and 2, and their median was their mean)."""
    others = (s for s in itertools.count(1) if s != project_seed)
    return [project_seed, *itertools.islice(others, runs - 1)]

class SegmentationOnly(nn.Module):
    """A plain segmentation network in the predictor's two-head shape (its tumour score: the largest pixel logit)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        seg = self.net(x)
        return {"seg": seg, "cls": seg.amax(dim=(1, 2, 3))}


def stage_timings(history_dir: Path, stage: str) -> pd.DataFrame:
    """A stage's seconds per epoch: its timings file, or the history itself (which held them before 2026-12-05)."""
    history = history_dir / f"{stage}.csv"
    return pd.read_csv(timings if (timings := paths.timings_beside(history)).exists() else history)


def training_seconds(history_dir: Path) -> tuple[float, float | None]:
    """Wall-clock and CPU seconds of the quick model's three training stages, from their per-epoch histories (CPU:
    None for histories written before they recorded it)."""
    histories = [stage_timings(history_dir, stage) for stage in ("seg", "cls", "joint")]
    wall = float(sum(h["seconds"].sum() for h in histories))
    cpu = float(sum(h["cpu_seconds"].sum() for h in histories)) if all("cpu_seconds" in h for h in histories) else None
    return wall, cpu


def training_machines(history_dir: Path) -> set[str]:
    """The machines that trained the three stages, as their timings recorded them (empty for timings written before
    they named one, 2026-12-07)."""
    found = set()
    for stage in ("seg", "cls", "joint"):
        timings = stage_timings(history_dir, stage)
        if "machine" in timings:
            found.update(timings["machine"].dropna().astype(str))
    return found


def foreign_budget(recorded: set[str], here: str) -> str | None:
    """Why the recorded training seconds are no budget on this machine (another CPU or GPU trained them: `dvc pull`
    or git brought its timings), or None. The device and model are compared, not the thread count."""
    def device(description: str) -> str:
        return description.rsplit(", ", 1)[0] if description.endswith(" threads") else description

    others = sorted(m for m in recorded if device(m) != device(here))
    if not others:
        return None
    return (f"the quick model's training seconds were measured on {'; '.join(others)}, not on this machine "
            f"({here}): train it here first (`dvc repro --force train_seg train_cls train_joint`, or python -m bench "
            "--only pipeline peer), or give the budget with --seconds")


# The training's CPU seconds per wall second below this share of the peer's: the machine was busy with other work
# while the quick model trained, so its wall seconds, the peer's budget, were longer than the training needed.
BUSY_SHARE = 0.8


def budget_check(training_wall: float, training_cpu: float | None, peer_wall: float, peer_cpu: float) -> dict:
    """Whether the budget came from a training run that had the machine to itself: its CPU seconds per wall second
    (threads kept busy) against the peer's, measured now with the same number of threads. None: not recorded."""
    peer_rate = peer_cpu / peer_wall if peer_wall > 0 else float("nan")
    if training_cpu is None or training_wall <= 0:
        return {"training_cpu_per_wall": None, "peer_cpu_per_wall": round(peer_rate, 2), "busy_during_training": None}
    training_rate = training_cpu / training_wall
    return {"training_cpu_per_wall": round(training_rate, 2), "peer_cpu_per_wall": round(peer_rate, 2),
            "busy_during_training": bool(training_rate < BUSY_SHARE * peer_rate)}


def train_peer(images: Tensor, masks: Tensor, seconds: float, seed: int) -> tuple[nn.Module, dict]:
    """BasicUNet trained on (images, masks) until `seconds` have passed (checked after every step)."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=images.shape[1], out_channels=1)
    optimizer, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), DiceCELoss(sigmoid=True)
    generator = torch.Generator().manual_seed(seed)
    steps, started, cpu_started = 0, time.perf_counter(), time.process_time()
    net.train()
    while time.perf_counter() - started < seconds:
        for batch in torch.randperm(len(images), generator=generator).split(BATCH_SIZE):
            loss = loss_fn(net(images[batch].float()), (masks[batch][:, None] > 0).float())  # whole tumour: labels 1, 2, 4
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - started >= seconds:
                break
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return net.eval(), {"steps": steps, "epochs": round(steps * BATCH_SIZE / len(images), 2),
                        "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
                        "parameters": sum(p.numel() for p in net.parameters())}


def brats_test_rows(processed: Path, splits: Path) -> pd.DataFrame:
    """The manifest rows of the BraTS test slices: read once, every model is scored on them."""
    from tasks.data.splits import read_split, split_rows

    rows = split_rows(processed, read_split("test", splits))
    return rows[rows["source"] == "brats"].reset_index(drop=True)


def mean_test_slice_dice(model: nn.Module, processed: Path, rows: pd.DataFrame) -> float:
    """Mean Dice over the test slices with tumour among `rows` (brats_test_rows), as `evaluate` computes it, at the
    predictor's default 0.5 cut."""
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import TorchPredictor

    scores = predict_split(TorchPredictor(model), processed, rows, segmentation=True, description="scoring").slice_scores
    return float(scores["dice"].mean())


def run(project: Path = REPO, seconds: float | None = None, peer_seeds: list[int] | None = None,
        quick_checkpoints: list[Path] | None = None) -> dict:
    """`peer_seeds`: one peer run each (default: `default_peer_seeds`); `quick_checkpoints`: the
    quick models to score (default: the project's checkpoints/joint/best.pt)."""
    from tasks.config import load_settings
    from tasks.data.datasets import load_slices
    from tasks.data.splits import read_split
    from tasks.inference.checkpoints import load_model
    from tasks.training.device import machine_description

    previous = Path.cwd()
    os.chdir(project)
    try:
        settings = load_settings("params.yaml")
        processed, splits = Path("data/processed"), Path("data/splits")
        history_dir = Path("reports/training")
        if seconds is None and (why := foreign_budget(training_machines(history_dir),
                                                      machine_description(torch.device("cpu")))):
            raise SystemExit(f"bench_peer: {why}")
        budget, budget_cpu = (seconds, None) if seconds is not None else training_seconds(history_dir)
        seeds = peer_seeds or default_peer_seeds(settings.seed)
        train = load_slices(processed, read_split("train", splits), ("brats",))
        test_rows = brats_test_rows(processed, splits)
        runs = []
        for seed in seeds:
            peer, peer_run = train_peer(train.images, train.masks, budget, seed)
            runs.append({"seed": seed, **peer_run,
                         "test_slice_dice": round(mean_test_slice_dice(SegmentationOnly(peer), processed, test_rows), 4)})
            del peer
        quick_runs = []
        for checkpoint in quick_checkpoints or [Path("checkpoints/joint/best.pt")]:
            quick, _ = load_model(checkpoint)
            quick_runs.append({"checkpoint": str(checkpoint),
                               "test_slice_dice": round(mean_test_slice_dice(quick, processed, test_rows), 4)})
    finally:
        os.chdir(previous)
    from bench.bench_seeds import cpu_description

    check = budget_check(budget, budget_cpu, sum(r["seconds"] for r in runs), sum(r["cpu_seconds"] for r in runs))
    quick_dice = [r["test_slice_dice"] for r in quick_runs]
    return {"cpu": cpu_description(), "budget_seconds": round(budget, 1), "budget_check": check,
            "peer": summarise_peer_runs(runs),
            "quick": {"parameters": sum(p.numel() for p in quick.parameters()),
                      "test_slice_dice": round(statistics.median(quick_dice), 4),
                      **({"runs": quick_runs} if len(quick_runs) > 1 else {})},
            **peer_ratios(quick_dice, [r["test_slice_dice"] for r in runs])}


def summarise_peer_runs(runs: list[dict]) -> dict:
    """The peer's figures: the median Dice and the median epochs over its runs, each run beside them."""
    dice = [r["test_slice_dice"] for r in runs]
    return {"model": "monai BasicUNet (defaults)", "parameters": runs[0]["parameters"],
            "test_slice_dice": round(statistics.median(dice), 4),
            "epochs": statistics.median(r["epochs"] for r in runs), "runs": runs}


def peer_ratios(quick_dice: float | list[float], peer_dice: list[float]) -> dict:
    """Median quick / median peer Dice, and its range over the runs (worst quick / best peer, best quick / worst
    peer). One quick model: quick / median peer, and quick / best peer to quick / worst peer."""
    quick = [quick_dice] if isinstance(quick_dice, (int, float)) else list(quick_dice)

    def ratio(ours: float, peer: float) -> float:
        # four digits: the README shows two, and rounding twice turned 1.1347 into 1.135 into "1.14"
        return round(ours / peer, 4) if peer > 0 else float("inf")

    return {"dice_ratio_quick_over_peer": ratio(statistics.median(quick), statistics.median(peer_dice)),
            "dice_ratio_range": [ratio(min(quick), max(peer_dice)), ratio(max(quick), min(peer_dice))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO, help="a project whose pipeline has run")
    parser.add_argument("--seconds", type=float, help="training budget (default: the quick model's training time)")
    parser.add_argument("--peer-seeds", type=int, nargs="+", help="one peer run per seed (default: the project's "
                        f"seed, then the first {PEER_RUNS - 1} of 1, 2, 3, ... other than it)")
    parser.add_argument("--quick-checkpoints", type=Path, nargs="+", help="quick models (joint best.pt files) trained "
                        "on the project's data with other training seeds; their median faces the peer's "
                        "(default: the project's own)")
    args = parser.parse_args()
    quick = [path.resolve() for path in args.quick_checkpoints] if args.quick_checkpoints else None
    report = run(args.project.resolve(), args.seconds, args.peer_seeds, quick)
    print(json.dumps(report, indent=2))
    low, high = report["dice_ratio_range"]
    models = f" (median of {len(report['quick']['runs'])} models)" if "runs" in report["quick"] else ""
    print(f"slice Dice: quick {report['quick']['test_slice_dice']:.3f}{models} vs peer "
          f"{report['peer']['test_slice_dice']:.3f} "
          f"(median of {len(report['peer']['runs'])} runs) after {report['budget_seconds']:.0f} s each: ratio "
          f"{report['dice_ratio_quick_over_peer']:.2f} ({low:.2f}–{high:.2f} over the peer runs)")
    check = report["budget_check"]
    if check["busy_during_training"]:
        print(f"WARNING: the quick model's training kept {check['training_cpu_per_wall']:.2f} CPU seconds busy per "
              f"wall second, the peer {check['peer_cpu_per_wall']:.2f}: the machine was busy while the model trained, "
              "so the peer's budget is too long. Measure both side by side: python -m bench --only pipeline peer")


if __name__ == "__main__":
    main()
