"""What one training stage will do, resolved from the settings before it starts (`plan_stage`), and the key a
checkpoint must match to be resumed (`StagePlan.run_key`): the params that change what is learned, the data, the
starting checkpoint and the training code's identity (`training_code_digest`)."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import asdict, dataclass
from pathlib import Path

from models.unet import UNetConfig
from tasks import paths
from tasks.config import Augment, ClsStageSettings, JointStageSettings, SegStageSettings, Settings, TrainSettings
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import model_config_for
from tasks.io import code_identity, sha256_file

PREVIOUS_STAGE = {"seg": None, "cls": "seg", "joint": "cls"}
# Settings that change speed, not what is learned: a run may resume with different values (augment_on moves the same
# draws to another device). dvc.yaml's training stages list the other train keys, and patience (it decides which
# epoch best.pt is from).
RUNTIME_ONLY = ("patience", "min_epochs", "floor_margin", "device", "amp_bf16", "channels_last", "compile",
                "pin_memory", "num_workers", "threads", "cache_mb", "augment_on")


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


# The modules whose code decides what a stage learns (dvc.yaml lists them as the stages' deps): DVC reruns a stage
# when one changes, and then last.pt is another code's run, which must not be resumed (it would train no epoch).
TRAINING_CODE = ("models.unet", "tasks.data.datasets", "tasks.data.batch_sampling", "tasks.data.loaders",
                 "tasks.data.augment", "tasks.data.modality_dropout", "tasks.data.regions", "tasks.data.shards",
                 "tasks.data.splits", "tasks.inference.checkpoints", "tasks.training.distributed",
                 "tasks.training.device", "tasks.training.optimizer", "tasks.training.loss", "tasks.training.steps",
                 "tasks.training.plan", "tasks.training.resume", "tasks.training.stage")


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


STAGE_AUGMENT_KEYS = ("bias_field", "photo_like")  # train.augment keys a stage's section may set for itself


def stage_augment(plan: StagePlan) -> Augment:
    """The augmentation this stage's training batches get: train.augment, with the stage's own value of each
    STAGE_AUGMENT_KEYS key where it sets one (`train_seg.bias_field`, `train_cls.photo_like`, ...)."""
    own = {key: value for key in STAGE_AUGMENT_KEYS if (value := getattr(plan.stage_params, key, None)) is not None}
    return plan.train.augment.model_copy(update=own) if own else plan.train.augment


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


def _file_digest(path: Path) -> str:
    if not path.exists():
        raise SliceWiseError("checkpoint of the previous stage not found (run that stage first)", path)
    return sha256_file(path)[:16]
