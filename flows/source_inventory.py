"""Data-change trigger for `data.source: local`: did the source folders change since data/raw was fetched?

DVC cannot see a folder outside the repository, so its `fetch` stage stays "up to date" when a new patient
appears under `data.brats_dir`. Instead of keeping a record of the source (a file that the two front doors
would have to keep in step), this compares the source with data/raw itself: the files `fetch` would import
now (same discovery, same seeded patient_fraction subset, same target names as tasks/data/local_import.py) against
the files data/raw holds, by relative path and size. It is stateless, so it gives the same answer after a
`dvc repro` as after a flow run. Sizes, not mtimes: `dvc checkout` restores files with new mtimes.
"""

from __future__ import annotations

from pathlib import Path

from tasks import paths
from tasks.config import Settings
from tasks.data.local_import import (choose_fraction, find_brats_patients, find_kaggle_images, labelled_patients,
                                     nifti_extension)

RAW_PARTS = ("brats", "kaggle")  # the only subfolders of data/raw that the local import writes


def planned_raw_files(brats_dir: Path, kaggle_dir: Path | None, fraction: float, seed: int) -> dict[str, int]:
    """Relative path under data/raw → size, for what `fetch` would import from the local folders right now."""
    patients = labelled_patients(find_brats_patients(brats_dir))  # what import_brats imports
    planned = {}
    for patient in choose_fraction(sorted(patients), fraction, seed):
        for part, src in patients[patient].items():
            planned[f"brats/{patient}/{patient}_{part}{nifti_extension(src)}"] = src.stat().st_size
    if kaggle_dir is not None:
        for label, files in find_kaggle_images(kaggle_dir).items():
            by_name = {f.name: f for f in files}
            for name in choose_fraction(sorted(by_name), fraction, seed) if by_name else []:
                planned[f"kaggle/{label}/{name}"] = by_name[name].stat().st_size
    return planned


def fetched_raw_files(raw: Path = paths.RAW) -> dict[str, int]:
    """Relative path under data/raw → size, for what the last fetch left there."""
    return {
        path.relative_to(raw).as_posix(): path.stat().st_size
        for part in RAW_PARTS
        for path in (raw / part).rglob("*")
        if path.is_file()
    }


def local_source_drift(settings: Settings, raw: Path = paths.RAW) -> str | None:
    """Why data/raw no longer matches the local source folders, or None when it does (or the source is not local).

    A missing source folder is not drift: `fetch` reports that itself, with the folder named, when it runs.
    """
    data = settings.data
    if data.source != "local" or data.brats_dir is None or not Path(data.brats_dir).expanduser().is_dir():
        return None
    kaggle_dir = Path(data.kaggle_dir).expanduser() if data.kaggle_dir else None
    planned = planned_raw_files(Path(data.brats_dir).expanduser(), kaggle_dir, settings.active.patient_fraction,
                                settings.seed)
    fetched = fetched_raw_files(raw)
    new = sorted(planned.keys() - fetched.keys())
    gone = sorted(fetched.keys() - planned.keys())
    resized = sorted(k for k in planned.keys() & fetched.keys() if planned[k] != fetched[k])
    if not (new or gone or resized):
        return None
    example = (new or gone or resized)[0]
    return (f"local source folders changed since the last fetch: {len(new)} new, {len(gone)} removed, "
            f"{len(resized)} resized file(s), e.g. {example}")
