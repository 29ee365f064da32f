"""The three training stages of the multitask U-Net, each run by its step (tasks/train_seg.py, train_cls.py,
train_joint.py) through `run_stage`.

    seg    segmentation warm-up on BraTS slices, Dice + BCE loss over the
           regions WT, TC, ET (tasks/training/loss.py)                     metric: val Dice (whole tumour)
    cls    encoder and decoder frozen (from seg best), classification head
           on Kaggle images + BraTS slice labels, BCE loss                 metric: val ROC-AUC (accuracy if undefined)
    joint  everything trainable (from cls best), L = L_seg + λ·L_cls with
           L_seg on the samples that have a mask; encoder LR < heads' LR   metric: mean of val Dice and val accuracy
Val Dice is the whole tumour's (WT: floors and earlier runs stay comparable; TC and ET are logged beside it, and
after the stage's last epoch the FLAIR-alone figures, a second validation pass), pooled over all validation slices
(2·Σ|P∩T| / (Σ|P| + Σ|T|)), so empty slices neither divide by zero nor dominate; accuracy uses the 0.5 probability
threshold (evaluation tunes the threshold later).

Each epoch writes checkpoints/<stage>/last.pt (model, optimizer, epoch, best metric, history, RNG states,
params) and, when the metric improves, best.pt. Started again, a stage resumes from last.pt when the run
key matches (params that change what is learned, the data, the starting checkpoint), else starts fresh.
Early stopping after `train.patience` epochs without improvement.

Launched by `torchrun --nproc_per_node=N -m tasks train_<stage>`, a stage trains as N DDP processes that take the
same steps as one process would (tasks/training/distributed.py); rank 0 alone writes files and talks to the
tracker.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.unet import MultitaskUNet, UNetConfig
from tasks import paths
from tasks.config import ClsStageSettings, JointStageSettings, SegStageSettings, Settings, TrainSettings
from tasks.data.datasets import ShardSlices, data_fingerprint, stage_data
from tasks.data.loaders import training_loader
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import (architecture_digest, load_checkpoint, load_weights, model_config_for,
                                         model_config_of, save_checkpoint, weights_digest)
from tasks.io import atomic_write, code_identity, sha256_file, usable_cores
from tasks.tracking.provenance import flatten
from tasks.tracking.tracker import NullTracker, Tracker, tracked_step
from tasks.training.distributed import Ranks, launched_rank, training_processes
from tasks.training.steps import (FOLLOWED_METRIC, StageLoss, StageRunner, augments_on_device, followed_metric,
                                  make_optimizer, metric_of, pick_device, place_model)

log = logging.getLogger(__name__)

PREVIOUS_STAGE = {"seg": None, "cls": "seg", "joint": "cls"}
# Settings that change speed, not what is learned: a run may resume with different values (augment_on moves the same
# draws to another device). dvc.yaml's training stages list the other train keys, and patience (it decides which
# epoch best.pt is from).
RUNTIME_ONLY = ("patience", "min_epochs", "floor_margin", "device", "amp_bf16", "channels_last", "compile",
                "pin_memory", "num_workers", "threads", "cache_mb", "augment_on")
# Each stage's "nothing learned" value: a stage whose best validation value stays within train.floor_margin of it
# is reported as stuck (a seg head predicting no tumour anywhere has val Dice 0; a guessing classifier ROC-AUC 0.5).
FLOORS = {"seg": ("val_dice", 0.0), "cls": ("val_roc_auc", 0.5), "joint": ("val_dice", 0.0)}
# The history columns that time an epoch rather than measure what it learned.
TIMINGS = ("seconds", "cpu_seconds")


@dataclass(frozen=True)
class StagePlan:
    """Everything one stage needs, already resolved from settings and paths."""

    stage: str
    epochs: int
    seed: int
    train: TrainSettings
    stage_params: SegStageSettings | ClsStageSettings | JointStageSettings
    model: UNetConfig
    processed: Path
    splits_dir: Path
    checkpoint_dir: Path
    history_path: Path
    init_checkpoint: Path | None  # the previous stage's best.pt

    def params(self) -> dict:
        return {
            "stage": self.stage,
            "seed": self.seed,
            "epochs": self.epochs,
            "train": self.train.model_dump(mode="json"),
            f"train_{self.stage}": self.stage_params.model_dump(mode="json"),
            "model": asdict(self.model),
        }

    def run_key(self, data: str) -> dict:
        """What must match for last.pt to be resumed: params minus runtime switches, data, start, the training code.

        The planned epochs count unless the learning rate does not depend on them: under the cosine schedule it
        does, and so does the warm-up's last bit of rounding (a fraction of the planned epochs); with a constant
        schedule and no warm-up, more epochs continue a finished run exactly as a fresh run would go. `data`: the
        processed data's fingerprint (datasets.data_fingerprint). train_stage adds the model's architecture."""
        key = self.params()
        if self.train.lr_schedule == "constant" and self.train.warmup_epochs == 0:
            key.pop("epochs")
        key["train"] = {k: v for k, v in key["train"].items() if k not in RUNTIME_ONLY}
        key["data"] = data
        key["init"] = _file_digest(self.init_checkpoint) if self.init_checkpoint else None
        key["code"] = training_code_digest()
        return key


@dataclass
class StageState:
    """The resumable part of a run besides model and optimizer."""

    epoch: int = 0
    best_metric: float = -math.inf
    epochs_since_best: int = 0
    history: list[dict] = field(default_factory=list)
    ema_state: dict | None = None  # the moving average of the weights (train.ema_decay > 0), as last.pt saved it

    def record(self, row: dict, metric: float) -> bool:
        """Add an epoch's metrics; whether its metric beat the best so far."""
        self.epoch = row["epoch"]
        self.history.append(row)
        improved = metric > self.best_metric + 1e-6
        if improved:  # best_metric stays what best.pt scored: gains under the tolerance must not ratchet it up
            self.best_metric = metric
        self.epochs_since_best = 0 if improved else self.epochs_since_best + 1
        return improved


# The modules whose code decides what a stage learns (dvc.yaml lists them as the stages' deps): DVC reruns a stage
# when one changes, and then last.pt is another code's run, which must not be resumed (it would train no epoch).
TRAINING_CODE = ("models.unet", "tasks.data.datasets", "tasks.data.batch_sampling", "tasks.data.loaders",
                 "tasks.data.augment", "tasks.data.modality_dropout", "tasks.data.regions", "tasks.data.shards",
                 "tasks.data.splits", "tasks.inference.checkpoints", "tasks.training.distributed",
                 "tasks.training.loss", "tasks.training.steps", "tasks.training.stage")


def training_code_digest() -> str:
    """The training code's identity (tasks/io.code_identity: comments and docstrings do not count)."""
    code = b"".join(code_identity(Path(importlib.import_module(name).__file__)) for name in TRAINING_CODE)
    return hashlib.sha256(code).hexdigest()[:16]


def plan_stage(settings: Settings, stage: str) -> StagePlan:
    previous = PREVIOUS_STAGE[stage]
    return StagePlan(
        stage=stage,
        epochs=getattr(settings.active.epochs, stage),
        seed=settings.seed,
        train=settings.train,
        stage_params=getattr(settings, f"train_{stage}"),
        model=model_config_for(settings),
        processed=paths.PROCESSED,
        splits_dir=paths.SPLITS,
        checkpoint_dir=paths.checkpoint_dir(stage),
        history_path=paths.history_file(stage),
        init_checkpoint=paths.best_checkpoint(previous) if previous else None,
    )


def train_stage(plan: StagePlan, tracker: Tracker = NullTracker()) -> dict:
    """Train one stage (resuming when possible); returns best metric, epochs run, seconds and a weights digest.

    Under torchrun this process is one of several (DDP); otherwise it trains alone."""
    with training_processes(pick_device(plan.train.device)) as (ranks, device):
        return _train(plan, tracker if ranks.is_main else NullTracker(), ranks, device)


def _train(plan: StagePlan, tracker: Tracker, ranks: Ranks, device: torch.device) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(plan.train.threads or max(1, usable_cores() // ranks.local_world))
    torch.manual_seed(plan.seed)
    # Each loader process has its own reader, and they share the cache budget: the main one, the training loader's
    # workers (kept across epochs) and, during a validation pass, as many validation workers (steps.py).
    cache_bytes = plan.train.cache_mb * 2**20 // ((2 * plan.train.num_workers + 1) * ranks.local_world)
    train_set, val_set = stage_data(plan.stage, plan.processed, plan.splits_dir, plan.stage_params, plan.seed,
                                    cache_bytes)
    _check_shapes(plan, train_set)
    ranks.check_batch(plan.train.batch_size, len(train_set))

    data = data_fingerprint(plan.processed, plan.splits_dir)  # hashed once: the resume key and the start check
    model = place_model(_initial_model(plan, data), device, plan.train)
    optimizer = make_optimizer(model, plan.stage, plan.stage_params)
    generator = torch.Generator().manual_seed(plan.seed)
    run_key = {**plan.run_key(data), "architecture": architecture_digest(model)}
    state = _resume(plan, run_key, model, optimizer, generator)
    if state.epoch == 0:
        # Starting fresh: dvc.yaml keeps best.pt between runs (persist) so that a killed run can resume, so a best.pt
        # of an earlier run must go now, or an epoch-1 metric that never improves (NaN) would leave it as this run's.
        (plan.checkpoint_dir / "best.pt").unlink(missing_ok=True)
    first_epoch = state.epoch + 1
    tracker.log_params(flatten(plan.params()))

    # Wrapping in DDP (inside StageRunner) waits for every process: none writes last.pt before all have read it.
    steps = StageRunner(model, optimizer, StageLoss(plan.stage, plan.stage_params), plan.stage, plan.train, device,
                        ranks)
    if steps.ema is not None and state.ema_state is not None:
        steps.ema.load_state_dict(state.ema_state)
    loader = training_loader(train_set, plan.train.batch_size, generator, plan.train.num_workers,
                             getattr(plan.stage_params, "kaggle_share", None),
                             getattr(plan.stage_params, "foreground_share", 0.0),
                             pin_memory=plan.train.pin_memory and device.type == "cuda", augment=plan.train.augment,
                             part=ranks.part, augment_on_device=augments_on_device(plan.train, device),
                             crop=crop_side(plan, train_set.image_shape[1:]))
    metric_name = FOLLOWED_METRIC[plan.stage]  # until a validation row says which one it is (followed_metric)
    with _progress(visible=ranks.is_main) as progress:
        bar = progress.add_task(f"train_{plan.stage}", total=max(plan.epochs - state.epoch, 0) * len(loader),
                                loss=math.nan, metric=f"{metric_name} -")
        for epoch in range(first_epoch, plan.epochs + 1):
            if _stops_early(plan, state):
                log.info("train_%s: early stop after epoch %d (no improvement for %d epochs)", plan.stage,
                         state.epoch, state.epochs_since_best)
                break
            epoch_started, epoch_cpu_started = time.perf_counter(), time.process_time()
            # Dropout noise: seeded per epoch and process, so a resumed run draws what an uninterrupted one would,
            # and the processes of a DDP run draw different masks for their different samples.
            torch.manual_seed(_noise_seed(plan.seed, epoch, ranks.rank))
            train_loss = steps.train_epoch(loader, epoch, plan.epochs,
                                           on_batch=lambda loss: progress.update(bar, advance=1, loss=loss))
            row = {"epoch": epoch, "train_loss": train_loss, **steps.evaluate(val_set)}
            metric_name, metric = followed_metric(plan.stage, row), metric_of(plan.stage, row)
            improved = state.record(row, metric)
            if "seg" in steps.loss_fn.heads and (epoch == plan.epochs or _stops_early(plan, state)):
                row.update(steps.evaluate_flair_only(val_set))  # the stage's last epoch: what FLAIR alone costs
            row["seconds"] = round(time.perf_counter() - epoch_started, 2)  # with the validation passes
            # CPU seconds of this process, all its threads: against the wall seconds, what says whether the epoch had
            # the machine to itself (bench/bench_peer.py gives its peer these wall seconds). Loader workers not counted.
            row["cpu_seconds"] = round(time.process_time() - epoch_cpu_started, 2)
            if ranks.is_main:
                _save_epoch(plan, state, improved, steps, generator, run_key, metric_name)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            progress.update(bar, metric=f"{metric_name} {state.best_metric:.4f} (best)")
            if ranks.is_main:  # the bar is drawn on a terminal only; `make run > log` and CI logs get this line
                log.info("train_%s: epoch %d/%d, train loss %.4f, %s %.4f%s, %.1f s", plan.stage, epoch, plan.epochs,
                         train_loss, metric_name, metric, " (best)" if improved else "",
                         row["seconds"])
    if ranks.is_main:
        _write_history(plan.history_path, state.history)
    stuck = stuck_at_floor(plan.stage, state.history, plan.train.floor_margin)
    if stuck:
        log.error("train_%s: STUCK AT ITS FLOOR: %s", plan.stage, stuck)
        tracker.set_tags({"stuck_at_floor": "true", "stuck_reason": stuck})
    tracker.log_artifact(plan.history_path, "training")
    tracker.log_artifact(plan.checkpoint_dir / "best.pt", f"checkpoints/{plan.stage}")
    return {
        "stage": plan.stage,
        "metric": metric_name,
        "best_metric": round(state.best_metric, 4),
        "epochs_run": state.epoch,
        "resumed_from_epoch": first_epoch - 1,
        "seconds": round(time.perf_counter() - started, 1),
        "processes": ranks.world,
        "rank": ranks.rank,
        "weights_digest": weights_digest(model.state_dict()),  # the last epoch's weights, as in last.pt
        "stuck_at_floor": stuck,
    }


def _stops_early(plan: StagePlan, state: StageState) -> bool:
    """Early stopping: `train.patience` epochs without improvement, never before `train.min_epochs`."""
    return state.epoch >= plan.train.min_epochs and state.epochs_since_best >= plan.train.patience


def stuck_at_floor(stage: str, history: list[dict], margin: float) -> str | None:
    """Why the stage learned nothing (its floor metric never rose more than `margin` above the floor), or None."""
    name, floor = FLOORS[stage]
    values = [row[name] for row in history if not math.isnan(row.get(name, math.nan))]
    if not values or max(values) > floor + margin:
        return None
    return (f"best {name} {max(values):.4f} after {len(values)} epochs is within {margin} of its floor {floor}; "
            f"this model learned nothing on that head and the promotion gate will reject it")


def _check_shapes(plan: StagePlan, data: ShardSlices) -> None:
    channels, height, width = data.image_shape
    if channels != plan.model.in_channels:
        raise SliceWiseError(f"processed slices have {channels} channel(s) but profiles.<profile>.modalities lists "
                             f"{plan.model.in_channels}; rerun the slice step", plan.processed)
    multiple = plan.model.size_multiple
    if height % multiple or width % multiple:
        raise SliceWiseError(f"image size {height}x{width} is not a multiple of {multiple}, as model depth "
                             f"{plan.model.depth} needs", paths.PARAMS)


def crop_side(plan: StagePlan, image_size: tuple[int, int]) -> int | None:
    """The side of the training windows (`train_seg.crop` of the slices' shorter side, down to a size the model
    takes), or None for whole slices."""
    share = getattr(plan.stage_params, "crop", 1.0)
    multiple = plan.model.size_multiple
    side = int(min(image_size) * share) // multiple * multiple
    if share >= 1 or side >= min(image_size):
        return None
    if side < multiple:
        raise SliceWiseError(f"train_{plan.stage}.crop {share} of {min(image_size)} pixels leaves no window of at "
                             f"least {multiple} pixels (model depth {plan.model.depth})", paths.PARAMS)
    return side


def _initial_model(plan: StagePlan, data: str) -> MultitaskUNet:
    """Seeded fresh weights for seg; the previous stage's best weights for cls and joint, which must have been trained
    on the same processed data and splits (`data`, their fingerprint)."""
    model = MultitaskUNet(plan.model)
    if plan.init_checkpoint is not None:
        previous = load_checkpoint(plan.init_checkpoint)
        if model_config_of(previous) != plan.model:
            raise SliceWiseError(f"model settings differ from those of {previous['stage']} "
                                 f"({model_config_of(previous)}); rerun train_{previous['stage']}", plan.init_checkpoint)
        trained_on = (previous.get("extra") or {}).get("run_key", {}).get("data")
        if trained_on is not None and trained_on != data:
            raise SliceWiseError(f"train_{previous['stage']}'s checkpoint was trained on other processed data or "
                                 f"splits than today's; rerun train_{previous['stage']} first", plan.init_checkpoint)
        load_weights(model, previous, plan.init_checkpoint)
    return model


def _resume(plan: StagePlan, run_key: dict, model, optimizer, generator: torch.Generator) -> StageState:
    last, best = plan.checkpoint_dir / "last.pt", plan.checkpoint_dir / "best.pt"
    if not (last.exists() and best.exists()):
        return StageState()
    try:
        checkpoint = load_checkpoint(last)
    except SliceWiseError as exc:
        log.warning("train_%s: starting fresh, %s", plan.stage, exc)
        return StageState()
    extra = checkpoint["extra"]
    if extra.get("run_key") != run_key:
        log.info("train_%s: params, data, code or starting checkpoint changed since %s; starting fresh", plan.stage,
                 last)
        return StageState()
    if _run_key_of(best) != run_key:  # a run that died between writing best.pt and last.pt: best.pt is another run's
        log.warning("train_%s: %s is not from the run %s resumes; starting fresh", plan.stage, best, last)
        return StageState()
    if (overrun := _trained_past_today_s_stop(plan, extra["history"])) is not None:
        log.info("train_%s: %s ran %d epochs, where today's epochs, patience and min_epochs stop after %d; starting "
                 "fresh", plan.stage, last, checkpoint["epoch"], overrun)
        return StageState()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    generator.set_state(extra["generator_state"])
    log.info("train_%s: resuming after epoch %d from %s", plan.stage, checkpoint["epoch"], last)
    return StageState(checkpoint["epoch"], checkpoint["best_metric"], extra["epochs_since_best"], extra["history"],
                      extra.get("ema"))


def _run_key_of(checkpoint_path: Path) -> dict | None:
    """The run key a best.pt was written under (None: unreadable, or written before best.pt recorded it)."""
    try:
        return load_checkpoint(checkpoint_path)["extra"].get("run_key")
    except SliceWiseError:
        return None


def _trained_past_today_s_stop(plan: StagePlan, history: list[dict]) -> int | None:
    """The epoch at which a fresh run with today's epochs, patience and min_epochs would have stopped, when that is
    before the last one a resumable run trained (its `history`); None when it is not (more epochs or more patience continue
    it as a fresh run would go on, but fewer would have kept another epoch's best.pt)."""
    replay = StageState()
    for row in history[:-1]:
        replay.record(row, metric_of(plan.stage, row))
        if replay.epoch >= plan.epochs or _stops_early(plan, replay):
            return replay.epoch
    return None


def _save_epoch(plan, state: StageState, improved: bool, steps: StageRunner, generator, run_key,
                metric_name: str) -> None:
    """Write best.pt (if improved) before last.pt, so last.pt never points past best, then the history. best.pt holds
    the weights validation scored (the moving average, with one); last.pt the model and optimizer that resume."""
    common = dict(model_config=plan.model, epoch=state.epoch, best_metric=state.best_metric,
                  metric_name=metric_name, params=plan.params(), stage=plan.stage)
    if improved:  # without the epoch's timings: same seed, machine and code give the same best.pt, byte for byte
        metrics = {k: v for k, v in state.history[-1].items() if k not in TIMINGS}  # (and model.onnx, which names it)
        # the run key: which run wrote it (a resume checks it, and so does the next stage for its data)
        save_checkpoint(plan.checkpoint_dir / "best.pt", model=steps.handed_on, optimizer=None,
                        extra={"metrics": metrics, "run_key": run_key}, **common)
    extra = {"run_key": run_key, "history": state.history, "epochs_since_best": state.epochs_since_best,
             "generator_state": generator.get_state()}
    if steps.ema is not None:
        extra["ema"] = steps.ema.state_dict()
    save_checkpoint(plan.checkpoint_dir / "last.pt", model=steps.model, optimizer=steps.optimizer, extra=extra,
                    **common)
    _write_history(plan.history_path, state.history)


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g")


def _progress(visible: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not visible)


def _noise_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _file_digest(path: Path) -> str:
    if not path.exists():
        raise SliceWiseError("checkpoint of the previous stage not found (run that stage first)", path)
    return sha256_file(path)[:16]


def run_stage(settings: Settings, stage: str) -> dict:
    """One training stage as its step runs it: planned from `settings`, in its own tracker run."""
    if stage not in PREVIOUS_STAGE:
        raise SliceWiseError(f"unknown training stage {stage!r}; expected one of {tuple(PREVIOUS_STAGE)}")
    # Under torchrun only rank 0 opens a tracker run; the others train without one.
    with tracked_step(settings, f"train_{stage}", enabled=launched_rank() == 0) as tracker:
        result = train_stage(plan_stage(settings, stage), tracker)
    log.info("train_%s: %s", stage, result)
    return result
