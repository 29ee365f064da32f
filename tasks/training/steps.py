"""The pieces of one training epoch: the training steps, the validation passes and their metrics, what a stage
follows. Where they run is tasks/training/device.py's; what each stage trains, and at which LR,
tasks/training/optimizer.py's.

Under `torchrun` (see tasks/training/distributed.py) every process draws the same global batch and its augmentation,
and reads and augments only its share; the loss is computed from sums that add up over the shares, so the averaged
gradient, and with it each optimizer step, is the one a single process takes on the whole batch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from models.unet import MultitaskUNet
from tasks.config import TrainSettings
from tasks.data.datasets import SliceSet
from tasks.data.loaders import batches_in_order
from tasks.data.regions import REGIONS
from tasks.errors import SliceWiseError
from tasks.training.device import autocast, batch_to_device, compiled, in_layout
from tasks.training.distributed import Ranks
from tasks.training.loss import StageLoss, region_targets
from tasks.training.optimizer import scheduled_lr_factor, set_train_mode


def moving_average_of_weights(decay: float) -> Callable:
    """torch's EMA update for the floating-point tensors; counters (batch norm's `num_batches_tracked`) are counts, not
    weights, and follow the model: torch's own update averaged them too, truncated to an integer at each step."""
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list[Tensor], current: list[Tensor], steps: Tensor) -> None:
        # AveragedModel hands over one device's tensors of one dtype at a time
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            average(averaged, current, steps)
        else:
            for counter, count in zip(averaged, current):
                counter.copy_(count)

    return update


@dataclass
class StageRunner:
    """A stage's model, optimizer and loss on one device: runs training epochs and validation passes.

    With several processes (`ranks`), training steps run through DDP, and validation runs on rank 0, whose metrics
    every process then takes.
    With `train.ema_decay` > 0 an exponential moving average of the weights (batch-norm statistics included) follows
    every optimizer step, and it is what validation scores and what the stage hands on (`handed_on`): the average of
    the last ~1 / (1 - decay) steps' weights rather than wherever the last step happened to land (Polyak averaging).
    Every DDP process holds the same weights after a step, so each keeps the same average.
    """

    model: MultitaskUNet
    optimizer: torch.optim.Optimizer
    loss_fn: StageLoss
    stage: str
    train_cfg: TrainSettings
    device: torch.device
    ranks: Ranks = Ranks()
    module: nn.Module = field(init=False)  # runs validation: the model, or its torch.compile'd version
    trainer: nn.Module = field(init=False)  # runs training steps: the same, wrapped in DDP across processes
    ema: AveragedModel | None = field(init=False)  # the moving average of the weights, with train.ema_decay > 0
    # Steps whose losses are read back together: each read waits for the GPU to finish every step queued before it,
    # so one per step left the GPU idle while the CPU queued the next. Divergence is still caught at its own step.
    read_losses_every: int = 16

    def __post_init__(self):
        self.module = compiled(self.model, self.device, self.train_cfg)
        # torch.compile over DDP (not the reverse) lets the compiler split its graphs at DDP's gradient buckets.
        self.trainer = self.module if self.ranks.world == 1 else \
            compiled(self.ranks.wrap(self.model, self.device), self.device, self.train_cfg)
        decay = self.train_cfg.ema_decay
        self.ema = AveragedModel(self.model, multi_avg_fn=moving_average_of_weights(decay), use_buffers=True) \
            if decay > 0 else None

    @property
    def handed_on(self) -> nn.Module:
        """The weights validation scores and best.pt keeps: the moving average, or the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, loader: DataLoader, epoch: int, epochs: int, on_batch: Callable[[float], None]) -> float:
        """One pass over the training data (augmented by the loader: loaders.training_loader); returns the mean
        training loss."""
        set_train_mode(self.model, self.stage)
        total, count = 0.0, 0
        unread: list[tuple[int, Tensor, int]] = []  # (step, loss, samples) of the steps whose loss is not read yet
        for i, batch in enumerate(loader):
            factor = scheduled_lr_factor((epoch - 1 + i / len(loader)) / epochs, self.train_cfg.lr_schedule,
                                         self.train_cfg.warmup_epochs / epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            # The loader gave this process its share of the global batch, augmented (modality dropout included)
            # as a single process's would be (training_loader's `part`).
            batch = batch_to_device(batch, self.device)
            if (pending := batch.pop("augment", None)) is not None:  # read only: augment here, with its own draws
                batch["image"], batch["mask"] = pending.apply(batch["image"], batch["mask"])
            size = len(batch["label"])
            with autocast(self.device, self.train_cfg):
                out = self.trainer(in_layout(batch["image"], self.train_cfg.channels_last), heads=self.loss_fn.heads)
            # The global batch's loss in every process: DDP's average of their gradients is the whole batch's.
            loss = self.loss_fn.from_sums(self.ranks.sum(self.loss_fn.sums(out, batch)))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            unread.append((i, loss.detach(), size))
            if len(unread) == self.read_losses_every:
                total, count = self._read_losses(unread, total, count, epoch, len(loader), on_batch)
        total, count = self._read_losses(unread, total, count, epoch, len(loader), on_batch)
        # A step's loss is computed before its update: the last update of the epoch is checked on the weights, which
        # every DDP process holds alike, before validation and last.pt see them.
        state = [t for t in itertools.chain(self.model.parameters(), self.model.buffers()) if t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in state):  # weights and batch-norm statistics, as saved
            self._diverged(f"the weights became non-finite in the last step of epoch {epoch}")
        return total / max(count, 1)

    def _read_losses(self, unread: list[tuple[int, Tensor, int]], total: float, count: int, epoch: int, steps: int,
                     on_batch: Callable[[float], None]) -> tuple[float, int]:
        """The running loss sum and sample count with the `unread` steps' losses added (one device sync for them
        all), each passed to `on_batch` in order; a non-finite one stops the stage, naming its step. The global
        batch's loss: every DDP process reads the same steps and stops at the same one."""
        values = torch.stack([loss for _, loss, _ in unread]).tolist() if unread else []
        for (i, _, size), value in zip(unread, values):
            if not math.isfinite(value):
                self._diverged(f"the training loss became {value} at epoch {epoch}, step {i + 1} of {steps}")
            total, count = total + value * size, count + size
            on_batch(value)
        unread.clear()
        return total, count

    def _diverged(self, what: str) -> None:
        raise SliceWiseError(
            f"train_{self.stage}: {what}: the weights diverged. Nothing of this epoch is saved (last.pt and best.pt "
            f"are still those of the epochs before it, if any); lower train_{self.stage}'s learning rate or lengthen "
            "train.warmup_epochs, then run the stage again")

    @property
    def _validated(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.module

    def evaluate(self, data: SliceSet) -> dict[str, float]:
        row = (evaluate(self._validated, data, self.loss_fn, self.train_cfg, self.device) if self.ranks.is_main
               else None)
        return self.ranks.from_main(row)

    def evaluate_flair_only(self, data: SliceSet) -> dict[str, float]:
        row = flair_only_dice(self._validated, data, self.train_cfg, self.device) if self.ranks.is_main else None
        return self.ranks.from_main(row)


@torch.no_grad()
def evaluate(module: nn.Module, data: SliceSet, loss_fn: StageLoss, train_cfg: TrainSettings,
             device: torch.device) -> dict[str, float]:
    """Validation loss and metrics of the heads this stage trains (no augmentation, eval mode).

    Everything is summed where it is computed and read back once, after the last batch: a read per batch (a loss,
    the areas, the probabilities) waited for the GPU each time, so it idled while the next batch was read."""
    module.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)  # the loss summed over the samples
    probabilities, areas = [], None  # areas: (3, R) overlap, predicted and true area per region
    for batch in _validation_batches(data, train_cfg, device):
        with autocast(device, train_cfg):
            out = module(in_layout(batch["image"], train_cfg.channels_last), heads=loss_fn.heads)
        total += loss_fn(out, batch).double() * len(batch["label"])
        if "seg" in out:
            areas = _add(areas, _region_areas(out["seg"], batch))
        if "cls" in out:
            probabilities.append(torch.sigmoid(out["cls"].float()))
    row = {"val_loss": total.item() / len(data)}
    if "seg" in loss_fn.heads:
        row.update(_region_dice(areas))
    if "cls" in loss_fn.heads:
        row.update(_classification_metrics(torch.cat(probabilities).cpu().numpy(), data.labels.numpy()))
    if loss_fn.heads == ("seg", "cls"):
        row["val_dice_accuracy_mean"] = (row["val_dice"] + row["val_accuracy"]) / 2
    return row


FLAIR_ONLY = "_flair_only"  # the suffix of the history's FLAIR-only figures, filled on a stage's last epoch


@torch.no_grad()
def flair_only_dice(module: nn.Module, data: SliceSet, train_cfg: TrainSettings,
                    device: torch.device) -> dict[str, float]:
    """The segmentation scored on the FLAIR channel alone, the others zero as serving fills missing modalities:
    `val_dice*_flair_only`, what a single-channel input costs. A second pass over the validation set, so a stage
    runs it once, after its last epoch (tasks/training/stage.py), not every epoch; {} with one input channel."""
    if data.image_shape[0] < 2:
        return {}
    module.eval()
    areas = None
    for batch in _validation_batches(data, train_cfg, device):
        flair = batch["image"] * (torch.arange(batch["image"].shape[1], device=device) == 0).view(1, -1, 1, 1)
        with autocast(device, train_cfg):
            out = module(in_layout(flair, train_cfg.channels_last), heads=("seg",))
        areas = _add(areas, _region_areas(out["seg"], batch))
    if areas is None:  # no validation batch
        return {}
    return {f"{k}{FLAIR_ONLY}": v for k, v in _region_dice(areas).items()}


def _validation_batches(data: SliceSet, train_cfg: TrainSettings, device: torch.device):
    """The validation set in order, read whole batches at a time by the training's loader workers
    (`train.num_workers`; page-locked on CUDA), float16 until after the copy."""
    on_cuda = device.type == "cuda"
    loader = batches_in_order(data, train_cfg.batch_size * 2, train_cfg.num_workers,
                              pin_memory=train_cfg.pin_memory and on_cuda)
    for batch in loader:
        batch = batch_to_device(batch, device)
        yield {**batch, "image": batch["image"].float(), "mask": batch["mask"].float()}


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total + part


def _region_areas(seg_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """(3, R) float64 on the batch's device: overlap, predicted and true area of each region over the batch's
    masked slices. Weighted, not indexed: indexing by `has_mask` would wait for the GPU to say how many there are.
    The sums count pixels, exact in float32 either way."""
    known = batch["has_mask"].view(-1, 1, 1, 1).float()
    pred = (seg_logits > 0).float() * known
    truth = region_targets(batch["mask"], pred.shape[1]) * known
    dims = (0, 2, 3)
    return torch.stack([(pred * truth).sum(dim=dims), pred.sum(dim=dims), truth.sum(dim=dims)]).double()


def _region_dice(areas: Tensor | None) -> dict[str, float]:
    """Pooled Dice per region: `val_dice` is the whole tumour (what early stopping, best.pt, the floors and earlier
    runs compare), `val_dice_tc` and `val_dice_et` the nested regions. Nothing predicted and nothing true: 1."""
    if areas is None:  # no validation batch
        return {"val_dice": 1.0}
    row = {}
    for name, (overlap, predicted, actual) in zip(REGIONS, areas.T.tolist()):
        dice = 2 * overlap / (predicted + actual) if predicted + actual else 1.0
        row["val_dice" if name == "wt" else f"val_dice_{name}"] = dice
    return row


def _classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    both_classes = len(np.unique(labels)) == 2
    return {
        "val_accuracy": float(((probabilities > 0.5) == labels).mean()),
        "val_roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else math.nan,
    }


# The validation number each stage's early stopping and best.pt follow.
FOLLOWED_METRIC = {"seg": "val_dice", "cls": "val_roc_auc", "joint": "val_dice_accuracy_mean"}


def followed_metric(stage: str, row: dict[str, float]) -> str:
    """Which of a validation row's numbers the stage follows: its own (FOLLOWED_METRIC), except ROC-AUC, undefined on
    a one-class validation set, where `cls` follows accuracy; the logs and the progress bar name this one."""
    name = FOLLOWED_METRIC[stage]
    return "val_accuracy" if name == "val_roc_auc" and math.isnan(row[name]) else name


def metric_of(stage: str, row: dict[str, float]) -> float:
    """The number early stopping and best.pt follow (`followed_metric`'s)."""
    return row[followed_metric(stage, row)]
