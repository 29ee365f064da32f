"""What a run needs besides valid parameters, checked by `tasks check` (which `make run` runs before `dvc repro`)
and by `flows run` before the pipeline starts: DVC and the flow remove a changed stage's outputs before its step
runs, so a prerequisite the step itself finds missing has cost them already (data/raw for fetch; metrics.json and
the plots for evaluate)."""

from __future__ import annotations

from pathlib import Path

from tasks import paths
from tasks.config import Settings, read_yaml
from tasks.errors import SliceWiseError

DVC_YAML = paths.ROOT / "dvc.yaml"


def check_params_dvc_reads(params: Path = paths.PARAMS, dvc_yaml: Path = DVC_YAML) -> None:
    """A SliceWiseError naming every key dvc.yaml's stages read that `params` lacks.

    The settings give a deleted key its default, so the file is valid to them; DVC refuses a stage whose listed key
    is missing, and only after `dvc repro` (or the flow) has removed that stage's outputs: deleting `seed` cost
    data/raw, `promotion` reports/register.json. `profiles.${profile}.x` follows the file's `profile`, as in DVC."""
    if not dvc_yaml.is_file():  # a folder DVC does not run in (`tasks check --params` on a copy elsewhere)
        return
    raw = read_yaml(params.read_text(encoding="utf-8")) or {}
    missing: dict[str, list[str]] = {}
    for stage, entry in (read_yaml(dvc_yaml.read_text(encoding="utf-8")).get("stages") or {}).items():
        for listed in entry.get("params") or []:  # a key, or {file: [keys]} for another file than params.yaml
            key = listed.replace("${profile}", str(raw.get("profile"))) if isinstance(listed, str) else None
            if key is not None and _lacks(raw, key):
                missing.setdefault(key, []).append(stage)
    if missing:
        keys = "; ".join(f"{key} (read by {', '.join(stages)})" for key, stages in missing.items())
        raise SliceWiseError(f"lacks {keys}: DVC refuses a stage whose key is missing, after it has removed the "
                             "stage's outputs; put the key back (its value in git: git show HEAD:params.yaml)", params)


def _lacks(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return False


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
