"""The names of files in the raw layout (data/raw/brats/<patient>/<patient>_<part>.nii[.gz], data/raw/kaggle/...):
which file of a patient folder is which part. The slice step, evaluation and the release's examples read the raw
layout through these; the slicer's code identity covers this module (not the whole importer), so an edit to how a
download is imported does not reslice every patient. File names become text here too (`name_problem`, `shown`): the
manifest and rejected.csv are UTF-8.
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.errors import SliceWiseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
NOT_UTF8 = "file name is not valid UTF-8 (the manifest and rejected.csv are UTF-8 text); rename it"
LINE_BREAK = "file name holds a line break (the split lists hold one name per line); rename it"
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits at


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


def name_problem(name: str) -> str | None:
    """Why a file name cannot name a patient or an image (it becomes an id in the manifest and a line in the split
    lists), or None. A line break (any that str.splitlines knows) would split one id into two lines: another
    patient's name, which the split would then put in two sets."""
    if not is_utf8(name):
        return NOT_UTF8
    return None if name.splitlines() == [name] else LINE_BREAK


def shown(path: Path | str) -> str:
    """`path` as one line of UTF-8 text, undecodable bytes as \\xNN escapes and line breaks as \\n, \\r, ...
    (rejected.csv: a bare \\r would split its row in two)."""
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c.encode("unicode_escape").decode("ascii") if c in LINE_BREAKS else c for c in text)
