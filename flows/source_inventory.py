"""Data-change trigger for `data.source: local`: did the source folders change since data/raw was fetched?

DVC cannot see a folder outside the repository, so its `fetch` stage stays "up to date" when a new patient
appears under `data.brats_dir`. Instead of keeping a record of the source (a file that the two front doors
would have to keep in step), this compares the source with data/raw itself: the files `fetch` would import
now (same discovery, same seeded patient_fraction subset, same target names as tasks/data/local_import.py) against
the files data/raw holds, by relative path, size and modification time. It is stateless, so it gives the same answer
after a `dvc repro` as after a flow run. A file counts as changed when its size differs or the source's copy is newer
than the fetched one by more than MTIME_SLACK_NS: `fetch` hard-links (one inode, one time) or copies keeping the time
(shutil.copy2, across file systems), and DVC's checkout writes later times still, so only an edit of the source after
the fetch makes it newer: a corrected segmentation saved over the old one has the same size (an uncompressed .nii
always does), and only its time tells. Not seen: a same-size file put back with an older time (`cp -p`, `rsync -a`).
Modification times, not ctime: linking and unlinking (DVC relinks data/raw) move an inode's ctime.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from tasks import paths
from tasks.config import Settings
from tasks.data.local_import import (brats_import_plan, find_brats_patients, find_kaggle_images, kaggle_import_plan,
                                     labelled_patients)

RAW_PARTS = ("brats", "kaggle")  # the only subfolders of data/raw that the local import writes
# A copy's time is the source's as the target file system keeps it: FAT and exFAT round to 2 s, which must not read
# as "newer" forever after.
MTIME_SLACK_NS = 2_000_000_000


class Stamp(NamedTuple):
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "Stamp":
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


def planned_raw_files(brats_dir: Path, kaggle_dir: Path | None, fraction: float, seed: int) -> dict[str, Stamp]:
    """Relative path under data/raw → size and time, for what `fetch` would import from the local folders now."""
    patients = labelled_patients(find_brats_patients(brats_dir))  # what import_brats imports
    planned = {f"brats/{target}": Stamp.of(src) for target, src in brats_import_plan(patients, fraction, seed).items()}
    if kaggle_dir is not None:
        plan = kaggle_import_plan(find_kaggle_images(kaggle_dir), fraction, seed)
        planned |= {f"kaggle/{target}": Stamp.of(src) for target, src in plan.items()}
    return planned


def fetched_raw_files(raw: Path = paths.RAW) -> dict[str, Stamp]:
    """Relative path under data/raw → size and time, for what the last fetch left there."""
    return {
        path.relative_to(raw).as_posix(): Stamp.of(path)
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
    changed = sorted(k for k in planned.keys() & fetched.keys() if planned[k].size != fetched[k].size
                     or planned[k].mtime_ns > fetched[k].mtime_ns + MTIME_SLACK_NS)
    if not (new or gone or changed):
        return None
    example = (new or gone or changed)[0]
    return (f"local source folders changed since the last fetch: {len(new)} new, {len(gone)} removed, "
            f"{len(changed)} changed file(s) (another size, or saved after the fetch), e.g. {example}")
