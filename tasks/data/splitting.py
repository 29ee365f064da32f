"""Patient-level train/val/test lists, seeded and stratified, with leakage checks (`split`).

BraTS patients are split whole (all their slices go to one split), stratified by tumour burden. Kaggle
images are split on their own, after grouping near-duplicates by perceptual hash so that two copies of
the same scan can never land in different splits. The step then re-checks both properties and fails
loudly if either is violated.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.cluster.hierarchy import DisjointSet
from sklearn.model_selection import train_test_split

from tasks import paths
from tasks.config import SplitSettings
from tasks.data.shards import read_manifest, read_shard
from tasks.data.splits import SPLITS, write_split
from tasks.data.subjects import subject_of
from tasks.errors import SliceWiseError
from tasks.io import staged_folder, write_text_atomic

log = logging.getLogger(__name__)


def split_sizes(n: int, cfg: SplitSettings, what: str = "patients or image groups",
                where: Path | None = None) -> tuple[int, int, int]:
    """Counts per split, each at least one; `what` and `where` name the units and their file in the error."""
    n_val, n_test = max(1, round(n * cfg.val)), max(1, round(n * cfg.test))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SliceWiseError(f"{n} {what}: at least 3 are needed, one per split at the least", where)
    return n_train, n_val, n_test


def _stratified_split(ids: list[str], strata: list, sizes: tuple[int, int, int], seed: int,
                      what: str = "patients") -> dict[str, list[str]]:
    """Seeded split into the given sizes, stratified when every stratum is large enough, random otherwise (said:
    it fell back without a word, and a class could then miss from validation or test)."""

    def cut(items, labels, test_size):
        try:
            return train_test_split(items, labels, test_size=test_size, random_state=seed, stratify=labels)
        except ValueError:  # a stratum too small for the requested sizes
            counts = ", ".join(f"{n} of stratum {k}" for k, n in sorted(Counter(labels).items()))
            log.warning("split: %s (%s) are too few to stratify a cut of %s; this cut is random", what, counts,
                        test_size)
            return train_test_split(items, labels, test_size=test_size, random_state=seed)

    train, rest, _, rest_strata = cut(ids, strata, sizes[1] + sizes[2])
    val, test, _, _ = cut(rest, rest_strata, sizes[2])
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def tumour_burden_strata(manifest: pd.DataFrame, patients: list[str]) -> list[int]:
    """Tercile of each patient's total tumour area: small, medium and large tumours spread over all splits."""
    burden = manifest.groupby("patient")["tumour_area_px"].sum().reindex(patients)
    return pd.qcut(burden.rank(method="first"), q=min(3, len(patients)), labels=False).astype(int).tolist()


def perceptual_hashes(processed: Path, kaggle: pd.DataFrame, mirrored: bool = False) -> dict[str, int]:
    """64-bit pHash of each processed Kaggle image, as an integer; `mirrored`: of the image flipped left-right."""
    return _hashes(processed, kaggle, (mirrored,))[0]


def _hashes(processed: Path, kaggle: pd.DataFrame, mirrorings: tuple[bool, ...]) -> list[dict[str, int]]:
    """One {image: pHash} per entry of `mirrorings` (as it is, flipped left-right), each shard read once."""
    hashes: list[dict[str, int]] = [{} for _ in mirrorings]
    for shard_name, rows in kaggle.groupby("shard"):
        images = read_shard(processed / shard_name).images
        for patient, row in zip(rows["patient"], rows["row"]):
            image = images[row, 0].astype(np.float32)
            span = float(image.max() - image.min()) or 1.0
            pixels = ((image - image.min()) / span * 255).astype(np.uint8)
            for found, mirrored in zip(hashes, mirrorings):
                bits = imagehash.phash(Image.fromarray(pixels[:, ::-1] if mirrored else pixels)).hash.flatten()
                found[patient] = int("".join("1" if b else "0" for b in bits), 2)
    return hashes


def near_duplicate_pairs(hashes: dict[str, int], max_distance: int,
                         mirrored: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """Pairs of images whose hashes lie within `max_distance` bits; with `mirrored` (the hashes of the flipped
    images), also a pair one of which is the other flipped left-right."""
    names = list(hashes)
    values = np.array([hashes[n] for n in names], dtype=np.uint64)
    flipped = np.array([mirrored[n] for n in names], dtype=np.uint64) if mirrored is not None else None
    pairs = []
    for i in range(len(names) - 1):
        distance = _bits_apart(values[i], values[i + 1:])
        if flipped is not None:
            distance = np.minimum(distance, _bits_apart(values[i], flipped[i + 1:]))
        pairs.extend((names[i], names[i + 1 + j]) for j in np.flatnonzero(distance <= max_distance))
    return pairs


def _bits_apart(value: np.uint64, others: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(value, others).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def kaggle_near_duplicates(processed: Path, kaggle: pd.DataFrame, max_distance: int) -> list[tuple[str, str]]:
    """Pairs of Kaggle images that are copies of one scan, as the split step keeps them together (and evaluation's
    bootstrap and the champion's re-scoring read them): pHash within `max_distance` bits, the second image as it is
    or mirrored (the Kaggle set holds re-saved, resized and flipped copies; re-saved at JPEG quality 60 or resized to
    0.6, a copy lay up to 6 bits away, flipped 32)."""
    plain, mirrored = _hashes(processed, kaggle, (False, True))
    return near_duplicate_pairs(plain, max_distance, mirrored=mirrored)


def near_duplicate_groups(images: list[str], pairs: list[tuple[str, str]]) -> list[list[str]]:
    """The images joined by near-duplicate pairs (transitively): each group sorted, one per scan."""
    groups = DisjointSet(images)
    for a, b in pairs:
        groups.merge(a, b)
    return [sorted(s) for s in groups.subsets()]


def split_kaggle(kaggle: pd.DataFrame, pairs: list[tuple[str, str]], cfg: SplitSettings, seed: int,
                 where: Path | None = None) -> dict[str, list[str]]:
    """Split Kaggle images by near-duplicate group, stratified by label."""
    subsets = near_duplicate_groups(kaggle["patient"].tolist(), pairs)
    label_of = dict(zip(kaggle["patient"], kaggle["label"]))
    keys = [s[0] for s in subsets]
    strata = [round(np.mean([label_of[m] for m in s])) for s in subsets]
    what = (f"Kaggle image groups ({len(kaggle)} images; near-duplicates, pHash distance <= "
            f"{cfg.phash_max_distance}, form one group)")
    by_key = _stratified_split(keys, strata, split_sizes(len(keys), cfg, what, where), seed, "Kaggle image groups")
    members = dict(zip(keys, subsets))
    splits = {name: sorted(m for k in ks for m in members[k]) for name, ks in by_key.items()}
    for name in ("val", "test"):  # the photos' own figures (and serving's photo decisions) need both classes there
        held = {label_of[m] for m in splits[name]}
        if len(held) < 2:
            missing = "tumour" if 1 not in held else "tumour-free"
            log.warning("split: the %s split holds no %s Kaggle image (%d images in it): its photo figures are of one "
                        "class", name, missing, len(splits[name]))
    return splits


def check_no_leakage(splits: dict[str, list[str]], pairs: list[tuple[str, str]]) -> None:
    """Fail loudly if a patient, a subject's timepoints or a near-duplicate pair crosses splits."""
    where: dict[str, str] = {}
    subject_in: dict[str, tuple[str, str]] = {}
    for name, ids in splits.items():
        for patient in ids:
            if patient in where:
                raise SliceWiseError(f"patient {patient} is in both {where[patient]} and {name}", paths.SPLITS)
            where[patient] = name
            other = subject_in.setdefault(subject_of(patient), (patient, name))
            if other[1] != name:
                raise SliceWiseError(f"{other[0]} ({other[1]}) and {patient} ({name}) are timepoints of one subject "
                                     "in two splits", paths.SPLITS)
    for a, b in pairs:
        if where.get(a) != where.get(b):
            raise SliceWiseError(f"near-duplicate images {a} ({where.get(a)}) and {b} ({where.get(b)}) cross splits", paths.SPLITS)


def split_dataset(processed: Path, out_dir: Path, cfg: SplitSettings, seed: int) -> dict:
    manifest_path = processed / paths.MANIFEST.name
    if not manifest_path.exists():
        raise SliceWiseError("manifest not found (run the slice step first)", manifest_path)
    manifest = read_manifest(manifest_path)
    brats = manifest[manifest["source"] == "brats"]
    kaggle = manifest[manifest["source"] == "kaggle"]

    patients = sorted(brats["patient"].unique())
    by_subject = brats.assign(patient=brats["patient"].map(subject_of))  # BraTS 2020 names: each its own subject
    burden = by_subject.groupby("patient")["tumour_area_px"].sum()
    # A subject without any tumour (synthetic_tumour_free_patients; BraTS has none) trains only: validation and test
    # keep the patients, and the figures, they would have without it, and their Dice means count no empty volume.
    subjects, tumour_free = sorted(burden.index[burden > 0]), sorted(burden.index[burden == 0])
    sizes = split_sizes(len(subjects), cfg, "BraTS patients with a tumour", manifest_path)  # before the strata need 1+
    subject_splits = _stratified_split(subjects, tumour_burden_strata(by_subject, subjects), sizes, seed,
                                       "BraTS patients by tumour-burden tercile")
    subject_splits["train"] = sorted(subject_splits["train"] + tumour_free)
    if tumour_free:
        log.info("split: %d BraTS patients without a tumour go to the training split only", len(tumour_free))
    split_of_subject = {subject: name for name, ids in subject_splits.items() for subject in ids}
    splits = {name: sorted(p for p in patients if split_of_subject[subject_of(p)] == name) for name in subject_splits}
    pairs: list[tuple[str, str]] = []
    if len(kaggle):
        pairs = kaggle_near_duplicates(processed, kaggle, cfg.phash_max_distance)
        for name, ids in split_kaggle(kaggle, pairs, cfg, seed, manifest_path).items():
            splits[name] = splits[name] + ids
    check_no_leakage(splits, pairs)

    summary = _summary(manifest, splits, len(pairs))
    if tumour_free:  # only then: a split without them writes what it wrote before the rule
        summary["train"]["tumour_free_brats_patients"] = len(tumour_free)
    # The lists replace the old ones together: a step killed after writing one list (a new train.txt beside the old
    # test.txt) left patients in two splits, which a stage run by hand then trained on and scored.
    with staged_folder(out_dir) as staging:
        for name in SPLITS:
            write_split(name, splits[name], staging)
        write_text_atomic(json.dumps(summary, indent=2), staging / "summary.json")
    return summary


def _summary(manifest: pd.DataFrame, splits: dict[str, list[str]], n_pairs: int) -> dict:
    summary: dict = {"near_duplicate_pairs": n_pairs}
    for name, ids in splits.items():
        rows = manifest[manifest["patient"].isin(ids)]
        summary[name] = {
            "brats_patients": int(rows.loc[rows["source"] == "brats", "patient"].nunique()),
            "kaggle_images": int((rows["source"] == "kaggle").sum()),
            "slices": int(len(rows)),
            "positive_fraction": round(float(rows["label"].mean()), 3) if len(rows) else 0.0,
        }
    return summary

