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
key matches (params that change what is learned, the data, the starting checkpoint, the code: tasks/training/plan.py),
else starts fresh (tasks/training/resume.py). Early stopping after `train.patience` epochs without improvement.

Launched by `torchrun --nproc_per_node=N -m tasks train_<stage>`, a stage trains as N DDP processes that take the
same steps as one process would (tasks/training/distributed.py); rank 0 alone writes files and talks to the
tracker.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.unet import MultitaskUNet
from tasks import paths
from tasks.config import Settings
from tasks.data.datasets import ShardSlices, data_fingerprint, stage_data
from tasks.data.loaders import training_loader
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import (architecture_digest, load_checkpoint, load_weights, model_config_of,
                                         weights_digest)
from tasks.io import sha256_file, usable_cores
from tasks.tracking.provenance import CHECKPOINT_TAG, flatten
from tasks.tracking.tracker import NullTracker, Tracker, tracked_step
from tasks.training.device import augments_on_device, machine_description, pick_device, place_model
from tasks.training.distributed import Ranks, launched_rank, training_processes
from tasks.training.optimizer import make_optimizer
from tasks.training.plan import PREVIOUS_STAGE, StagePlan, crop_side, plan_stage, stage_augment
from tasks.training.resume import resume_state, save_epoch, stops_early, write_history
from tasks.training.steps import FLAIR_ONLY, FOLLOWED_METRIC, StageLoss, StageRunner, followed_metric, metric_of

log = logging.getLogger(__name__)

# Each stage's "nothing learned" value: a stage whose best validation value stays within train.floor_margin of it
# is reported as stuck (a seg head predicting no tumour anywhere has val Dice 0; a guessing classifier ROC-AUC 0.5).
FLOORS = {"seg": ("val_dice", 0.0), "cls": ("val_roc_auc", 0.5), "joint": ("val_dice", 0.0)}


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
    if plan.stage in ("seg", "joint") and not bool((val_set.labels[val_set.has_mask] == 1).any()) and ranks.rank == 0:
        # validation Dice pooled over no tumour is 0 for any false pixel: early stopping and best.pt would follow a
        # meaningless number, and the stage end "stuck at its floor" without saying why
        log.warning("%s: the validation split holds no MRI slice with tumour, so its Dice says nothing; the stage "
                    "picks its best epoch by it anyway (local data without tumours in the val patients?)", plan.stage)

    data = data_fingerprint(plan.processed, plan.splits_dir)  # hashed once: the resume key and the start check
    model = place_model(_initial_model(plan, data), device, plan.train)
    optimizer = make_optimizer(model, plan.stage, plan.stage_params)
    generator = torch.Generator().manual_seed(plan.seed)
    run_key = {**plan.run_key(data), "architecture": architecture_digest(model)}
    state = resume_state(plan, run_key, model, optimizer, generator)
    if state.epoch == 0:
        # Starting fresh: dvc.yaml keeps best.pt between runs (persist) so that a killed run can resume, so a best.pt
        # of an earlier run must go now, or an epoch-1 metric that never improves (NaN) would leave it as this run's.
        (plan.checkpoint_dir / "best.pt").unlink(missing_ok=True)
    first_epoch = state.epoch + 1
    if state.history and first_epoch <= plan.epochs and not stops_early(plan, state):
        # continued: the FLAIR-only figures go on a run's last epoch, which is still to come (a fresh run has them once)
        state.history[-1] = {k: v for k, v in state.history[-1].items() if not k.endswith(FLAIR_ONLY)}
    tracker.log_params(flatten(plan.params()))
    machine = machine_description(device)
    tracker.set_tags({"machine": machine})

    # Wrapping in DDP (inside StageRunner) waits for every process: none writes last.pt before all have read it.
    steps = StageRunner(model, optimizer, StageLoss(plan.stage, plan.stage_params), plan.stage, plan.train, device,
                        ranks)
    if steps.ema is not None and state.ema_state is not None:
        steps.ema.load_state_dict(state.ema_state)
    loader = training_loader(train_set, plan.train.batch_size, generator, plan.train.num_workers,
                             getattr(plan.stage_params, "kaggle_share", None),
                             getattr(plan.stage_params, "foreground_share", 0.0),
                             pin_memory=plan.train.pin_memory and device.type == "cuda", augment=stage_augment(plan),
                             part=ranks.part, augment_on_device=augments_on_device(plan.train, device),
                             crop=crop_side(plan, train_set.image_shape[1:]))
    # what the last validation row followed (a resumed run's too), the stage's own before any
    metric_name = followed_metric(plan.stage, state.history[-1]) if state.history else FOLLOWED_METRIC[plan.stage]
    with _progress(visible=ranks.is_main) as progress:
        bar = progress.add_task(f"train_{plan.stage}", total=max(plan.epochs - state.epoch, 0) * len(loader),
                                loss=math.nan, metric=f"{metric_name} -")
        for epoch in range(first_epoch, plan.epochs + 1):
            if stops_early(plan, state):
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
            if "seg" in steps.loss_fn.heads and (epoch == plan.epochs or stops_early(plan, state)):
                row.update(steps.evaluate_flair_only(val_set))  # the stage's last epoch: what FLAIR alone costs
            row["seconds"] = round(time.perf_counter() - epoch_started, 2)  # with the validation passes
            # CPU seconds of this process, all its threads: against the wall seconds, what says whether the epoch had
            # the machine to itself (bench/bench_peer.py gives its peer these wall seconds). Loader workers not counted.
            row["cpu_seconds"] = round(time.process_time() - epoch_cpu_started, 2)
            row["machine"] = machine
            if ranks.is_main:
                save_epoch(plan, state, improved, steps, generator, run_key, metric_name)
            tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "machine")}, step=epoch)
            progress.update(bar, metric=f"{metric_name} {state.best_metric:.4f} (best)")
            if ranks.is_main:  # the bar is drawn on a terminal only (_progress); logs get this line
                log.info("train_%s: epoch %d/%d, train loss %.4f, %s %.4f%s, %.1f s", plan.stage, epoch, plan.epochs,
                         train_loss, metric_name, metric, " (best)" if improved else "",
                         row["seconds"])
    if ranks.is_main:
        write_history(plan.history_path, state.history)
    stuck = stuck_at_floor(plan.stage, state.history, plan.train.floor_margin)
    if stuck:
        log.error("train_%s: STUCK AT ITS FLOOR: %s", plan.stage, stuck)
        tracker.set_tags({"stuck_at_floor": "true", "stuck_reason": stuck})
    tracker.log_artifact(plan.history_path, "training")
    tracker.log_artifact(plan.checkpoint_dir / "best.pt", f"checkpoints/{plan.stage}")
    # what the weights this run hands on are: a registry version names its checkpoint's sha256 too, so lineage finds
    # the run that trained it even when a later pipeline run only re-registered it (tasks/release/lineage.py). Only
    # the main process writes best.pt, and a run whose metric never improved has none.
    if ranks.is_main and (best := plan.checkpoint_dir / "best.pt").exists():
        tracker.set_tags({CHECKPOINT_TAG: sha256_file(best)})
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


def stuck_at_floor(stage: str, history: list[dict], margin: float) -> str | None:
    """Why the stage learned nothing (its floor metric never rose more than `margin` above the floor), or None."""
    name, floor = FLOORS[stage]
    values = [row[name] for row in history if not math.isnan(row.get(name, math.nan))]
    if not values or (best := max(values)) > floor + margin:
        return None
    where = f"within {margin} of its floor {floor}" if best >= floor else \
        f"below its floor {floor} (ranked the wrong way round)"  # e.g. a ROC-AUC under 0.5
    return (f"best {name} {best:.4f} after {len(values)} epochs is {where}; "
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


def _initial_model(plan: StagePlan, data: str) -> MultitaskUNet:
    """Seeded fresh weights for seg; the previous stage's best weights for cls and joint, which must have been trained
    on the same processed data and splits (`data`, their fingerprint)."""
    model = MultitaskUNet(plan.model)
    if plan.init_checkpoint is not None:
        previous = load_checkpoint(plan.init_checkpoint)
        if model_config_of(previous) != plan.model:
            raise SliceWiseError(f"model settings differ from those of {previous['stage']} "
                                 f"({model_config_of(previous)}); rerun train_{previous['stage']}",
                                 plan.init_checkpoint)
        trained_on = (previous.get("extra") or {}).get("run_key", {}).get("data")
        if trained_on is not None and trained_on != data:
            raise SliceWiseError(f"train_{previous['stage']}'s checkpoint was trained on other processed data or "
                                 f"splits than today's; rerun train_{previous['stage']} first", plan.init_checkpoint)
        load_weights(model, previous, plan.init_checkpoint)
    return model


def _progress(visible: bool) -> Progress:
    """The stage's bar, on a terminal only: elsewhere (`make run > log`, CI) Rich would draw it once at the end, cut at
    80 columns, and the epoch lines the stage logs say more."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
                    TimeElapsedColumn(), console=console, disable=not (visible and console.is_terminal))


def _noise_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def run_stage(settings: Settings, stage: str) -> dict:
    """One training stage as its step runs it: planned from `settings`, in its own tracker run."""
    if stage not in PREVIOUS_STAGE:
        raise SliceWiseError(f"unknown training stage {stage!r}; expected one of {tuple(PREVIOUS_STAGE)}")
    # Under torchrun only rank 0 opens a tracker run; the others train without one.
    with tracked_step(settings, f"train_{stage}", enabled=launched_rank() == 0) as tracker:
        return train_stage(plan_stage(settings, stage), tracker)
