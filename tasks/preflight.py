"""What a run needs besides valid parameters, checked by `tasks check` (which `make run` runs before `dvc repro`)
and by `flows run` before the pipeline starts: DVC and the flow remove a changed stage's outputs before its step
runs, so a prerequisite the step itself finds missing has cost them already (data/raw for fetch; metrics.json and
the plots for evaluate)."""

from __future__ import annotations

from tasks import paths
from tasks.config import Settings


def check_prerequisites(settings: Settings) -> None:
    """A SliceWiseError naming what is missing: the local source folders, Kaggle credentials where fetch must download,
    the organisers' evaluation environment, the device `train.device` names."""
    from tasks.data.local_import import check_source_folders
    from tasks.evaluation.brats_reference import required_reference_python

    check_source_folders(settings.data, warn=False)  # fetch warns when it imports; this runs at every make run
    if settings.data.source == "kaggle" and not paths.KAGGLE_VERSIONS.exists():
        from tasks.data.kaggle_download import credentials_source

        # data/raw holds no Kaggle fetch, so fetch must download, and DVC removes data/raw first: no credentials is
        # said now. Over a Kaggle fetch (or one `dvc pull` brought) fetch may not run at all: run_warnings says it.
        credentials_source()
    if settings.evaluate.organisers_check:
        required_reference_python()
    if settings.train.device not in ("auto", "cpu"):  # the training steps refuse it, after DVC removed their reports
        from tasks.training.device import pick_device

        pick_device(settings.train.device)


def run_warnings(settings: Settings) -> list[str]:
    """What a run should know but need not stop for, said by both front doors before they start: an MLflow store
    whose artifacts lie in another project's folder, a newer version of a Kaggle data set than data/raw holds."""
    from tasks.release.store_moved import artifacts_elsewhere

    warnings = [moved] if (moved := artifacts_elsewhere()) else []
    if settings.data.source == "kaggle":
        from tasks.data.kaggle_download import newer_versions

        warnings += newer_versions(settings.data.kaggle_versions, paths.KAGGLE_VERSIONS)
    return warnings
