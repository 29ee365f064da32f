"""Where a stage stands between epochs (`StageState`), written after every epoch (`save_epoch`: best.pt when the
metric improved, then last.pt and the history) and read back when the stage starts again (`resume_state`): last.pt
is resumed only when its run key matches today's and best.pt is from the same run; otherwise the stage starts
fresh. Early stopping (`stops_early`) is decided here too, so a resumed run stops where an uninterrupted one would."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tasks import paths
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import load_checkpoint, save_checkpoint
from tasks.io import atomic_write
from tasks.training.plan import StagePlan
from tasks.training.steps import StageRunner, metric_of

log = logging.getLogger(__name__)

# The history columns that say what an epoch took and where (the machine), rather than what it learned.
TIMINGS = ("seconds", "cpu_seconds", "machine")


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


def stops_early(plan: StagePlan, state: StageState) -> bool:
    """Early stopping: `train.patience` epochs without improvement, never before `train.min_epochs`."""
    return state.epoch >= plan.train.min_epochs and state.epochs_since_best >= plan.train.patience


def resume_state(plan: StagePlan, run_key: dict, model, optimizer, generator: torch.Generator) -> StageState:
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
    restore_optimizer(optimizer, checkpoint["optimizer"])
    generator.set_state(extra["generator_state"])
    log.info("train_%s: resuming after epoch %d from %s", plan.stage, checkpoint["epoch"], last)
    return StageState(checkpoint["epoch"], checkpoint["best_metric"], extra["epochs_since_best"], extra["history"],
                      extra.get("ema"))


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`optimizer.load_state_dict(saved)`, keeping the fused choice `make_optimizer` made for this run's device. The
    device is no part of the run key (a last.pt from a GPU may resume on a CPU), and load_state_dict brings the saved
    run's choice back with the rest: a GPU's fused AdamW, which rounds differently on the CPU. Set before loading, so
    the state is placed as the kernel it goes to needs it."""
    chosen = [group.get("fused") for group in optimizer.param_groups]
    groups = [{**group, "fused": fused} for group, fused in zip(saved["param_groups"], chosen)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def _run_key_of(checkpoint_path: Path) -> dict | None:
    """The run key a best.pt was written under (None: unreadable, or written before best.pt recorded it)."""
    try:
        return load_checkpoint(checkpoint_path)["extra"].get("run_key")
    except SliceWiseError:
        return None


def _trained_past_today_s_stop(plan: StagePlan, history: list[dict]) -> int | None:
    """The epoch at which a fresh run with today's epochs, patience and min_epochs would have stopped, when that is
    before the last one a resumable run trained (its `history`); None when it is not (more epochs or more patience
    continue it as a fresh run would go on, but fewer would have kept another epoch's best.pt)."""
    replay = StageState()
    for row in history[:-1]:
        replay.record(row, metric_of(plan.stage, row))
        if replay.epoch >= plan.epochs or stops_early(plan, replay):
            return replay.epoch
    return None


def save_epoch(plan, state: StageState, improved: bool, steps: StageRunner, generator, run_key,
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
    write_history(plan.history_path, state.history)


def write_history(path: Path, history: list[dict]) -> None:
    """What each epoch learned at `path`, and what it took (TIMINGS) in a file beside it (paths.timings_beside): the
    history is then the same bytes whenever the training is (a resumed run's timings differ), so `evaluate`, which
    plots it and so depends on it, is not run again for the same model."""
    frame = pd.DataFrame(history)
    timings = [column for column in TIMINGS if column in frame]
    with atomic_write(path) as tmp:
        frame.drop(columns=timings).to_csv(tmp, index=False, float_format="%.6g")
    with atomic_write(paths.timings_beside(path)) as tmp:
        frame[["epoch", *timings]].to_csv(tmp, index=False, float_format="%.6g")
