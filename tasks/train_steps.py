"""The pieces of one training epoch: device, which parameters each stage trains, losses, validation metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader

from models.unet import MultitaskUNet
from tasks.augment import augment_batch
from tasks.datasets import SliceSet, collate_slices
from tasks.config import TrainSettings
from tasks.errors import SliceWiseError

STAGE_HEADS = {"seg": ("seg",), "cls": ("cls",), "joint": ("seg", "cls")}


def pick_device(choice: str) -> torch.device:
    """`auto` → cuda, then mps, then cpu; an explicit choice that this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if choice == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[choice]:
        raise SliceWiseError(f"train.device is {choice!r} but no {choice} device is available (use auto or cpu)")
    return torch.device(choice)


def place_model(model: MultitaskUNet, device: torch.device, train_cfg) -> MultitaskUNet:
    model = model.to(device)
    # NHWC helps oneDNN's CPU convolutions as much as CUDA's tensor cores.
    if train_cfg.channels_last and device.type in ("cuda", "cpu"):
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(model: MultitaskUNet, device: torch.device, train_cfg) -> nn.Module:
    """The module that runs the steps: torch.compile'd on CUDA when asked, else the model itself."""
    return torch.compile(model) if train_cfg.compile and device.type == "cuda" else model


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16); emulated bf16 would be slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast(device: torch.device, train_cfg):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (about 1.7x faster steps there)."""
    enabled = train_cfg.amp_bf16 and (device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def make_optimizer(model: MultitaskUNet, stage: str, params) -> torch.optim.Optimizer:
    """AdamW over what the stage trains; cls freezes encoder and decoder, joint gives the encoder a lower LR."""
    if stage == "seg":
        groups = [{"params": [*model.encoder.parameters(), *model.seg_decoder.parameters()], "base_lr": params.lr}]
    elif stage == "cls":
        model.encoder.requires_grad_(False)
        model.seg_decoder.requires_grad_(False)
        groups = [{"params": list(model.cls_head.parameters()), "base_lr": params.lr}]
    else:
        groups = [
            {"params": list(model.encoder.parameters()), "base_lr": params.encoder_lr},
            {"params": [*model.seg_decoder.parameters(), *model.cls_head.parameters()], "base_lr": params.head_lr},
        ]
    for group in groups:  # "base_lr" stays in the optimizer's state; "lr" follows the schedule
        group["lr"] = group["base_lr"]
    return torch.optim.AdamW(groups, weight_decay=params.weight_decay)


def set_train_mode(model: MultitaskUNet, stage: str) -> None:
    """cls keeps the frozen parts in eval mode, so no normalisation statistic of theirs moves either."""
    model.train(stage != "cls")
    model.cls_head.train()


class StageLoss:
    """seg: Dice + BCE on the pixels; cls: BCE on the labels; joint: L_seg (masked samples only) + λ·L_cls."""

    def __init__(self, stage: str, params):
        self.heads = STAGE_HEADS[stage]
        self.cls_weight = getattr(params, "cls_weight", 1.0)
        # batch=True pools Dice over the batch: slices without tumour do not each add an ill-defined Dice term.
        self.seg_loss = DiceCELoss(sigmoid=True, batch=True)
        self.cls_loss = nn.BCEWithLogitsLoss()

    def __call__(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        loss = torch.zeros((), device=batch["image"].device)
        has_mask = batch["has_mask"]
        if "seg" in out and has_mask.any():  # a batch of Kaggle images only has no segmentation term
            loss = loss + self.seg_loss(out["seg"][has_mask].float(), batch["mask"][has_mask])
        if "cls" in out:
            loss = loss + self.cls_weight * self.cls_loss(out["cls"].float(), batch["label"])
        return loss


def _to_device(batch: dict[str, Tensor], device: torch.device, channels_last: bool) -> dict[str, Tensor]:
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


def scheduled_lr_factor(progress: float, schedule: str) -> float:
    """Cosine decay from 1 to 5 % over the stage's planned epochs (a function of progress only, so a resumed
    run follows the same curve), or constant."""
    if schedule == "constant":
        return 1.0
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class StageRunner:
    """A stage's model, optimizer and loss on one device: runs training epochs and validation passes."""

    model: MultitaskUNet
    optimizer: torch.optim.Optimizer
    loss_fn: StageLoss
    stage: str
    train_cfg: TrainSettings
    device: torch.device
    generator: torch.Generator  # shuffling and augmentation
    module: nn.Module = field(init=False)  # what runs the steps: the model, or its torch.compile'd version

    def __post_init__(self):
        self.module = compiled(self.model, self.device, self.train_cfg)

    def train_epoch(self, loader: DataLoader, epoch: int, epochs: int, on_batch: Callable[[float], None]) -> float:
        """One pass over the training data with augmentation; returns the mean training loss."""
        set_train_mode(self.model, self.stage)
        total, count = 0.0, 0
        for i, batch in enumerate(loader):
            factor = scheduled_lr_factor((epoch - 1 + i / len(loader)) / epochs, self.train_cfg.lr_schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            batch = _to_device(batch, self.device, self.train_cfg.channels_last)
            batch["image"], batch["mask"] = augment_batch(batch["image"], batch["mask"], self.train_cfg.augment,
                                                          self.generator)
            with autocast(self.device, self.train_cfg):
                out = self.module(batch["image"], heads=self.loss_fn.heads)
            loss = self.loss_fn(out, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, count = total + loss.item() * len(batch["label"]), count + len(batch["label"])
            on_batch(loss.item())
        return total / max(count, 1)

    def evaluate(self, data: SliceSet) -> dict[str, float]:
        return evaluate(self.module, data, self.loss_fn, self.train_cfg, self.device)


@torch.no_grad()
def evaluate(module: nn.Module, data: SliceSet, loss_fn: StageLoss, train_cfg: TrainSettings,
             device: torch.device) -> dict[str, float]:
    """Validation loss and metrics of the heads this stage trains (no augmentation, eval mode)."""
    module.eval()
    loader = DataLoader(data, batch_size=train_cfg.batch_size * 2, shuffle=False, collate_fn=collate_slices)
    total, overlap, predicted, actual, probabilities = 0.0, 0.0, 0.0, 0.0, []
    for batch in loader:
        batch = _to_device(batch, device, train_cfg.channels_last)
        with autocast(device, train_cfg):
            out = module(batch["image"], heads=loss_fn.heads)
        total += loss_fn(out, batch).item() * len(batch["label"])
        if "seg" in out:
            pred = (out["seg"][batch["has_mask"]] > 0).float()
            truth = batch["mask"][batch["has_mask"]]
            overlap, predicted, actual = overlap + (pred * truth).sum().item(), predicted + pred.sum().item(), actual + truth.sum().item()
        if "cls" in out:
            probabilities.append(torch.sigmoid(out["cls"].float()).cpu())
    row = {"val_loss": total / len(data)}
    if "seg" in loss_fn.heads:
        row["val_dice"] = 2 * overlap / (predicted + actual) if predicted + actual else 1.0
    if "cls" in loss_fn.heads:
        row.update(_classification_metrics(torch.cat(probabilities).numpy(), data.labels.numpy()))
    if loss_fn.heads == ("seg", "cls"):
        row["val_dice_accuracy_mean"] = (row["val_dice"] + row["val_accuracy"]) / 2
    return row


def _classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    both_classes = len(np.unique(labels)) == 2
    return {
        "val_accuracy": float(((probabilities > 0.5) == labels).mean()),
        "val_roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else math.nan,
    }


def metric_of(stage: str, row: dict[str, float]) -> float:
    """The number early stopping and best.pt follow (ROC-AUC is undefined on a one-class val set: accuracy)."""
    if stage == "seg":
        return row["val_dice"]
    if stage == "cls":
        return row["val_accuracy"] if math.isnan(row["val_roc_auc"]) else row["val_roc_auc"]
    return row["val_dice_accuracy_mean"]
