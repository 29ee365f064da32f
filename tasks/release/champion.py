"""The current champion's test accuracy, as comparable with a new model's as the data allow (`champion_score`):
recorded when it was tested on the same data, else re-scored with its own ONNX file on the patients of today's test
split that it has never seen."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tasks import paths
from tasks.data.splits import read_split, split_rows
from tasks.data.subjects import subject_of
from tasks.inference.predictor import LEGACY_SLICE_SCORE, MASK_THRESHOLD, decision_thresholds
from tasks.io import read_json
from tasks.release.gate import ChampionScore
from tasks.release.registry import (EXTRA_FILES, METADATA_FILE, ONNX_FILE, SAME_DATA_TAGS, SEEN_PATIENTS_FILE,
                                    ModelRegistry)
from tasks.release.release_files import Release, finite_number
from tasks.tracking import provenance
from tasks.tracking.store import StoreUnreachable

log = logging.getLogger(__name__)


def rescore_champion(registry: ModelRegistry, version: str, processed: Path, splits_dir: Path,
                     challenger: Release | None = None, near_duplicate_distance: int | None = None,
                     ) -> tuple[float, list[str], float | None] | None:
    """The champion's accuracy on the current test split at its own threshold, leaving out the patients it was
    trained or tuned on (a split redrawn after patients were added can put them in today's test split, where it
    would shine) and, with `near_duplicate_distance`, the Kaggle images that are copies of images it has seen (as the
    split groups them); the patients it was scored on; and, when that is part of the split only, `challenger`'s
    accuracy on the same slices (its metrics.json figure covers the whole split: another population). None if its
    input does not fit (another size or channel count, or other sequences than `challenger` reads) or no test
    patient is new to it."""
    from tasks.data.shards import read_shard

    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download(version, Path(tmp))
        metadata = read_json(local / EXTRA_FILES / METADATA_FILE, default=None)
        if metadata is None:
            raise ValueError(f"no readable {METADATA_FILE}")
        if challenger is not None and other_sequences(metadata, challenger.metadata):
            return None
        seen = read_json(local / EXTRA_FILES / SEEN_PATIENTS_FILE, default=[])  # older versions: none known
        seen_subjects = {subject_of(patient) for patient in seen}  # another timepoint of a person it has seen
        today = read_split("test", splits_dir)
        test = [patient for patient in today if subject_of(patient) not in seen_subjects]
        if near_duplicate_distance is not None:
            copies = copies_of_seen(processed, test, set(seen), near_duplicate_distance)
            test = [patient for patient in test if patient not in copies]
        if not test:
            return None
        rows = split_rows(processed, test)
        image_shape = list(read_shard(processed / rows["shard"].iloc[0]).images.shape[1:])
        if metadata["input"]["shape"][1:] != image_shape:
            return None
        accuracy = onnx_accuracy(local / ONNX_FILE, metadata, processed, rows, "re-scoring champion")
    if len(test) == len(today):
        return accuracy, test, None
    log.info("register: re-scoring champion v%s and this model without the %d test patients the champion has seen "
             "(trained or tuned on, or copies of their images)", version, len(today) - len(test))
    mine = onnx_accuracy(challenger.onnx_path, challenger.metadata, processed, rows, "scoring this model alike") \
        if challenger is not None else None
    return accuracy, test, mine


def other_sequences(champion: dict, challenger: dict) -> bool:
    """Whether the two models read other MRI sequences (model.json `modalities`): the same number of channels can hold
    other ones (FLAIR and T2 against FLAIR and T1ce), and the champion scored on inputs it never saw would lose to
    anything. Unknown for either (an older export): not taken as other."""
    mine, theirs = champion.get("modalities"), challenger.get("modalities")
    return bool(mine) and bool(theirs) and list(mine) != list(theirs)


def copies_of_seen(processed: Path, candidates: list[str], seen: set[str], max_distance: int) -> set[str]:
    """The Kaggle images among `candidates` within `max_distance` (pHash, the split step's measure) of an image in
    `seen`: another copy of a scan the champion trained on is no new patient to it."""
    from tasks.data.shards import read_manifest
    from tasks.data.splitting import kaggle_near_duplicates

    manifest = read_manifest(processed / paths.MANIFEST.name)
    kaggle = manifest[(manifest["source"] == "kaggle") & manifest["patient"].isin({*candidates, *seen})]
    if kaggle.empty or kaggle["patient"].isin(seen).sum() == 0:
        return set()
    pairs = kaggle_near_duplicates(processed, kaggle, max_distance)
    return {b for a, b in pairs if a in seen and b not in seen} | {a for a, b in pairs if b in seen and a not in seen}


def onnx_accuracy(onnx_path: Path, metadata: dict, processed: Path, rows, description: str) -> float:
    """An exported model's slice accuracy on `rows` at its own threshold and slice score, its BraTS slices scored in
    their volume when it was judged that way (model.json `slices_in_volume`, at its own mask threshold), its photos at
    its lone slice threshold when they were (`photos_judged_alone`)."""
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import OnnxPredictor

    predictor = OnnxPredictor(onnx_path, providers=["CPUExecutionProvider"],
                              slice_score=metadata.get("slice_score", LEGACY_SLICE_SCORE))  # its own rule
    slices = predict_split(predictor, processed, rows, segmentation=False, description=description,
                           in_volume=bool(metadata.get("slices_in_volume")),
                           mask_threshold=float(metadata.get("mask_threshold", MASK_THRESHOLD))).slices
    lone = metadata.get("lone_slice_threshold") if metadata.get("photos_judged_alone") else None
    decisions = slices["probability"].to_numpy() >= decision_thresholds(slices["source"], metadata["threshold"], lone)
    return float((decisions == slices["label"].to_numpy().astype(bool)).mean())


def champion_score(registry: ModelRegistry, champion, data_tags: dict[str, str], processed: Path,
                   splits_dir: Path, challenger: Release | None = None,
                   near_duplicate_distance: int | None = None) -> ChampionScore:
    """The champion's test accuracy, as comparable with the challenger's as possible:
    recorded when it was tested on the same data (same data and split hashes), else re-scored on this test split
    (on its patients new to the champion, with `challenger` scored on the same slices when that leaves some out),
    else (its input does not fit the current data, e.g. another image size) the recorded one, marked as such."""
    tags, version = champion.tags, str(champion.version)
    recorded = finite_number(tags.get("test_accuracy"))
    same_data = all(tags.get(k) == data_tags.get(k) not in (None, provenance.UNKNOWN) for k in SAME_DATA_TAGS)
    if same_data and recorded is not None:
        return ChampionScore(version, recorded, "same test data")
    try:
        rescored = rescore_champion(registry, version, processed, splits_dir, challenger, near_duplicate_distance)
    except StoreUnreachable:  # a store that does not answer now: the step fails (and is retried), rather than the
        raise  # gate comparing with a figure from other test data
    except Exception as exc:  # noqa: BLE001 - an old or foreign version without our metadata, an ONNX file
        # onnxruntime refuses, artifacts the store lost: the champion's own record is then all there is to compare,
        # and it must not stop this model from being registered
        log.warning("register: cannot re-score champion v%s (%s: %s)", version, type(exc).__name__, exc)
        rescored = None
    if rescored is None:
        return ChampionScore(version, recorded, "recorded on other test data")
    accuracy, patients, mine = rescored
    if mine is None:
        return ChampionScore(version, accuracy, "re-scored on this test split")
    return ChampionScore(version, accuracy, f"both scored on the {len(patients)} test patients new to the champion",
                         challenger_accuracy=mine)
