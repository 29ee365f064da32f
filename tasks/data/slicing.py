"""Raw volumes and images → z-scored 2D axial slices in one shard per patient + a manifest (`slice`).

BraTS: each modality volume is turned to the display orientation (tasks/data/orientation.py: anterior up, whichever
way it is stored), z-scored over its brain voxels, axial slices are taken every `slice_stride` slices, slices with
(almost) no brain are dropped, and everything is resized to the profile's image size with its label map (nearest
neighbour) in the BraTS 2020 convention, 0/1/2/4 (a 2023-style segmentation, enhancing tumour 3, is mapped per
patient by tasks/data/regions.py; an unknown label set is rejected naming the labels).
Kaggle images (tasks/data/photo_slicing.py): grayscale of unknown sequence, same size and normalisation, in the
FLAIR channel (channel 0) with the other channels all zero, label from their folder, one shard per class. Bad inputs
are skipped and listed in rejected.csv (file, reason). Patients are processed in parallel, one volume set in memory
per worker: by default on a local process pool; the caller may pass another `map_jobs` (the Prefect flow's Dask
cluster, flows/dask_slicing.py), which changes where the per-patient jobs run, never what they produce.

data/processed is a persistent DVC output: a patient whose files and slicing parameters are unchanged
keeps its shard (matched by a fingerprint), so new patients are sliced without redoing the old ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from rich.progress import Progress

from tasks import paths
from tasks.config import SliceSettings
from tasks.data import brats_files, gzip_nifti, orientation, preprocess, regions, shards, volumes
from tasks.data.brats_files import find_part, name_problem, shown
from tasks.data.file_digests import FileDigests, digest_record
from tasks.data.orientation import Orientation
from tasks.data.photo_slicing import slice_kaggle
from tasks.data.process_pool import process_pool
from tasks.data.shards import MANIFEST_COLUMNS, Shard, manifest_rows, read_manifest, shard_problem, write_shard
from tasks.data.volumes import brats2020_labels, load_volume, same_grid
from tasks.errors import SliceWiseError
from tasks.io import atomic_write, code_identity, write_text_atomic

log = logging.getLogger(__name__)

FINGERPRINTS = paths.FINGERPRINTS.name
# Patients rejected by the last complete run, with the fingerprint they had then and their rejected.csv row: one still
# unchanged is rejected again without reading its volumes (it was loaded whole on every run, only to be rejected).
REJECTED_FINGERPRINTS = "rejected_fingerprints.json"

# Runs fn(*args) for every args tuple of jobs, wherever it likes; yields the results in the order of jobs.
JobMap = Callable[[Callable[..., Any], list[tuple]], Iterable[Any]]

SLICES_PER_STACK = 16  # kept slices z-scored in one numpy call
# Raw MRI intensities are not negative (BraTS stores them >= 0); a volume whose negative voxels sum to more than this
# share of its positive ones was standardised before (a z-scored one: about all of it).
MAX_NEGATIVE_SHARE = 0.05
UNEXPECTED = "unexpected error while slicing"  # a rejected row's reason when no check of ours named the problem
# The manifest marks a complete run; while a run rewrites shards in place it is moved here, so that a run that fails
# halfway leaves no manifest naming rows the shards no longer hold (the next run still reads it to reuse shards).
PREVIOUS_MANIFEST = ".manifest.previous.csv"
# The patients a run has finished, one JSON line each (name, fingerprint, manifest rows) appended as each job ends:
# a run killed halfway (the OOM killer, Ctrl-C) keeps them, and the next run reuses their shards as it reuses those of
# a complete run. The run that completes has them in its manifest and fingerprints, and removes the file.
JOURNAL = ".sliced.partial.jsonl"


@dataclass(frozen=True)
class SliceSpec:
    """Everything that determines a shard besides its input files."""

    modalities: tuple[str, ...]
    image_size: int
    stride: int
    min_brain_fraction: float

    def digest(self) -> str:
        # every module that shapes a shard or its manifest rows: reading, preprocessing, labels, the shard format
        # and manifest rows, which file is which modality
        code = b"".join(code_identity(Path(mod.__file__))
                        for mod in (preprocess, regions, volumes, gzip_nifti, shards, brats_files, orientation))
        code += code_identity(Path(__file__))
        return hashlib.sha256(json.dumps(self.__dict__).encode() + code).hexdigest()[:16]


def patient_fingerprint(patient_dir: Path, spec_digest: str, digests: FileDigests | None = None) -> str:
    """Identity of a patient's inputs: names, sizes and content hashes of its files + the spec.

    Content, not modification times: DVC re-links files from its cache and a re-fetch hard-links them from
    the source again, so times change while the data does not. Times only decide whether `digests` may reuse
    the content hash it recorded for a file last time.
    """
    stats = []
    for path in sorted(p for p in patient_dir.iterdir() if p.is_file()):
        if digests is not None:
            sha1 = digests.sha1(path)
        else:
            with path.open("rb") as fh:
                sha1 = hashlib.file_digest(fh, "sha1").hexdigest()
        stats.append((path.name, path.stat().st_size, sha1))
    return hashlib.sha256(json.dumps([stats, spec_digest]).encode()).hexdigest()[:16]


def check_one_patient_per_scan(patient_dirs: list[Path], modalities: tuple[str, ...], digests: FileDigests) -> None:
    """Refuses two patient folders holding the same scan, byte for byte, before anything is sliced.

    The import refuses a patient's second folder by its names (tasks/data/local_import.py), but a copy renamed through
    and through (a BraTS 2020 patient filed again as a 2021 one) names none of them: the split would put one person in
    train and in test. The digests are the fingerprints' own, so this reads no file again. The segmentations are left
    out: two tumour-free patients may well have the same empty label map."""
    first_holder: dict[str, Path] = {}
    for patient_dir in patient_dirs:
        for modality in modalities:
            try:
                path = find_part(patient_dir, modality)
            except SliceWiseError:  # a missing modality: that patient's own rejection, when it is sliced
                continue
            other = first_holder.setdefault(digests.sha1(path), path)
            if other.parent != patient_dir:
                raise SliceWiseError(f"{path.name} is the same file, byte for byte, as {other}: one scan under two "
                                     "patient names, which the split could put in train and in test; keep one of the "
                                     "two folders", patient_dir)


def slice_patient(patient_dir: Path, spec: SliceSpec) -> Shard:
    """One BraTS patient folder → a Shard of its brain-containing axial slices."""
    modality_paths = [find_part(patient_dir, modality) for modality in spec.modalities]
    seg_path = find_part(patient_dir, "seg")  # every file found before any is read: a missing one costs nothing
    loaded = [load_volume(path) for path in modality_paths] + [load_volume(seg_path, labels=True)]
    first = loaded[0]
    for name, path, volume in zip(spec.modalities + ("seg",), modality_paths + [seg_path], loaded):
        if volume.data.shape != first.data.shape:
            raise SliceWiseError(f"shape mismatch: {name} {volume.data.shape} vs {spec.modalities[0]} "
                                 f"{first.data.shape}", patient_dir)
        if not same_grid(volume.affine, first.affine):  # same shape, other place: its voxels are other anatomy
            if volume.oriented != first.oriented:  # co-registering is not the fix: the header lost its transform
                unstated = path if not volume.oriented else modality_paths[0]
                raise SliceWiseError(f"{unstated.name}'s header states no orientation (qform_code and sform_code are "
                                     "0) while the other files' headers do, so its grid cannot be matched to theirs; "
                                     "write their voxel-to-world transform into it (nibabel: set_sform, code 1)",
                                     patient_dir)
            raise SliceWiseError(f"{path.name} is not on {modality_paths[0].name}'s grid (their affines differ: "
                                 "shifted, flipped or resampled); co-register the modalities first", patient_dir)
    # every array turned to the display orientation (views): whichever way a volume is stored, its slices show
    # anterior up, the patient's right on the left (tasks/data/orientation.py)
    try:
        shown = Orientation.of(first.affine)
    except ValueError as exc:
        raise SliceWiseError(str(exc), modality_paths[0]) from exc
    volumes, spacing = [shown.display(v.data) for v in loaded[:-1]], shown.display_spacing(first.spacing)
    labels = shown.display(brats2020_labels(loaded[-1].data, seg_path))

    planes = [preprocess.axial_planes(v) for v in volumes]  # (Z, H, W) views: each plane in one run of memory
    positive = [p > 0 for p in planes]  # each modality's brain; the union is the brain the slices are kept by
    for path, plane, mask in zip(modality_paths, planes, positive):
        if not mask.any():  # it would become a blank channel, the model's "missing modality", without a word
            raise SliceWiseError("no voxel has a positive intensity (all zero, negative or NaN): an empty or already "
                                 "standardised volume; the slice step z-scores raw intensities itself", path)
        if plane.min() >= 0:  # a raw volume: one pass, no temporary
            continue
        # How negative, not how many: a raw float volume resampled with a ringing kernel has a thin halo just below 0
        # around the brain (Lanczos-3: 6 % of the non-zero voxels, 0.4 % of the intensity); a z-scored one has as
        # much below 0 as above, a [-1, 1]-scaled one more
        below, above = -float(plane[plane < 0].sum(dtype=np.float64)), float(plane[mask].sum(dtype=np.float64))
        if below > MAX_NEGATIVE_SHARE * above:
            # the brain is the voxels > 0: such a volume would lose its darker half to the background, silently
            raise SliceWiseError(f"the negative voxels sum to {below / above:.0%} of the positive ones: an "
                                 "already standardised volume (z-scored or scaled to [-1, 1]); the slice step needs "
                                 "raw intensities, with 0 outside the brain, and z-scores them itself", path)
    brain = functools.reduce(np.logical_or, positive)
    fraction = np.count_nonzero(brain, axis=(1, 2)) / brain[0].size
    keep = [z for z in range(0, len(brain), spec.stride) if fraction[z] >= spec.min_brain_fraction]
    if not keep:
        raise SliceWiseError("no slice contains brain tissue (all-zero volume?)", patient_dir)

    # Each modality is z-scored over its own brain voxels (the same arithmetic, voxel by voxel, as z-scoring the whole
    # volume) in stacks of kept slices, resized when the profile's size is not the volume's, and stored as float16.
    # Outside the brain's box (its rows and columns in any plane) every value is 0: only the box is computed, about
    # 40 % of a BraTS plane. Stacks save per-slice numpy calls; bounding them bounds the memory they take.
    size = spec.image_size
    box = (slice(None),) + preprocess.bounding_box(brain.any(axis=0))
    resized = brain.shape[1:] != (size, size)
    images = np.zeros((len(keep), len(volumes), size, size), dtype=np.float16)
    for c, (path, modality, mask) in enumerate(zip(modality_paths, planes, positive)):
        stats = preprocess.foreground_stats(modality, mask)
        # a flat brain's deviation reads as 1 (foreground_stats): only then are its voxels compared (60 ms a volume)
        if stats is None or stats[1] == 1.0 and (values := modality[mask]).max() == values.min():
            raise SliceWiseError("every brain voxel has the same value: a mask or a placeholder, not an MRI volume; "
                                 "z-scored, it would become a blank channel, the model's \"missing modality\"", path)
        for start in range(0, len(keep), SLICES_PER_STACK):
            zs = keep[start:start + SLICES_PER_STACK]
            inside = modality[box][zs]  # a copy of the box alone, z-scored in place
            preprocess.apply_zscore(inside, mask[box][zs], stats, out=inside)
            if resized:
                stack = np.zeros((len(zs),) + brain.shape[1:], dtype=np.float32)
                stack[box] = inside
                images[start:start + len(zs), c] = [preprocess.resize_image(plane, size) for plane in stack]
            else:
                images[start:start + len(zs), c][box] = inside
    masks = preprocess.axial_planes(labels)[keep].astype(np.uint8, copy=False)
    if masks.shape[1:] != (size, size):
        masks = np.stack([preprocess.resize_labels(plane, size) for plane in masks])
    # each axis resized from its own length to `size` (a non-square slice is stretched, not padded)
    # (x, y) pixel sizes after resizing, and the slice thickness: a re-stacked volume's HD95 needs its real z spacing
    in_plane = np.array(spacing[:2], dtype=np.float32) * np.array([n / size for n in volumes[0].shape[:2]], np.float32)
    return Shard(
        images=images,
        masks=masks,
        has_mask=np.ones(len(keep), dtype=bool),
        labels=(masks.reshape(len(keep), -1).max(axis=1) > 0).astype(np.uint8),
        slice_index=np.array(keep, dtype=np.int16),
        spacing=np.append(in_plane, np.float32(spacing[2])).astype(np.float32),
    )


@dataclass(frozen=True)
class Rejection:
    """A patient the slice step leaves out: its rejected.csv row, and whether a check of ours named the problem (a
    property of the files, remembered until they change) or not (an error no check foresaw may be this run's: a file
    being written; the next run reads the patient again). A disk's error is neither: the step fails instead."""

    row: dict
    named: bool


def _slice_patient_job(patient_dir: Path, shard_path: Path, spec: SliceSpec) -> tuple[str, list[dict] | Rejection]:
    """Worker: slice one patient and write its shard; returns manifest rows, or why it is rejected."""
    try:
        shard = slice_patient(patient_dir, spec)
    except SliceWiseError as exc:
        return patient_dir.name, Rejection({"file": exc.path or str(patient_dir), "reason": exc.reason}, named=True)
    except MemoryError:  # this machine's state, not the patient's: the step fails, and the next run tries again
        raise
    except Exception as exc:  # noqa: BLE001  an input no check foresaw: this patient is rejected, the others go on
        if isinstance(exc, OSError) and exc.errno in volumes.MACHINE_ERRNOS:
            # The disk's or the network file system's error, not the patient's: rejecting the patient would let the
            # step succeed without it, and `dvc repro` would then never read it again (nothing it hashes changed).
            raise SliceWiseError(f"reading this patient failed ({exc.strerror or exc}): an error of the disk or file "
                                 "system, not of its files; the patients sliced so far are kept: run the step again",
                                 exc.filename or patient_dir) from exc
        log.exception("slicing %s failed", patient_dir)
        reason = f"{UNEXPECTED} ({type(exc).__name__}: {exc})"
        return patient_dir.name, Rejection({"file": str(patient_dir), "reason": reason}, named=False)
    write_shard(shard_path, shard)
    shard_name = shard_path.relative_to(shard_path.parents[1]).as_posix()
    return patient_dir.name, manifest_rows(patient_dir.name, "brats", shard_name, shard)


def map_on_processes(workers: int) -> JobMap:
    """The default JobMap: the jobs on a pool of `workers` local processes."""

    def map_jobs(fn: Callable[..., Any], jobs: list[tuple]) -> Iterable[Any]:
        with process_pool(workers) as pool:
            results = pool.map(fn, *zip(*jobs))
            for job in jobs:
                try:
                    yield next(results)
                except BrokenProcessPool as exc:  # a worker killed from outside: the kernel's OOM killer, most often
                    raise SliceWiseError(f"a slicing process died while slicing {Path(job[0]).name} or a patient "
                                         "beside it (killed by the system: out of memory?); the patients sliced so "
                                         "far are kept: run the step again", job[0]) from exc
                except MemoryError as exc:
                    raise SliceWiseError("out of memory while slicing this patient; the patients sliced so far are "
                                         "kept: run the step again (fewer `slice.workers` need less)", job[0]) from exc

    return map_jobs


def slice_dataset(raw_dir: Path, out_dir: Path, cfg: SliceSettings, image_size: int, stride: int,
                  map_jobs: JobMap | None = None) -> dict:
    """Slice every patient under raw_dir/brats and every image under raw_dir/kaggle into out_dir.

    `map_jobs` runs the per-patient jobs (default: `map_on_processes(cfg.workers)`). Each job writes its own
    shard and returns its manifest rows; everything else (manifest, rejected.csv, fingerprints) is written
    here, in job order, so the output is the same whichever JobMap ran the jobs.
    """
    spec = SliceSpec(tuple(cfg.modalities), image_size, stride, cfg.min_brain_fraction)
    all_dirs = sorted(p for p in (raw_dir / "brats").glob("*") if p.is_dir())
    patient_dirs = [p for p in all_dirs if name_problem(p.name) is None]  # a patient's name is its manifest id
    misnamed = [{"file": shown(p), "reason": name_problem(p.name)} for p in all_dirs if name_problem(p.name)]
    if not patient_dirs:
        raise SliceWiseError("no BraTS patient folders to slice (run the fetch step first)", raw_dir / "brats")

    previous = _previous_state(out_dir)
    spec_digest = spec.digest()  # hashes the slicing code: once, not once per patient
    digests = FileDigests(digest_record(out_dir))
    fingerprints = {p.name: patient_fingerprint(p, spec_digest, digests) for p in patient_dirs}
    check_one_patient_per_scan(patient_dirs, spec.modalities, digests)
    rows, rejected, todo, damaged = [], misnamed, [], []
    rejections: dict[str, dict] = {}  # patient → its fingerprint and rejected.csv row (REJECTED_FINGERPRINTS)
    for patient_dir in patient_dirs:
        name, shard_path = patient_dir.name, out_dir / "brats" / f"{patient_dir.name}.npz"
        if (before := previous["rejections"].get(name)) and before.get("fingerprint") == fingerprints[name]:
            rejections[name] = before  # rejected last time, and nothing it is judged on has changed since
            continue
        unchanged = previous["fingerprints"].get(name) == fingerprints[name]
        if unchanged and shard_path.exists() and name in previous["rows"]:
            problem = shard_problem(shard_path, len(previous["rows"][name]), len(spec.modalities), spec.image_size)
            if problem is None:
                rows.extend(previous["rows"][name])  # unchanged since the last run, and intact: keep its shard
                continue
            log.warning("%s: %s; slicing %s again", shard_path, problem, name)
            damaged.append(str(shard_path))
        todo.append((patient_dir, shard_path))
    log.info("slicing %d patients (%d unchanged and reused, %d damaged shards replaced; %d raw files hashed, the "
             "others known by size and time)", len(todo), len(patient_dirs) - len(todo) - len(rejections), len(damaged),
             digests.hashed)
    if rejections:
        log.info("%d patient(s) rejected last time and unchanged since: in rejected.csv again, not read",
                 len(rejections))

    manifest = out_dir / paths.MANIFEST.name
    if manifest.exists():  # the Kaggle shards (always) and the resliced ones are rewritten in place below
        manifest.replace(out_dir / PREVIOUS_MANIFEST)
    if todo and previous["fingerprints"]:
        # The jobs overwrite shards in place: first forget their old fingerprints, so a run killed halfway never
        # leaves a new shard under a fingerprint that a later run (with the old settings back) would trust.
        redoing = {d.name for d, _ in todo}
        write_text_atomic(json.dumps({k: v for k, v in previous["fingerprints"].items() if k not in redoing},
                                     indent=1, sort_keys=True), out_dir / FINGERPRINTS)
    map_jobs = map_jobs or map_on_processes(cfg.workers)
    with Progress() as progress:
        bar = progress.add_task("slicing patients", total=len(todo))
        for name, outcome in map_jobs(_slice_patient_job, [(d, s, spec) for d, s in todo]):
            if isinstance(outcome, Rejection):
                rejections[name] = {"fingerprint": fingerprints[name] if outcome.named else None, "row": outcome.row}
            else:
                rows.extend(outcome)
                _record_finished(out_dir, name, fingerprints[name], outcome)
            progress.advance(bar)

    # Patients in folder order, whichever were reused: an incremental run writes the manifest a fresh one writes
    # (training draws its batches in manifest order, so the order is part of what the model learns from), and
    # rejected.csv lists the rejected ones in that order too.
    position = {d.name: i for i, d in enumerate(patient_dirs)}
    for name in sorted(rejections, key=position.get):
        rejected.append(rejections[name]["row"])
        fingerprints.pop(name)  # the accepted patients' fingerprints: what makes a later run trust a shard
    rows.sort(key=lambda row: position[row["patient"]])
    kaggle_rows, kaggle_rejected = slice_kaggle(raw_dir / "kaggle", out_dir, image_size, len(spec.modalities))
    rejected.extend(kaggle_rejected)
    if not any(r["source"] == "brats" for r in rows):
        _write_rejected(out_dir, rejected)
        raise SliceWiseError(f"no usable BraTS patient ({len(rejected)} rejected, see {paths.REJECTED})", raw_dir)
    _remove_stale_shards(out_dir, {r["shard"] for r in rows + kaggle_rows})
    _write_table(manifest, rows + kaggle_rows, MANIFEST_COLUMNS)  # the marker of a complete run: before the
    _write_rejected(out_dir, rejected)  # fingerprints, which make later runs trust its shards
    write_text_atomic(json.dumps(fingerprints, indent=1, sort_keys=True), out_dir / FINGERPRINTS)
    write_text_atomic(json.dumps(rejections, indent=1, sort_keys=True), out_dir / REJECTED_FINGERPRINTS)
    (out_dir / JOURNAL).unlink(missing_ok=True)
    (out_dir / PREVIOUS_MANIFEST).unlink(missing_ok=True)
    digests.save()
    brats = [r for r in rows if r["source"] == "brats"]
    return {
        "patients": len({r["patient"] for r in brats}),
        "brats_slices": len(brats),
        "tumour_slices": sum(r["label"] for r in brats),
        "kaggle_images": len(kaggle_rows),
        "rejected": len(rejected),
        "resliced": len(todo),
        "raw_files_hashed": digests.hashed,
        "damaged_shards": damaged,
    }


def _previous_state(out_dir: Path) -> dict:
    """Fingerprints and manifest rows of the last completed run (empty when there is none), and of the patients
    finished since by runs that did not complete (JOURNAL)."""
    fp_file, manifest = out_dir / FINGERPRINTS, out_dir / paths.MANIFEST.name
    if not manifest.exists():  # a run that failed halfway moved it aside: its rows still say what was reusable
        manifest = out_dir / PREVIOUS_MANIFEST
    state: dict = {"fingerprints": {}, "rows": {}, "rejections": {}}
    if fp_file.exists() and manifest.exists():
        table = read_manifest(manifest)
        table = table[table["source"] == "brats"]
        rejections = out_dir / REJECTED_FINGERPRINTS
        state = {
            "fingerprints": json.loads(fp_file.read_text()),
            "rows": {p: g.to_dict("records") for p, g in table.groupby("patient")},
            "rejections": json.loads(rejections.read_text()) if rejections.exists() else {},
        }
    for name, (fingerprint, rows) in _finished_before(out_dir).items():
        state["fingerprints"][name], state["rows"][name] = fingerprint, rows
    return state


def _record_finished(out_dir: Path, name: str, fingerprint: str, rows: list[dict]) -> None:
    """Appends a finished patient to JOURNAL; flushed, so a run killed after this line keeps the patient."""
    with (out_dir / JOURNAL).open("a", encoding="utf-8") as journal:
        journal.write(json.dumps({"patient": name, "fingerprint": fingerprint, "rows": rows}) + "\n")


def _finished_before(out_dir: Path) -> dict[str, tuple[str, list[dict]]]:
    """{patient: (fingerprint, manifest rows)} of JOURNAL, the last line of a patient counting; a line cut short by
    a kill (the last one) is left out: that patient is sliced again."""
    journal = out_dir / JOURNAL
    if not journal.exists():
        return {}
    finished = {}
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            finished[entry["patient"]] = (entry["fingerprint"], entry["rows"])
        except (ValueError, KeyError, TypeError):
            continue
    return finished


def _remove_stale_shards(out_dir: Path, keep: set[str]) -> None:
    for shard in out_dir.rglob("*.npz"):
        if shard.relative_to(out_dir).as_posix() not in keep:
            shard.unlink()


def _write_rejected(out_dir: Path, rejected: list[dict]) -> None:
    """rejected.csv; a file named in undecodable bytes (a file inside a patient's folder) shown with escapes."""
    _write_table(out_dir / paths.REJECTED.name, [{**row, "file": shown(row["file"])} for row in rejected],
                 ["file", "reason"])


def _write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Atomic CSV write: the manifest is the marker of a complete run, so it must never be half written."""
    with atomic_write(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
