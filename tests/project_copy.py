"""A throw-away copy of the project (code, dvc.yaml, params.yaml, a link to .venv) for end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tasks.params_edit import set_params

ROOT = Path(__file__).resolve().parents[1]
# Enough data for every stage to be meaningful, small enough for seconds per stage on 2 cores.
TINY = {
    "profiles.quick.synthetic_patients": 5,
    "profiles.quick.synthetic_kaggle_images": 6,
    "profiles.quick.image_size": 32,
    "profiles.quick.slice_stride": 8,
    "profiles.quick.model.base_channels": 4,
    "profiles.quick.model.depth": 2,
    "profiles.quick.epochs.seg": 1,
    "profiles.quick.epochs.cls": 1,
    "profiles.quick.epochs.joint": 1,
    "evaluate.bootstrap": 20,
    "export.latency_runs": 3,
}


def copy_project(dest: Path, stages: list[str] | None = None, tiny: bool = True, **updates: object) -> Path:
    """Copy the tracked and new (not ignored) files to `dest`, make it a git + DVC repo, shrink params.

    `stages` keeps only those DVC stages, for tests of part of the pipeline; `tiny=False` keeps the profiles
    as params.yaml has them (benchmarks).
    """
    copy_project_files(dest, leave_out=("tests/", "docs/", "dvc.lock"))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    if stages is not None:
        import yaml

        pipeline = yaml.safe_load((dest / "dvc.yaml").read_text())
        pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in stages}
        (dest / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    set_params({**(TINY if tiny else {}), "tracking.enabled": False, **updates}, dest / "params.yaml")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def copy_project_files(dest: Path, leave_out: tuple[str, ...]) -> None:
    """The project's files as git sees them (tracked and new, not ignored), but those whose path starts with one of
    `leave_out`, copied to `dest`: what a clone of the working tree holds."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in names:
        if (ROOT / name).is_file() and not name.startswith(leave_out):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def dvc(dest: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "dvc"), *args], cwd=dest, capture_output=True, text=True, timeout=timeout
    )
