"""Tiny real inputs for the release steps (export, register): a project folder with processed data, a joint
checkpoint of a seeded tiny MultitaskUNet and a reports/metrics.json with chosen scores."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from models.unet import MultitaskUNet
from tasks import paths
from tasks.config import Settings
from tasks.inference.checkpoints import model_config_for, save_checkpoint
from tasks.io import sha256_file

from tests.conftest import make_tiny_processed


def write_metrics(root: Path, accuracy: float, sensitivity: float, threshold: float = 0.5, dice: float = 0.81,
                  volume_dice: float = 0.86) -> Path:
    """reports/metrics.json in the contract's shape with the given headline scores, about the joint checkpoint
    under `root` when there is one."""
    n = 40
    tp = round(sensitivity * 20)
    tn = round(accuracy * n) - tp
    report = {
        "classification": {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": tn / 20,
                           "precision": 0.9, "f1": 0.9, "roc_auc": 0.95, "pr_auc": 0.94, "threshold": threshold,
                           "confusion_matrix": [[tn, 20 - tn], [20 - tp, tp]], "n": n},
        "segmentation": {"dice": dice, "iou": 0.6, "hd95": 4.2, "n_slices": 12},
        "segmentation_volume": {"dice": volume_dice, "hd95": 5.0, "n_patients": 1},
        "ci95": {"classification.accuracy": [accuracy - 0.05, min(accuracy + 0.05, 1.0)],
                 "classification.sensitivity": [sensitivity - 0.1, min(sensitivity + 0.1, 1.0)],
                 "segmentation.dice": [dice - 0.1, min(dice + 0.1, 1.0)],
                 "segmentation_volume.dice": [volume_dice - 0.05, min(volume_dice + 0.05, 1.0)],
                 "classification_by_source.brats.accuracy": [accuracy - 0.05, min(accuracy + 0.05, 1.0)],
                 "classification_by_source.kaggle.accuracy": [0.55, 0.95]},
        # the photos alone, as evaluate writes them: a handful of the inputs, with a wide interval
        "classification_by_source": {
            "brats": {"n": 32, "positives": 16, "accuracy": accuracy, "sensitivity": sensitivity, "specificity": 0.9},
            "kaggle": {"n": 8, "positives": 4, "accuracy": 0.75, "sensitivity": 0.75, "specificity": 0.75}},
    }
    checkpoint = root / paths.best_checkpoint("joint")
    if checkpoint.exists():  # the weights evaluated, as the evaluate step records them (register checks it)
        report["model"] = {"checkpoint_sha256": sha256_file(checkpoint)}
    path = root / paths.METRICS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def write_checkpoint(root: Path, settings: Settings, seed: int = 0, cls_bias: float | None = None) -> Path:
    """checkpoints/joint/best.pt of a seeded untrained model sized like `settings` (optionally a fixed cls bias)."""
    torch.manual_seed(seed)
    cfg = model_config_for(settings)
    model = MultitaskUNet(cfg)
    if cls_bias is not None:
        with torch.no_grad():
            model.cls_head.mlp[-1].bias.fill_(cls_bias)
    return save_checkpoint(root / paths.best_checkpoint("joint"), model=model, optimizer=None, model_config=cfg,
                           epoch=1, best_metric=0.5, metric_name="val_score", params={}, stage="joint")


def make_release_project(root: Path, settings: Settings, accuracy: float = 0.9, sensitivity: float = 0.9,
                         seed: int = 0) -> Path:
    """Processed data + splits, a joint checkpoint and metrics.json under `root` (the project root for a test)."""
    make_tiny_processed(root, n_patients=3, slices=4, kaggle_per_class=4, size=settings.active.image_size,
                        channels=len(settings.slice.modalities))
    write_checkpoint(root, settings, seed)
    write_metrics(root, accuracy, sensitivity)
    return root


@functools.lru_cache(maxsize=None)
def _empty_store_template() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="slicewise-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()  # creates the schema (seconds)
    return folder / "mlflow.db"


def fresh_mlflow_store(root: Path) -> Path:
    """An initialised, empty MLflow sqlite store at root/mlflow.db, the project's default location (a copy of a
    template: creating the schema takes several seconds, copying it none)."""
    return Path(shutil.copy(_empty_store_template(), root / "mlflow.db"))


def tracked(settings: Settings, model_name: str = "slicewise") -> Settings:
    """`settings` with tracking on and its own registered model name."""
    return settings.model_copy(update={
        "tracking": settings.tracking.model_copy(update={"enabled": True, "backoff_seconds": 0.05}),
        "registry": settings.registry.model_copy(update={"model_name": model_name}),
    })
