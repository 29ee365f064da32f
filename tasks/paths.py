"""Every path the pipeline reads or writes, mirroring docs/CONTRACT.md.

All paths are relative to the project root (the working directory of `dvc repro`, the Prefect flow and
`python -m tasks`), so the same names appear here, in dvc.yaml and in the README.
"""

from pathlib import Path

ROOT = Path(".")
PARAMS = ROOT / "params.yaml"

RAW = ROOT / "data" / "raw"
RAW_BRATS = RAW / "brats"
KAGGLE_VERSIONS = RAW / "kaggle_versions.json"  # which Kaggle data set versions data/raw holds (data.source: kaggle)
DOWNLOADS = ROOT / "data" / "downloads"  # Kaggle archives, kept outside data/raw so a rerun can resume them

PROCESSED = ROOT / "data" / "processed"
MANIFEST = PROCESSED / "manifest.csv"
REJECTED = PROCESSED / "rejected.csv"
FINGERPRINTS = PROCESSED / "fingerprints.json"  # per patient: its raw files' digests and the slicing spec's

SPLITS = ROOT / "data" / "splits"

CHECKPOINTS = ROOT / "checkpoints"
STAGES = ("seg", "cls", "joint")

REPORTS = ROOT / "reports"
METRICS = REPORTS / "metrics.json"
PLOTS = REPORTS / "plots"
EXPORT_REPORT = REPORTS / "export.json"
REGISTER_REPORT = REPORTS / "register.json"

EXPORTS = ROOT / "exports"
ONNX_MODEL = EXPORTS / "model.onnx"

MLFLOW_DB_URI = "sqlite:///mlflow.db"
MLARTIFACTS = ROOT / "mlartifacts"
# Which MLflow parent run the steps of the current pipeline run log under (see tasks/tracking/mlflow_runs.py).
MLFLOW_PARENT_RUN = REPORTS / ".mlflow_parent_run"
EXPORT_METADATA = EXPORTS / "model.json"
# The served champion's files, one folder per registry version, so a restart needs no download (serve/).
SERVE_CACHE = ROOT / ".serve_cache"


def checkpoint_dir(stage: str) -> Path:
    """`checkpoints/<stage>/` for one of the three training stages."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {STAGES}")
    return CHECKPOINTS / stage


def best_checkpoint(stage: str) -> Path:
    return checkpoint_dir(stage) / "best.pt"


def last_checkpoint(stage: str) -> Path:
    return checkpoint_dir(stage) / "last.pt"


def history_file(stage: str) -> Path:
    """Per-epoch metrics of a stage, declared as DVC plots."""
    return REPORTS / "training" / f"{stage}.csv"


def timings_file(stage: str) -> Path:
    """What each epoch of a stage took (wall and CPU seconds), kept beside its history (tasks/training/resume.py)."""
    return timings_beside(history_file(stage))


def timings_beside(history: Path) -> Path:
    return history.with_name(f"{history.stem}_timings.csv")


def data_identity_files(processed: Path = PROCESSED, splits_dir: Path = SPLITS) -> list[Path]:
    """The small files that say which slices a model learns and is tested on: the manifest (every slice row), the slice
    step's per-patient fingerprints (raw file digests, slicing spec) and the three split lists. Training's resume key
    and the registry's data tag both hash them (tasks/data/datasets.py, tasks/tracking/provenance.py)."""
    return [processed / MANIFEST.name, processed / FINGERPRINTS.name,
            *(splits_dir / f"{name}.txt" for name in ("train", "val", "test"))]
