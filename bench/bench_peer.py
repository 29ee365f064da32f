"""An equal-time peer: what a user would write in an afternoon, trained for as long as SliceWise's quick model.

Usage: .venv/bin/python -m bench.bench_peer [--project DIR] [--seconds S]

The peer is MONAI's `BasicUNet` with its default widths, Adam at 1e-3 and MONAI's `DiceCELoss`, trained on the same
BraTS training slices (shuffled, no augmentation, no schedule) for the wall-clock seconds the quick profile's three
training stages took (their per-epoch `seconds` in reports/training/*.csv). Both models are then scored by the
evaluation's own code on the same test slices: mean Dice over the test slices with tumour (what metrics.json calls
`segmentation.dice`). The ratio is quick model / peer. Run it in a project whose pipeline has run (`make run`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 16


class SegmentationOnly(nn.Module):
    """A plain segmentation network in the predictor's two-head shape (its tumour score: the largest pixel logit)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        seg = self.net(x)
        return {"seg": seg, "cls": seg.amax(dim=(1, 2, 3))}


def training_seconds(history_dir: Path) -> float:
    """Wall-clock seconds of the quick model's three training stages, from their per-epoch histories."""
    return float(sum(pd.read_csv(history_dir / f"{stage}.csv")["seconds"].sum() for stage in ("seg", "cls", "joint")))


def train_peer(images: Tensor, masks: Tensor, seconds: float, seed: int) -> tuple[nn.Module, dict]:
    """BasicUNet trained on (images, masks) until `seconds` have passed (checked after every step)."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=images.shape[1], out_channels=1)
    optimizer, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), DiceCELoss(sigmoid=True)
    generator = torch.Generator().manual_seed(seed)
    steps, started = 0, time.perf_counter()
    net.train()
    while time.perf_counter() - started < seconds:
        for batch in torch.randperm(len(images), generator=generator).split(BATCH_SIZE):
            loss = loss_fn(net(images[batch].float()), masks[batch][:, None].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - started >= seconds:
                break
    elapsed = time.perf_counter() - started
    return net.eval(), {"steps": steps, "epochs": round(steps * BATCH_SIZE / len(images), 2),
                        "seconds": round(elapsed, 1), "parameters": sum(p.numel() for p in net.parameters())}


def mean_test_slice_dice(model: nn.Module, processed: Path, splits: Path) -> float:
    """Mean Dice over the BraTS test slices with tumour, exactly as `evaluate` computes it."""
    from tasks.data.splits import read_split, split_rows
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import TorchPredictor

    rows = split_rows(processed, read_split("test", splits))
    rows = rows[rows["source"] == "brats"].reset_index(drop=True)
    scores = predict_split(TorchPredictor(model), processed, rows, segmentation=True, description="scoring").slice_scores
    return float(scores["dice"].mean())


def run(project: Path = REPO, seconds: float | None = None) -> dict:
    from tasks.config import load_settings
    from tasks.data.datasets import load_slices
    from tasks.data.splits import read_split
    from tasks.inference.checkpoints import load_model

    previous = Path.cwd()
    os.chdir(project)
    try:
        settings = load_settings("params.yaml")
        processed, splits = Path("data/processed"), Path("data/splits")
        budget = seconds if seconds is not None else training_seconds(Path("reports/training"))
        train = load_slices(processed, read_split("train", splits), ("brats",))
        peer, peer_run = train_peer(train.images, train.masks, budget, settings.seed)
        quick, _ = load_model(Path("checkpoints/joint/best.pt"))
        quick_dice = mean_test_slice_dice(quick, processed, splits)
        peer_dice = mean_test_slice_dice(SegmentationOnly(peer), processed, splits)
    finally:
        os.chdir(previous)
    from bench.bench_seeds import cpu_description

    return {"cpu": cpu_description(), "budget_seconds": round(budget, 1), "peer": {"model": "monai BasicUNet (defaults)", **peer_run,
                                                         "test_slice_dice": round(peer_dice, 4)},
            "quick": {"parameters": sum(p.numel() for p in quick.parameters()),
                      "test_slice_dice": round(quick_dice, 4)},
            "dice_ratio_quick_over_peer": round(quick_dice / peer_dice, 3) if peer_dice > 0 else float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO, help="a project whose pipeline has run")
    parser.add_argument("--seconds", type=float, help="training budget (default: the quick model's training time)")
    args = parser.parse_args()
    report = run(args.project.resolve(), args.seconds)
    print(json.dumps(report, indent=2))
    print(f"slice Dice: quick {report['quick']['test_slice_dice']:.3f} vs peer {report['peer']['test_slice_dice']:.3f} "
          f"after {report['budget_seconds']:.0f} s each: ratio {report['dice_ratio_quick_over_peer']:.2f}")


if __name__ == "__main__":
    main()
