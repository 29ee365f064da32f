"""Import a downloaded BraTS 2020 training folder and a Kaggle yes/no folder into the canonical raw layout.

Real downloads are messy: nested folders, `.nii` next to `.nii.gz`, upper-case extensions, CSV files lying
around, patient 355 whose segmentation is called `W39_1998.09.19_Segm.nii`, BraTS 2023's names
(`BraTS-GLI-00000-000-t2f.nii.gz`: t2f, t1n, t1c, t2w for FLAIR, T1, T1ce, T2), macOS's `._*` shadow files and
`__MACOSX` folders from an archive, folders linked in by symlink. Everything is found recursively (following
folder links) and linked (or copied across file systems) into
    data/raw/brats/<patient>/<patient>_<modality>.nii[.gz]   and   data/raw/kaggle/{yes,no}/<image>
Nothing is judged here: a patient with a missing modality is still imported, and the slice step rejects it
with a reason in rejected.csv, so the user sees every problem in one place.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from tasks import paths
from tasks.data.brats_files import IMAGE_SUFFIXES, find_part, nifti_extension  # noqa: F401  (re-exported)
from tasks.errors import SliceWiseError

log = logging.getLogger(__name__)
# Set while check_source_folders(warn=False) runs: its own warnings are dropped, in its own thread or task only (the
# logger's level is shared: lowering it silenced a fetch importing at the same time in another thread).
_checking_quietly = contextvars.ContextVar("checking_quietly", default=False)


class _QuietWhileChecking(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _checking_quietly.get()


log.addFilter(_QuietWhileChecking())

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# Each part's names: BraTS 2017-2021 (`_flair`), then BraTS 2023+ (`-t2f`); the name must end right before the
# extension, so `_t1ce` is never taken for `_t1`, nor `-t1c` for `-t1n`.
PART_NAMES = {"flair": ("flair", "t2f"), "t1ce": ("t1ce", "t1c"), "t1": ("t1", "t1n"), "t2": ("t2", "t2w"),
              "seg": ("seg",)}
_PART_PATTERNS = [(part, re.compile(rf"[-_](?:{'|'.join(names)})\.nii(\.gz)?$", re.IGNORECASE))
                  for part, names in PART_NAMES.items()]
# BraTS20_Training_355's label file, `W39_1998.09.19_Segm.nii`: the one known odd name. Not "seg" anywhere in a name:
# a prediction saved beside a validation case (`..._segmentation_pred.nii`) became its ground truth.
_ODD_SEG = re.compile(r"_segm\.nii(\.gz)?$", re.IGNORECASE)


def classify_brats_file(path: Path) -> str | None:
    """Which BraTS part (flair, t1, t1ce, t2, seg) a NIfTI file is, or None for anything else."""
    if not nifti_extension(path):
        return None
    for part, pattern in _PART_PATTERNS:
        if pattern.search(path.name):
            return part
    return "seg" if _ODD_SEG.search(path.name) else None


def is_shadow(path: Path) -> bool:
    """macOS's AppleDouble `._name` files and `__MACOSX/` folders (from an archive made on a Mac): metadata, never
    data, yet named like the file they shadow."""
    return path.name.startswith("._") or "__MACOSX" in path.parts


# Folders a file system or an OS keeps for itself, unreadable to users on a drive's root: never data.
SYSTEM_FOLDERS = {"lost+found", "$recycle.bin", "system volume information", ".trashes", ".spotlight-v100",
                  ".fseventsd", ".documentrevisions-v100", ".temporaryitems"}


def _unreadable_folder(exc: OSError) -> None:
    """os.walk's error hook: a folder it cannot list would silently take its patients with it. A system folder
    (lost+found, .Trashes, ...) is skipped with a warning; a folder gone meanwhile or a dangling link held nothing."""
    if isinstance(exc, FileNotFoundError):
        return
    if Path(str(exc.filename)).name.lower() in SYSTEM_FOLDERS:
        log.warning("skipped the system folder %s (%s)", exc.filename, exc.strerror or exc)
        return
    raise SliceWiseError(f"cannot read this folder ({exc.strerror or exc}); its files would be left out",
                         exc.filename) from exc


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, sorted, following folder links (a data set assembled with symlinks) but never into
    a folder twice (a link loop), and leaving out macOS shadow files. An unreadable folder is an error naming it.

    A folder reached both by its own path and through a link is taken by its own path: the real folders are walked
    first, the links after them in sorted order. (os.walk following links kept whichever path it listed first, so a
    link `latest` beside `BraTS20_Training_001` named the patient `latest` on one disk and not on another.)"""
    found, seen, tops = [], set(), [root]
    while tops:  # a round of walks without following links; the links they pass, sorted, are the next round's tops
        links = []
        for top in tops:
            for folder, subfolders, files in os.walk(top, onerror=_unreadable_folder):
                real = os.path.realpath(folder)
                if real in seen:
                    subfolders[:] = []
                    continue
                seen.add(real)
                links += [Path(folder) / name for name in subfolders if os.path.islink(os.path.join(folder, name))]
                found += [Path(folder) / name for name in files]
        tops = sorted(links)
    # a dangling link is no file (rglob + is_file() skipped it too); a link to a file counts as that file
    kept = [p for p in found if not is_shadow(p.relative_to(root))]
    for path in kept:
        if path.is_symlink() and not path.is_file():
            # left out, but said: the patient is then rejected for a "missing modality" whose file the user can see
            log.warning("left out %s: %s", path, _broken_link(path))
    return sorted(p for p in kept if p.is_file())


def _broken_link(path: Path) -> str:
    """Why the symbolic link `path` leads to no file: a loop, a target that is gone, or one that is no file."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link that loops (it leads back to itself)"
        if isinstance(exc, FileNotFoundError):
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return f"a symbolic link that cannot be followed ({exc.strerror or exc})"
    return f"a symbolic link to {os.readlink(path)}, which is no file"


def patient_id_of(path: Path) -> str | None:
    """The patient a BraTS file names before its part (`BraTS20_Training_001` of `BraTS20_Training_001_flair.nii`,
    `BraTS-GLI-00000-000` of `BraTS-GLI-00000-000-t2f.nii.gz`); None for an odd name that says none."""
    for _, pattern in _PART_PATTERNS:
        if match := pattern.search(path.name):
            return path.name[: match.start()] or None
    return None


def find_brats_patients(root: Path, files: list[Path] | None = None) -> dict[str, dict[str, Path]]:
    """Patient folder name → {part: file}, for every folder under `root` holding at least one BraTS NIfTI.

    Two different folders with one patient name are an error naming both: merging their files would build one
    patient from two (a T2 from one site, the rest from another), and keeping either would hide the other. So is a
    folder whose files name several patients (all patients in one folder, or another patient's file strayed in):
    the folder is the patient, and its parts must be one person's.
    `files`: `walk_files(root)`, when the caller has it already."""
    patients: dict[str, dict[str, Path]] = {}
    folders: dict[str, Path] = {}  # folder name, case folded → the folder
    named: dict[Path, dict[str, Path]] = {}  # folder → {patient id in a file name, case folded: one such file}
    folder_of_id: dict[str, Path] = {}  # patient id in file names, case folded → the folder holding them
    for path in walk_files(root) if files is None else files:
        if (part := classify_brats_file(path)) is None:
            continue
        name = path.parent.name
        # names compared without case: BraTS20_Training_001 and brats20_training_001 are one patient (a copy), and
        # the split could put one in train and the other in test
        if folders.setdefault(name.casefold(), path.parent) != path.parent:
            raise SliceWiseError(f"two folders hold patient {name}: {folders[name.casefold()]} and {path.parent}; "
                                 "keep one (or rename one folder)", root)
        if (patient_id := patient_id_of(path)) is not None:
            # a copy under another folder name ("BraTS20_Training_003 (copy)") is the same person twice: the split
            # could put one in train and the other in test
            if folder_of_id.setdefault(patient_id.casefold(), path.parent) != path.parent:
                raise SliceWiseError(f"two folders hold patient {patient_id}'s files: "
                                     f"{folder_of_id[patient_id.casefold()]} and {path.parent}; keep one", root)
            ids = named.setdefault(path.parent, {})
            ids.setdefault(patient_id.casefold(), path)
            if len(ids) > 1:
                first, second = list(ids.values())[:2]
                raise SliceWiseError(f"this folder holds files of more than one patient ({first.name}, "
                                     f"{second.name}); put each patient's files in a folder of its own",
                                     path.parent)
        parts = patients.setdefault(name, {})
        regular = patient_id_of(path) is not None
        if part in parts and (patient_id_of(parts[part]) is not None) == regular:  # two regular, or two odd names
            # `x_flair.nii` beside `x_flair.nii.gz` (a `gunzip -k`, or another scan copied in): which is the patient?
            raise SliceWiseError(f"two {part} files for patient {name}: {parts[part].name} and {path.name}; keep one",
                                 path.parent)
        # Prefer a regular `_seg` file over an odd name (patient 355's), and never let an odd one replace it.
        if part not in parts or (part == "seg" and regular):
            parts[part] = path
    return patients


def labelled_patients(patients: dict[str, dict[str, Path]], source: Path | None = None) -> dict[str, dict[str, Path]]:
    """The patients with a segmentation. A folder without one is an unlabelled case: BraTS ships its validation and
    test sets so, and the Kaggle download of BraTS 2020 holds 125 validation cases next to the 369 training ones.
    Imported, each would be a `rejected.csv` row and take a place in `patient_fraction`'s choice; with `source`, the
    log says how many were left out."""
    labelled = {name: parts for name, parts in patients.items() if "seg" in parts}
    if source is not None and (unlabelled := sorted(patients.keys() - labelled.keys())):
        log.warning("%d patient folder(s) under %s hold no segmentation (unlabelled cases, e.g. BraTS's validation "
                    "set) and are not imported: %s%s", len(unlabelled), source, ", ".join(unlabelled[:5]),
                    ", ..." if len(unlabelled) > 5 else "")
    return labelled


def unextracted_archives(files: list[Path]) -> list[Path]:
    """Archives among a data folder's files: whatever they hold is not imported until they are extracted."""
    return [p for p in files if p.name.lower().endswith(ARCHIVE_SUFFIXES)]


def find_kaggle_images(root: Path) -> dict[str, list[Path]]:
    """{'yes': [...], 'no': [...]} from the first folders named yes/no (any case) under `root`, in path order: the
    Kaggle download holds its images twice (`yes/` and `brain_tumor_dataset/yes/`), and both copies would count each
    scan twice. What is left out is named in warnings, never dropped silently: other yes/no folders with images,
    folders inside the chosen ones, and files in them that are not JPEG/PNG."""
    found: dict[str, list[Path]] = {"yes": [], "no": []}
    chosen: dict[str, Path] = {}
    skipped: list[Path] = []
    images_in = {}  # folder → its image files
    for path in walk_files(root):
        images_in.setdefault(path.parent, []).append(path)
    for folder in sorted(images_in):
        label = folder.name.lower()
        if label in found and label not in chosen and any(p.suffix.lower() in IMAGE_SUFFIXES
                                                          for p in images_in[folder]):
            chosen[label] = folder
            found[label] = [p for p in images_in[folder] if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in images_in[folder] if p.suffix.lower() not in IMAGE_SUFFIXES]
    left_out = sorted(folder for folder, files in images_in.items() if folder not in chosen.values()
                      and (folder.name.lower() in found or any(c in folder.parents for c in chosen.values()))
                      and any(p.suffix.lower() in IMAGE_SUFFIXES for p in files))
    if left_out:
        log.warning("imported only the first yes/ and no/ folders (%s); left out %d other folder(s) with images: %s",
                    ", ".join(str(f) for f in chosen.values()), len(left_out),
                    ", ".join(f"{f} ({sum(p.suffix.lower() in IMAGE_SUFFIXES for p in images_in[f])} images)"
                              for f in left_out[:10]) + (", ..." if len(left_out) > 10 else ""))
    if skipped:
        log.warning("left out %d file(s) in the yes/no folders that are not JPEG or PNG images: %s", len(skipped),
                    ", ".join(str(p) for p in skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
    return found


# What a file of each kind starts with (a .nii: sizeof_hdr, NIfTI-1 or -2, in either byte order)
MAGIC = {".nii.gz": (b"\x1f\x8b",),
         ".nii": tuple(size.to_bytes(4, order) for size in (348, 540) for order in ("little", "big")),
         ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",), ".png": (b"\x89PNG\r\n\x1a\n",)}


def check_link(src: Path, source: Path) -> None:
    """A file that is a link to somewhere outside the source folder must hold what its name says. A link in a
    downloaded archive can point at any file of this machine (~/.kaggle/kaggle.json, ~/.ssh/...), which data/raw
    would take in and DVC version and push; a data set assembled from links to another folder still imports."""
    real = Path(os.path.realpath(src))
    if real.is_relative_to(os.path.realpath(source)):
        return
    kind = nifti_extension(src) or src.suffix.lower()
    with open(real, "rb") as head:
        start = head.read(8)
    if not any(start.startswith(magic) for magic in MAGIC.get(kind, ())):
        raise SliceWiseError(f"is a link to {real}, outside {source}, and that file is not a {kind} file; refused (a "
                             "link in a downloaded archive can point at any file on this machine): remove the link",
                             src)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (no extra disk for data/raw itself; DVC's cache still keeps a copy), copy otherwise."""
    src = Path(os.path.realpath(src))  # a symlinked file: its target (os.link would link the link itself)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except FileExistsError:
            # Two source files under one name here (a file system that ignores case: Y1.jpg and y1.JPG). Copying
            # over it would write through its hard link into the first file's source: the user's own data.
            raise SliceWiseError(f"cannot be imported as {dst}: another file of the source folder was imported "
                                 "under that name already (this file system does not tell their names apart); "
                                 "rename one of them", src) from None
        except OSError:  # another file system, or one without hard links
            shutil.copy2(src, dst)
    except OSError as exc:  # unreadable, or a name this file system cannot hold (too long)
        raise SliceWiseError(f"cannot be imported as {dst} ({type(exc).__name__}: {exc.strerror or exc})",
                             src) from exc


def choose_fraction(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded subset of `names` (at least one), so smaller profiles use fewer patients reproducibly. Each name is
    in or out on its own (a hash of seed and name below `fraction`), so adding a patient to the folder never
    changes which of the others are used: the slice step then reslices only the new one."""
    if fraction >= 1.0 or not names:
        return names
    draw = {name: _uniform(seed, name) for name in names}
    picked = [name for name in names if draw[name] < fraction]
    return picked or [min(names, key=draw.get)]


def _uniform(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# The pipeline's own folders: fetch replaces data/raw whole, and DVC removes a stage's outputs before it reruns the
# stage, so a source inside one would be deleted by the very run that reads it.
PIPELINE_FOLDERS = (paths.RAW, paths.PROCESSED, paths.SPLITS, paths.CHECKPOINTS, paths.REPORTS, paths.EXPORTS)


def check_source_folders(data, warn: bool = True) -> None:
    """With `data.source: local` (`data`: settings.data), the folders it imports from exist, lie outside the
    pipeline's own folders and hold what fetch would import: said by `tasks check` (make run) and `flows run` before
    the pipeline starts, since DVC (and the flow alike) remove data/raw before they run a changed fetch.
    `warn=False`: errors only; what fetch warns of when it imports (archives not extracted, cases without labels,
    links to nothing) is left to it, instead of being said again at every `make run`."""
    if data.source != "local":
        return
    quiet = _checking_quietly.set(not warn)
    try:
        for key, folder in (("data.brats_dir", data.brats_dir), ("data.kaggle_dir", data.kaggle_dir)):
            if folder is not None:
                check_source_folder(key, Path(folder).expanduser())
        if data.brats_dir is not None:
            labelled_brats_patients(Path(data.brats_dir).expanduser())
        if data.kaggle_dir is not None:
            kaggle_images(Path(data.kaggle_dir).expanduser())
    finally:
        _checking_quietly.reset(quiet)


def check_source_folder(key: str, folder: Path) -> None:
    """`folder` (params key `key`) is a folder, neither inside nor holding one of the pipeline's own folders."""
    if not folder.is_dir():
        raise SliceWiseError(f"{key} is not a folder", folder)
    real = Path(os.path.realpath(folder))
    for owned in PIPELINE_FOLDERS:
        owned_real = Path(os.path.realpath(owned))
        if real.is_relative_to(owned_real):
            raise SliceWiseError(f"{key} lies inside {owned.as_posix()}/, which the pipeline empties and refills when "
                                 "it runs (the files it does not import would be deleted); move the data elsewhere, "
                                 "e.g. beside the project", folder)
        if owned_real.is_relative_to(real):
            raise SliceWiseError(f"{key} holds the pipeline's own {owned.as_posix()}/; point it at the folder with the "
                                 "downloaded data itself", folder)


def labelled_brats_patients(source: Path) -> dict[str, dict[str, Path]]:
    """`find_brats_patients` of `source`, keeping those with a segmentation; a SliceWiseError when none is left."""
    files = walk_files(source)  # one walk of a folder that may hold thousands of files
    patients = find_brats_patients(source, files)
    if archives := unextracted_archives(files):
        log.warning("%d archive(s) under %s are not extracted, so nothing in them is imported: %s", len(archives),
                    source, ", ".join(str(p) for p in archives[:10]))
    if not patients:
        raise SliceWiseError("no BraTS NIfTI files (*_flair.nii[.gz], ... or BraTS 2023's *-t2f.nii.gz, ...) found "
                             "under this folder" + (" (extract its archives first)" if archives else ""), source)
    found = len(patients)
    patients = labelled_patients(patients, source)
    if not patients:
        raise SliceWiseError(f"none of the {found} BraTS patient folders under this folder holds a segmentation "
                             "(*_seg.nii[.gz]): unlabelled cases (a validation or test set?) cannot be trained on",
                             source)
    return patients


def import_brats(source: Path, out_dir: Path, fraction: float = 1.0, seed: int = 0) -> int:
    check_source_folder("data.brats_dir", source)
    patients = labelled_brats_patients(source)
    plan = brats_import_plan(patients, fraction, seed)
    for target, src in plan.items():
        check_link(src, source)
        link_or_copy(src, out_dir / target)
    chosen = len({target.split("/")[0] for target in plan})
    log.info("imported %d of %d BraTS patients from %s", chosen, len(patients), source)
    return chosen


def brats_import_plan(patients: dict[str, dict[str, Path]], fraction: float, seed: int) -> dict[str, Path]:
    """What import_brats writes: `<patient>/<patient>_<part><ext>` (under data/raw/brats) → its source file, for the
    seeded `fraction` of the labelled `patients` (find_brats_patients). The flow's data-change trigger plans with it
    too (flows/source_inventory.py), so the two never disagree on a name."""
    return {f"{patient}/{patient}_{part}{nifti_extension(src)}": src
            for patient in choose_fraction(sorted(patients), fraction, seed)
            for part, src in patients[patient].items()}


def kaggle_import_plan(images: dict[str, list[Path]], fraction: float, seed: int) -> dict[str, Path]:
    """What import_kaggle writes: `<yes|no>/<image name>` (under data/raw/kaggle) → its source file, for the seeded
    `fraction` of each class of `images` (find_kaggle_images)."""
    plan = {}
    for label, files in images.items():
        by_name = {f.name: f for f in files}
        plan |= {f"{label}/{name}": by_name[name] for name in choose_fraction(sorted(by_name), fraction, seed)}
    return plan


def kaggle_images(source: Path) -> dict[str, list[Path]]:
    """`find_kaggle_images` of `source`; a SliceWiseError when it finds none."""
    images = find_kaggle_images(source)
    if not any(images.values()):
        raise SliceWiseError("no yes/ or no/ folder with JPEG/PNG images found under this folder", source)
    if missing := [label for label, files in images.items() if not files]:
        log.warning("%s: no %s/ folder with JPEG/PNG images: the classifier gets photos of one class only, and the "
                    "photos' sensitivity or specificity cannot be measured", source, missing[0])
    return images


def import_kaggle(source: Path, out_dir: Path, fraction: float = 1.0, seed: int = 0) -> dict[str, int]:
    check_source_folder("data.kaggle_dir", source)
    images = kaggle_images(source)
    plan = kaggle_import_plan(images, fraction, seed)
    for target, src in plan.items():
        check_link(src, source)
        link_or_copy(src, out_dir / target)
    counts = {label: sum(target.startswith(f"{label}/") for target in plan) for label in images}
    log.info("imported Kaggle images %s from %s", counts, source)
    return counts
