"""The names of files in the raw layout (data/raw/brats/<patient>/<patient>_<part>.nii[.gz], data/raw/kaggle/...):
which file of a patient folder is which part. The slice step, evaluation and the release's examples read the raw
layout through these; the slicer's code identity covers this module (not the whole importer), so an edit to how a
download is imported does not reslice every patient. File names become text here too (`is_utf8`, `shown`): the
manifest and rejected.csv are UTF-8.
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.errors import SliceWiseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
NOT_UTF8 = "file name is not valid UTF-8 (the manifest and rejected.csv are UTF-8 text); rename it"


def nifti_extension(path: Path) -> str:
    match = _NIFTI.search(path.name)
    return match.group(0).lower() if match else ""


def find_part(patient_dir: Path, part: str) -> Path:
    """The NIfTI file of one modality (or `seg`) in a BraTS patient folder (`<patient>_flair.nii.gz`, ...)."""
    for path in sorted(patient_dir.iterdir()):
        ext = nifti_extension(path)
        if ext and path.name[: -len(ext)].lower().endswith(f"_{part}"):
            return path
    what = "segmentation" if part == "seg" else f"modality {part}"
    raise SliceWiseError(f"missing {what}", patient_dir)


def is_utf8(name: str) -> bool:
    """Whether a file name is text UTF-8 can write: os.listdir gives undecodable bytes as lone surrogates."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(path: Path | str) -> str:
    """`path` as UTF-8 text, undecodable bytes as \\xNN escapes (for rejected.csv)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
