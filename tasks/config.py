"""params.yaml, parsed in exactly one place into typed, validated settings.

Every other module receives the part it needs (`settings.slice`, `settings.active`, ...). Unknown keys
are rejected so that a typo in params.yaml fails loudly instead of silently using a default. Edits to the file
(`python -m tasks set`) are tasks/params_edit.py's, validated here before they land.
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

import ruamel.yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks import paths
from tasks.errors import SliceWiseError

MODALITIES = ("flair", "t1", "t1ce", "t2")


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN passes every `ge`/`le` bound (its comparisons are all false), and split.val: .nan
    # reached the split step as a traceback. strict=True: no conversion of one type into another (`seed: true` was
    # taken as seed 1, `epochs.seg: true` as one epoch, `seed: "42"` as 42 while DVC saw a changed parameter);
    # YAML's lists and strings stay welcome where a tuple or a path is meant (LISTS, PATH).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


LISTS = PATH = Field(strict=False)  # YAML has no tuples or paths: a list, a string


class KaggleVersions(_Section):
    """Which version of each Kaggle data set `data.source: kaggle` downloads. None: the latest when fetch runs; fetch
    records the number it got (data/raw/kaggle_versions.json), and `tasks check` says when Kaggle has a newer one,
    which DVC cannot see (nothing it hashes changes when a data set gets a new version)."""

    brats: int | None = Field(None, ge=1)
    images: int | None = Field(None, ge=1)


class DataSettings(_Section):
    source: Literal["synthetic", "local", "kaggle"] = "synthetic"
    brats_dir: Annotated[Path | None, PATH] = None
    kaggle_dir: Annotated[Path | None, PATH] = None
    kaggle_versions: KaggleVersions = Field(default_factory=KaggleVersions)

    @model_validator(mode="after")
    def _local_needs_a_folder(self) -> "DataSettings":
        """Checked when params.yaml is read, not by fetch: DVC removes data/raw before it runs a changed fetch."""
        if self.source == "local" and self.brats_dir is None:
            raise ValueError("data.source is 'local' but data.brats_dir is not set; set both in one go: tasks set "
                             "data.source=local data.brats_dir=/path/to/BraTS2020_TrainingData")
        return self


# The defaults below are params.yaml's values (the quick profile's, for a profile), so a key deleted from params.yaml
# falls back to the recipe it shows, not to an older one (tests/test_slice.py checks that they agree).
class ModelSize(_Section):
    base_channels: int = Field(16, ge=2)
    depth: int = Field(4, ge=2, le=6)
    norm: Literal["batch", "instance"] = "batch"

    @property
    def size_multiple(self) -> int:
        """What an image side must be a multiple of: the U-Net halves it depth - 1 times (models/unet.py's
        UNetConfig.size_multiple, which this module cannot import without torch)."""
        return 2 ** (self.depth - 1)


class Epochs(_Section):
    seg: int = Field(4, ge=1)
    cls: int = Field(4, ge=1)
    joint: int = Field(2, ge=1)


def _check_modalities(modalities: tuple[str, ...], key: str) -> tuple[str, ...]:
    """A non-empty subset of MODALITIES in their canonical order, so FLAIR, when used, is always channel 0 (where
    single-channel images go)."""
    if not modalities or set(modalities) - set(MODALITIES) or len(set(modalities)) != len(modalities) \
            or list(modalities) != [m for m in MODALITIES if m in modalities]:
        raise ValueError(f"{key} must be a non-empty subset of {MODALITIES}, in that order; got {modalities}")
    return modalities


class ProfileSettings(_Section):
    # Input channels, one per modality, each z-scored over the brain. A single-channel image (Kaggle, an uploaded
    # slice, a FLAIR-only volume) is the FLAIR channel with the others all zero (see train.augment.modality_dropout).
    modalities: Annotated[tuple[str, ...], LISTS] = MODALITIES
    synthetic_patients: int = Field(48, ge=3)
    # Synthetic brains without a tumour, after the patients above: BraTS has none. They go to the training split only
    # (tasks/data/splitting.py), so validation and test, and every figure on them, hold the same patients as without
    # them. 8 of them left false tumours on 17 instead of 18 of 50 tumour-free brains (docs/recipes.md): 0 in every
    # profile. The synthetic source only: local and Kaggle data are what the folders hold.
    synthetic_tumour_free_patients: int = Field(0, ge=0)
    synthetic_kaggle_images: int = Field(120, ge=2)
    patient_fraction: float = Field(1.0, gt=0, le=1)
    image_size: int = Field(128, ge=32)
    slice_stride: int = Field(2, ge=1)
    model: ModelSize = ModelSize()
    epochs: Epochs = Epochs()

    @model_validator(mode="after")
    def _known_modalities(self) -> "ProfileSettings":
        _check_modalities(self.modalities, "profiles.<name>.modalities")
        return self

    @model_validator(mode="after")
    def _size_fits_the_model(self) -> "ProfileSettings":
        """Checked here, not first at train_seg after a whole slicing run."""
        multiple = self.model.size_multiple
        if self.image_size % multiple:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {multiple}, as model depth "
                             f"{self.model.depth} needs")
        return self


class SliceSettings(_Section):
    # Not a params.yaml key: filled in from the active profile's `modalities` (see _ModelSettings), so the slice
    # step receives everything it needs in one object.
    modalities: Annotated[tuple[str, ...], LISTS] = ("flair",)
    min_brain_fraction: float = Field(0.05, ge=0, lt=1)
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _known_modalities(self) -> "SliceSettings":
        _check_modalities(self.modalities, "slice.modalities")
        return self


class SplitSettings(_Section):
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    phash_max_distance: int = Field(6, ge=0)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitSettings":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6 or min(self.train, self.val, self.test) <= 0:
            raise ValueError("split.train + split.val + split.test must be positive and sum to 1")
        return self


class Augment(_Section):
    flip: bool = True
    rotate_degrees: float = Field(10, ge=0, le=180)
    intensity_jitter: float = Field(0.1, ge=0, le=1)
    # Share of training samples with some input channels blanked (zeroed); no effect with one channel.
    # See tasks/data/modality_dropout.py.
    modality_dropout: float = Field(0.25, ge=0, le=1)
    # Strength of a smooth multiplicative bias field per sample and channel (0: none; 0.3 scales a region by up to
    # ~1.35x). See tasks/data/augment.py, apply_bias_fields.
    bias_field: float = Field(0.0, ge=0, le=1)
    bias_field_share: float = Field(1.0, ge=0, le=1)  # share of samples given a field (the others keep theirs flat)
    # Share of samples shown as a photo of unknown sequence is: one of their channels, drawn uniformly, moved to
    # channel 0 (where a photo goes), the others blank. See tasks/data/augment.py, as_photos; docs/recipes.md.
    photo_like: float = Field(0.0, ge=0, le=1)


class TrainSettings(_Section):
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    cache_mb: int = Field(256, ge=0)  # decompressed compressed shards kept per stage, shared by its loader processes
    patience: int = Field(3, ge=1)
    min_epochs: int = Field(4, ge=1)  # early stopping never ends a stage before this many epochs
    warmup_epochs: float = Field(0.5, ge=0)  # linear LR warm-up, in epochs, at the start of each stage
    floor_margin: float = Field(0.05, ge=0, le=1)  # a metric within this of its floor after training is "stuck"
    augment: Augment = Augment()
    # where training batches are augmented: in the loader (CPU workers), on the training device, or auto (the
    # device when it is a GPU: the loader then only reads, docs/training.md, "GPU switches")
    augment_on: Literal["auto", "loader", "device"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp_bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    pin_memory: bool = True
    threads: int = Field(0, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ema_decay: float = Field(0.0, ge=0, lt=1)  # > 0: validate and hand on an exponential moving average of the weights


class SegStageSettings(_Section):
    lr: float = Field(2e-3, gt=0)  # as params.yaml (docs/training.md: 5e-4 left the logits too timid)
    weight_decay: float = Field(1e-4, ge=0)
    tumour_slices_only: bool = False
    foreground_share: float = Field(0.33, ge=0, le=1)  # at least this share of each batch has tumour
    dice_over: Literal["batch", "slice", "both"] = "both"  # Dice pooled over the batch, per slice, or their mean
    # Side of the square window around the brain that each training sample is cut to, as a share of the slice's
    # side (1: whole slices); tasks/data/augment.py, docs/recipes.md.
    crop: float = Field(0.75, gt=0, le=1)
    # This stage's bias-field strength instead of train.augment.bias_field (None: that one). The later stages also
    # train the classifier, whose evidence the volume clean-up reads; docs/recipes.md.
    bias_field: float | None = Field(None, ge=0, le=1)


class ClsStageSettings(_Section):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    brats_fraction: float = Field(1.0, ge=0, le=1)
    kaggle_share: float | None = Field(0.5, gt=0, lt=1)
    photo_like: float | None = Field(None, ge=0, le=1)  # this stage's train.augment.photo_like (None: the shared)


class JointStageSettings(_Section):
    encoder_lr: float = Field(1e-4, gt=0)
    head_lr: float = Field(3e-4, gt=0)
    cls_weight: float = Field(0.5, ge=0)
    kaggle_share: float | None = Field(0.5, gt=0, lt=1)
    foreground_share: float = Field(0.33, ge=0, le=1)  # of each batch's BraTS part, as in train_seg
    dice_over: Literal["batch", "slice", "both"] = "both"  # as in train_seg
    negative_photos_as_empty_masks: bool = False  # photos labelled "no tumour" train the seg head on an empty mask
    peak_weight: float = Field(0.0, ge=0)  # weight of a BCE on each sample's largest WT logit against its label
    photo_like: float | None = Field(None, ge=0, le=1)  # as in train_cls
    weight_decay: float = Field(1e-4, ge=0)


class EvaluateSettings(_Section):
    # The classification threshold: chosen on the validation split by Youden's J or as the highest one reaching
    # target_sensitivity, or fixed_threshold whatever validation says (README, "Evaluation": the fixed 0.5 raised
    # sensitivity across seeds, but not accuracy by more than the seeds' spread, so Youden stays the default).
    threshold_rule: Literal["youden", "target_sensitivity", "fixed"] = "youden"
    fixed_threshold: float = Field(0.5, gt=0, lt=1)
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    # What the threshold is applied to: the classification head's probability, or "fused" with the segmentation
    # head's largest pixel probability (tasks/inference/predictor.py, SLICE_SCORES; README, "Evaluation").
    slice_score: Literal["classifier", "fused"] = "fused"
    # A BraTS slice's score as /v1/predict/volume answers it: the fused score read after the volume clean-up of its
    # patient's re-stacked masks (tasks/evaluation/scoring.py, scores_in_volume; docs/recipes.md, "Post-processing").
    # Photos, which reach serving one image at a time, are scored as predicted either way.
    slices_in_volume: bool = True
    # Segmentation: a pixel is tumour when its probability >= this; "validation" picks it on the validation patients
    # (tasks/evaluation/scoring.py, choose_mask_threshold), as threshold_rule picks the classification threshold.
    mask_threshold: Annotated[float, Field(gt=0, lt=1)] | Literal["validation"] = "validation"
    bootstrap: int = Field(1000, ge=10)
    # The organisers' package (brats-evaluation, in .venv-brats: `make brats-env`) scores the test volumes beside our
    # region metrics. A declared switch, not "when the environment happens to exist": metrics.json must follow from
    # the code, data and params DVC sees (true without the environment is an error that names the fix).
    organisers_check: bool = False
    gradcam_examples: int = Field(8, ge=1)
    overlay_examples: int = Field(8, ge=1)


# The newest opset torch's TorchScript exporter (dynamo=False, tasks/release/onnx_export.py) writes: a higher one
# failed in export, after DVC had removed the model (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
MAX_ONNX_OPSET = 20


class ExportSettings(_Section):
    opset: int = Field(17, ge=13, le=MAX_ONNX_OPSET)
    # torch and onnxruntime logits must agree within parity_atol + parity_rtol x |torch logit| (numpy's isclose): the
    # engines sum in other orders, so float32 rounding grows with a logit's size (2e-5 of it seen on a quick model).
    parity_atol: float = Field(1e-4, gt=0)
    parity_rtol: float = Field(1e-4, ge=0)
    parity_min_dice: float = Field(0.999, gt=0, le=1)
    parity_max_slices: int = Field(1024, ge=0)
    latency_runs: int = Field(30, ge=3)
    latency_threads: int = Field(1, ge=0)


class TrackingSettings(_Section):
    enabled: bool = True
    experiment: str = "slicewise"
    max_attempts: int = Field(3, ge=1)
    backoff_seconds: float = Field(0.5, ge=0)
    request_timeout_seconds: float = Field(10, gt=0)


class PromotionSettings(_Section):
    min_accuracy: float = Field(0.85, ge=0, le=1)
    min_sensitivity: float = Field(0.80, ge=0, le=1)
    min_specificity: float = Field(0.80, ge=0, le=1)  # the other error: "tumour" for every slice
    min_dice: float = Field(0.70, ge=0, le=1)  # whole tumour, per tumour slice (segmentation.dice)
    min_volume_dice: float = Field(0.70, ge=0, le=1)  # whole tumour, per re-stacked patient volume
    use_lower_bound: bool = False  # compare the 95 % bootstrap interval's lower bound, not the point estimate
    max_accuracy_drop: float = Field(0.0, ge=0, le=1)


class RegistrySettings(_Section):
    model_name: str = Field("slicewise", min_length=1)
    alias: str = "champion"
    challenger_alias: str = "challenger"

    @model_validator(mode="after")
    def _usable_aliases(self) -> "RegistrySettings":
        """MLflow's rules for names and aliases (mlflow.utils.validation, not imported here: it loads MLflow), which
        would otherwise fail only at register, after training; and one alias for both would hand a model the gate
        rejected the served one's."""
        name = self.model_name
        if not name.strip() or set(name) & set("/:") or name == "." or name.startswith(".."):
            raise ValueError(f"registry.model_name {name!r}: MLflow model names cannot be blank, contain '/' or ':', "
                             "be '.' or start with '..'")
        for key, alias in (("alias", self.alias), ("challenger_alias", self.challenger_alias)):
            if not alias.strip() or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
                raise ValueError(f"registry.{key} {alias!r}: MLflow reserves empty aliases, 'latest' and v<number>")
            if not re.fullmatch(r"[\w\-]{1,255}", alias):
                raise ValueError(f"registry.{key} {alias!r}: MLflow aliases hold only letters, digits, '_' and '-' "
                                 "(at most 255)")
        if self.alias == self.challenger_alias:
            raise ValueError(f"registry.alias and registry.challenger_alias are both {self.alias!r}: a model the gate "
                             "rejected would become the served one")
        return self


class ScheduleSettings(_Section):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _a_schedule(self) -> "ScheduleSettings":
        """The plain mistakes, refused when params.yaml is read rather than first by `flows serve`: a cron with the
        wrong number of fields or characters no cron has, a time zone the tz database does not know. Prefect's own
        parser (flows/deploy.py) still has the last word; this check refuses a number out of its field's range and a
        sixth field (seconds, which Prefect reads last and other crons first), and takes its macros."""
        fields = self.cron.split()
        if self.cron.strip().lower() not in CRON_MACROS and not (
                len(fields) == 5 and all(CRON_FIELD.fullmatch(field) for field in fields)):
            # six fields too: Prefect reads a sixth as seconds, where another cron's first is, so "0 0 3 * * 1"
            # (Mondays 03:00 there) ran on the 3rd of each month
            raise ValueError(f"schedule.cron {self.cron!r} is not a cron expression: five fields (minute hour day "
                             "month weekday), e.g. '0 3 * * 1' for Mondays 03:00, or @daily, @weekly, ...")
        for field, (name, low, high) in zip(fields, CRON_RANGES):
            for part in field.split(","):
                base, _, step = part.partition("/")
                numbers = [int(n) for n in re.findall(r"\d+", base)]
                if any(not low <= n <= high for n in numbers) or (step and not (step.isdigit() and int(step) >= 1)):
                    raise ValueError(f"schedule.cron {self.cron!r}: {part!r} is outside the {name} field's "
                                     f"{low}-{high}; e.g. '0 3 * * 1' for Mondays 03:00")
        if len(fields) == 5 and (never := _days_that_never_come(fields[2], fields[3])):
            # Prefect's parser takes these and its scheduler then fails on every loop, quietly: no run, ever (with a
            # weekday beside the day too, though cron reads the two as either one)
            raise ValueError(f"schedule.cron {self.cron!r} never fires: {never}; e.g. '0 3 * * 1' for Mondays 03:00")
        zones = zoneinfo.available_timezones()  # empty without a tz database: nothing to check against
        if zones and self.timezone not in zones | {"UTC"}:
            raise ValueError(f"schedule.timezone {self.timezone!r} is not an IANA time zone (e.g. UTC, Europe/Paris)")
        return self


def _days_that_never_come(days: str, months: str) -> str | None:
    """Why a cron's day-of-month and month fields name no date that exists (day 31 of February, of April), or None.
    None too for what this does not read (L, W, #, names other than months'): Prefect has the last word there."""
    day_set, month_set = _cron_values(days, 1, 31), _cron_values(months, 1, 12, MONTH_NAMES)
    if not day_set or not month_set or any(day <= MONTH_DAYS[month] for day in day_set for month in month_set):
        return None
    names = ", ".join(MONTH_NAMES[month - 1].title() for month in sorted(month_set))
    return f"no month of {names} has day {', '.join(map(str, sorted(day_set)))}"


def _cron_values(field: str, low: int, high: int, names: tuple[str, ...] = ()) -> set[int] | None:
    """The numbers a cron field names (lists, ranges, steps, *), or None for anything else."""
    values: set[int] = set()
    for part in field.lower().split(","):
        base, _, step = part.partition("/")
        bounds = [names.index(n) + 1 if n in names else int(n) if n.isdigit() else None for n in base.split("-")]
        if base == "*":
            bounds = [low, high]
        elif step and len(bounds) == 1:
            bounds = [bounds[0], high]  # 5/10: from 5, every 10
        if None in bounds or len(bounds) > 2 or (step and not step.isdigit()):
            return None
        values.update(range(bounds[0], bounds[-1] + 1, int(step or 1)))
    return values


MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_DAYS = dict(zip(range(1, 13), (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)))  # 29 February: leap years
CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?#-]+")  # numbers, names (mon, jan), ranges, lists, steps, L W # ?
CRON_RANGES = (("minute", 0, 59), ("hour", 0, 23), ("day of the month", 1, 31), ("month", 1, 12),
               ("weekday", 0, 7))  # 0 and 7: Sunday; a weekday's `#n` (its n-th in the month) stays within them


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_slice_mb: float = Field(10, gt=0)
    max_volume_mb: float = Field(300, gt=0)  # per volume upload, and its voxel data once decompressed
    max_voxels: int = Field(16_777_216, ge=512)  # per volume, judged from its header before any allocation
    max_slices: int = Field(512, ge=1)  # axial slices per volume
    max_batch_files: int = Field(50, ge=1)
    max_image_side: int = Field(4096, ge=32)
    memory_budget_mb: float = Field(2048, gt=0)  # decoded uploads of all requests in flight together
    queue_seconds: float = Field(30, ge=0)  # how long a request waits for the budget before a 503
    header_timeout_seconds: float = Field(10, gt=0)  # a request's headers must arrive within this
    body_timeout_seconds: float = Field(120, gt=0)  # ... and its body within this after them
    answer_timeout_seconds: float = Field(120, gt=0)  # a volume answer must be read within this (else: closed)
    keep_alive_seconds: float = Field(5, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(64, ge=1)  # connections or requests in flight beyond this get a 503
    # Host/Origin names accepted besides localhost and the bind address
    allowed_hosts: Annotated[tuple[str, ...], LISTS] = ()
    poll_seconds: float = Field(30, ge=0)
    ood_threshold: float = Field(0.5, gt=0, le=1)
    # a photo (8-bit PNG/JPEG) gets a decision only from a model whose test photos scored at least this accuracy
    # (metrics.json's classification_by_source.kaggle); null: always
    min_photo_accuracy: float | None = Field(0.85, ge=0, le=1)
    # the flips of /v1/predict/volume?tta=true (tasks/inference/volume.py)
    tta_flips: Annotated[tuple[Annotated[tuple[Literal[2, 3], ...], LISTS], ...], LISTS] = ((), (3,))


def _raw_active_profile(raw) -> tuple[str, dict] | None:
    """(name, block) of the active profile as params.yaml gives it; None where it is not there as a mapping (the field
    validators then say what is wrong)."""
    if not isinstance(raw, dict):
        return None
    profiles, name = raw.get("profiles") or {}, raw.get("profile", "quick")
    if not (isinstance(profiles, dict) and isinstance(name, str)):
        return None
    profile = profiles.get(name)
    return (name, profile) if isinstance(profile, dict) else None


class _ModelSettings(_Section):
    """What making the model reads, fetch to export, with the profile that sizes it."""

    profile: str = "quick"
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's and scikit-learn's seeds are unsigned 32-bit
    data: DataSettings = DataSettings()
    profiles: dict[str, ProfileSettings]
    slice: SliceSettings = SliceSettings()
    split: SplitSettings = SplitSettings()
    train: TrainSettings = TrainSettings()
    train_seg: SegStageSettings = SegStageSettings()
    train_cls: ClsStageSettings = ClsStageSettings()
    train_joint: JointStageSettings = JointStageSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    export: ExportSettings = ExportSettings()

    @model_validator(mode="before")
    @classmethod
    def _modalities_from_profile(cls, raw):
        """`slice.modalities` is the active profile's `modalities` (each profile lists its own input channels).
        Set it there, not under `slice:`."""
        active = _raw_active_profile(raw)
        section = raw.get("slice") or {} if active else None
        if active is None or not isinstance(section, dict):
            return raw  # the field validators name what is wrong (a TypeError here would be a traceback)
        name, profile = active
        modalities = profile.get("modalities", ("flair",))
        if not isinstance(modalities, (list, tuple)):
            raise ValueError(f"profiles.{name}.modalities must be a list, e.g. [flair, t1, t1ce, t2]; got "
                             f"{modalities!r}")
        wanted = tuple(modalities)
        given = section.get("modalities", wanted)
        if not isinstance(given, (list, tuple)) or tuple(given) != wanted:  # a dumped Settings has both, equal
            raise ValueError("slice.modalities is set from profiles.<name>.modalities (one list per profile); "
                             "set it there")
        return {**raw, "slice": {**section, "modalities": wanted}}

    @model_validator(mode="before")
    @classmethod
    def _active_profile_complete(cls, raw):
        """The active profile names every key of its block: dvc.yaml's stages read them from params.yaml themselves
        (`profiles.${profile}.image_size`, ...), and DVC refuses a missing one, after `dvc repro` has removed the
        stage's outputs (data/raw). The defaults here would have let `tasks check` pass such a file."""
        if (active := _raw_active_profile(raw)) is None:
            return raw  # the field validators say what is wrong
        name, profile = active
        epochs = profile.get("epochs")
        missing = [key for key in ProfileSettings.model_fields if key not in profile]
        missing += [f"epochs.{key}" for key in Epochs.model_fields if isinstance(epochs, dict) and key not in epochs]
        if missing:
            raise ValueError(f"profiles.{name} lacks {', '.join(missing)}: dvc.yaml's stages read every key of the "
                             "active profile from params.yaml, so each profile lists them all (as profiles.quick does)")
        return raw

    @model_validator(mode="after")
    def _profile_exists(self) -> "_ModelSettings":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of profiles: {sorted(self.profiles)}")
        active, multiple = self.active, self.active.model.size_multiple
        if self.train_seg.crop < 1 and int(active.image_size * self.train_seg.crop) < multiple:
            raise ValueError(f"train_seg.crop {self.train_seg.crop} of profile {self.profile}'s {active.image_size} "
                             f"pixels leaves no window of at least {multiple} pixels (model depth "
                             f"{active.model.depth})")
        # train.warmup_epochs serves all three stages: one as long as a stage kept that stage under its learning
        # rate throughout (3 of a 2-epoch train_joint peaked at 18 % of it), without a word
        short = [f"{stage} ({n} epochs)" for stage, n in active.epochs.model_dump().items()
                 if self.train.warmup_epochs >= n]
        if self.train.warmup_epochs > 0 and short:
            raise ValueError(f"train.warmup_epochs {self.train.warmup_epochs:g} is not shorter than profile "
                             f"{self.profile}'s {', '.join(short)}: the learning rate would still be warming "
                             "up when the stage ends; shorten the warm-up or lengthen the stage")
        return self

    @property
    def active(self) -> ProfileSettings:
        """The block of the selected profile: data size, image size, model size, epochs."""
        return self.profiles[self.profile]

    @property
    def modalities(self) -> tuple[str, ...]:
        """The input channels of the active profile, in order (FLAIR first when used)."""
        return self.active.modalities

    @property
    def in_channels(self) -> int:
        return len(self.modalities)


class Settings(_ModelSettings):
    """All of params.yaml: making the model, then tracking, the promotion gate, the registry, the retraining
    schedule and serving."""

    tracking: TrackingSettings = TrackingSettings()
    promotion: PromotionSettings = PromotionSettings()
    registry: RegistrySettings = RegistrySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    serve: ServeSettings = ServeSettings()


# What read_yaml raises for text that is no YAML (ruamel's, with PyYAML's marks: problem, context, problem_mark)
YAMLError = ruamel.yaml.YAMLError


def read_yaml(text: str):
    """params.yaml's YAML (or a `tasks set` value) as DVC reads it: with DVC's own library and schema (ruamel.yaml,
    YAML 1.2), so that the settings and DVC never read one value two ways. PyYAML reads YAML 1.1, where `seed: 042` is
    octal 34 while DVC reads 42 (every stage ran with seed 34, dvc.lock recorded 42, and `dvc status` saw no change),
    `on` and `yes` are bools (to DVC the text "on"), `1:30` is 90 (text) and `+.5` is text (0.5). A key twice in one
    mapping is an error, as DVC makes it."""
    return ruamel.yaml.YAML(typ="safe").load(text)


def load_settings(path: Path | str = paths.PARAMS) -> Settings:
    """Read and validate params.yaml; a bad file raises SliceWiseError naming the file and the reason."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SliceWiseError("parameters file not found", path) from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, another encoding
        raise SliceWiseError(f"cannot read the parameters ({type(exc).__name__}: {exc})", path) from exc
    except YAMLError as exc:
        raise SliceWiseError(f"not valid YAML: {yaml_problem(exc)}", path) from exc
    try:
        return Settings.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
                             + e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise SliceWiseError(f"invalid parameters: {problems}", path) from exc


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based), and where the construct it broke
    began: an unclosed `[` or quote is found lines later, at the next thing that cannot belong to it."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    began = (f" ({context} at line {start.line + 1}, column {start.column + 1})"
             if context and start is not None and (mark is None or start.line != mark.line) else "")
    return f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}{where}{began}"
