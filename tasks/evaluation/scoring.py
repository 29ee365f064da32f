"""Predictions of one split, shard by shard, and the masks scored per tumour slice and per re-stacked volume.

What evaluation reports on (tasks/evaluation/report.py), and what register re-scores a champion with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from tasks.data.shards import read_shard
from tasks.evaluation import metrics
from tasks.inference.postprocess import drop_stray_components, scores_after_cleanup
from tasks.inference.predictor import Prediction


@dataclass(frozen=True)
class SplitPredictions:
    """What the metrics need from one split: one row per slice with its tumour probability, and the segmentation
    scores per tumour slice and per BraTS patient volume (empty for the validation split)."""

    slices: pd.DataFrame  # manifest columns + probability + tumour_area_mm2 (NaN for photos)
    slice_scores: pd.DataFrame  # patient, slice_index, dice, iou, hd95, detected (anything predicted)
    volume_scores: pd.DataFrame  # patient, dice, iou, hd95


def predict_split(predictor, processed: Path, rows: pd.DataFrame, segmentation: bool,
                  description: str = "predicting", mask_threshold: float = metrics.MASK_THRESHOLD,
                  tally: MaskThresholdTally | None = None, in_volume: bool = False,
                  candidates: InVolumeCandidates | None = None) -> SplitPredictions:
    """Predict every row, one shard at a time; with `segmentation`, score the masks of BraTS shards (a pixel is
    tumour when its probability >= `mask_threshold`); with `tally`, feed it every BraTS patient's mask probabilities
    from the same predictions (so choosing a mask threshold on a split costs no second pass over it).

    `in_volume`: a BraTS slice's tumour probability is the one /v1/predict/volume answers for it, read from its
    patient's re-stacked, cleaned-up masks at `mask_threshold` (`scores_in_volume`); photos stay as predicted.
    `candidates`: also record those in-volume probabilities at each of its cuts (so the cut can be chosen after this
    pass, and the split's in-volume scores at it read without predicting the split again)."""
    probability = np.empty(len(rows), dtype=np.float64)
    pixel_area = np.full(len(rows), np.nan)
    slice_scores, volume_scores = [], []
    groups = rows.groupby("shard", sort=False)
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(rows))
        for shard_name, shard_rows in groups:
            shard = read_shard(processed / shard_name)
            take = shard_rows["row"].to_numpy()
            prediction = predictor.predict(shard.images[take])
            probability[shard_rows.index.to_numpy()] = prediction.tumour_probability
            pixel_area[shard_rows.index.to_numpy()] = float(np.prod(shard.spacing[:2]))  # NaN for photos
            scored = (segmentation or tally is not None) and shard.has_mask[take].all()
            brats = (in_volume or candidates is not None) and (shard_rows["source"] == "brats").all()
            volumes = in_volume and brats
            if scored or volumes or (candidates is not None and brats):
                for patient, rows_of_patient in shard_rows.groupby("patient", sort=False):
                    at = shard_rows.index.get_indexer(rows_of_patient.index)
                    index = shard.slice_index[take[at]]
                    evidence = prediction.classifier_probability[at]  # the clean-up's, as serving's
                    predicted = prediction.mask_probability[at] >= mask_threshold
                    cleaned = (cleaned_volume(predicted, index, evidence) if volumes or (scored and segmentation)
                               else None)
                    truth = shard.masks[take[at]] > 0 if scored else None
                    # the tally's cleaned volume at each of its cuts, which the candidates read too
                    cleaned_at = (tally.add(prediction.mask_probability[at], truth, index, evidence)
                                  if scored and tally is not None else {})
                    if candidates is not None and brats:
                        candidates.add(prediction, at, index, rows_of_patient.index.to_numpy(), cleaned_at)
                    if volumes:
                        probability[rows_of_patient.index.to_numpy()] = scores_in_volume(
                            prediction, at, cleaned, index, mask_threshold)
                    if not scored:
                        continue
                    if segmentation:
                        scores = score_patient(predicted, truth, index, shard.spacing, evidence, cleaned)
                        slice_scores.append(scores[0].assign(patient=patient))
                        volume_scores.append(scores[1] | {"patient": patient})
            progress.advance(bar, len(shard_rows))
    return SplitPredictions(
        slices=rows.assign(probability=probability, tumour_area_mm2=rows["tumour_area_px"] * pixel_area),
        slice_scores=pd.concat(slice_scores, ignore_index=True) if slice_scores
        else pd.DataFrame(columns=["patient", "slice_index", "dice", "iou", "hd95"]),
        volume_scores=pd.DataFrame(volume_scores, columns=["patient", "dice", "iou", "hd95"]),
    )


def score_patient(predicted: np.ndarray, truth: np.ndarray, slice_index: np.ndarray,
                  spacing: np.ndarray, slice_probability: np.ndarray | None = None,
                  cleaned: np.ndarray | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-slice scores of the slices whose truth has tumour, and the scores of the re-stacked volume, cleaned up as
    /v1/predict/volume cleans its volumes (tasks/inference/postprocess.py, with the classifier's `slice_probability`
    of each slice as its evidence; a single slice is scored as predicted). `cleaned`: that volume when the caller
    has it already (`cleaned_volume` of the same arguments).

    In-plane spacing comes from the shard; through-plane spacing is the slice stride (read from the slice
    indices) x the slice thickness the shard records, so HD95 of a volume sliced every 2nd slice is still in mm."""
    tumour = truth.reshape(len(truth), -1).any(axis=1)
    per_slice = {"dice": [], "iou": [], "hd95": []}
    if tumour.any():
        per_slice = metrics.segmentation_scores(predicted[tumour], truth[tumour], metrics.pixel_spacing(spacing))
    # a tumour slice the model marked nothing on: its HD95 is the image diagonal (module docstring of metrics.py),
    # which the report counts apart so that a few misses do not pass for poor boundaries
    per_slice["detected"] = predicted[tumour].any(axis=tuple(range(1, predicted.ndim)))
    order, stride = np.argsort(slice_index), metrics.slice_step(slice_index)
    if cleaned is None:
        cleaned = cleaned_volume(predicted, slice_index, slice_probability)
    volume = metrics.segmentation_scores(
        cleaned[None],
        metrics.stack_volume(truth[order], slice_index[order], stride)[None],
        metrics.volume_spacing(spacing, stride),
    )
    return (pd.DataFrame({"slice_index": slice_index[tumour], **per_slice}),
            {name: float(values[0]) for name, values in volume.items()})


def cleaned_volume(predicted: np.ndarray, slice_index: np.ndarray,
                   slice_probability: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) slice masks re-stacked by `slice_index` and cleaned up; each plane's evidence is its slice's
    classifier probability (0 on the planes the slice step dropped: nothing there to confirm)."""
    return drop_stray_components(stacked(predicted, slice_index),
                                 slice_probability=stacked(slice_probability, slice_index))


def scores_in_volume(prediction: Prediction, at: np.ndarray, cleaned: np.ndarray, slice_index: np.ndarray,
                     mask_threshold: float) -> np.ndarray:
    """The tumour probabilities of one patient's slices (rows `at` of `prediction`) as /v1/predict/volume answers
    them: a fused score reads its segmentation half without the components the volume clean-up dropped
    (tasks/inference/postprocess.py, `scores_after_cleanup`), so a slice is not called tumour on the strength of a speck
    that no neighbouring slice and no classifier confirms. `cleaned`: the re-stacked, cleaned volume of their masks
    at `mask_threshold` (`cleaned_volume`).

    The clean-up's fringe is a 3D component, so the scores are computed on the re-stacked volume (planes the slice
    step dropped stay empty there) and read back per slice: stacked in row order, slices that are not neighbours in
    the head would have been joined, and a shard's rows out of axial order would have joined the wrong ones."""
    return volume_scores_after_cleanup(*patient_volume(prediction, at, slice_index), cleaned, mask_threshold)


def patient_volume(prediction: Prediction, at: np.ndarray, slice_index: np.ndarray) -> tuple[Prediction, np.ndarray]:
    """One patient's prediction (rows `at`) re-stacked by `slice_index`, whole tumour only (all the fused score
    reads), and each slice's plane in it: what `volume_scores_after_cleanup` reads, stacked once for every cut."""
    planes = metrics.stack_positions(slice_index, metrics.slice_step(slice_index))
    volume = Prediction(classifier_probability=stacked(prediction.classifier_probability[at], slice_index),
                        region_probability=stacked(prediction.region_probability[at, :1], slice_index),
                        slice_score=prediction.slice_score)
    return volume, planes


def volume_scores_after_cleanup(volume: Prediction, planes: np.ndarray, cleaned: np.ndarray,
                                mask_threshold: float) -> np.ndarray:
    """`scores_in_volume` on a `patient_volume`: each slice's score read back from its plane."""
    return scores_after_cleanup(volume, cleaned[:, None], mask_threshold)[planes]


class InVolumeCandidates:
    """Each candidate mask cut's in-volume tumour probability of every BraTS slice of one split (`scores_in_volume`
    at that cut), recorded by the pass that predicts the split (`predict_split(..., candidates=...)`): evaluation
    chooses its cut on validation from that pass, then reads the validation's in-volume scores at the chosen cut
    here instead of predicting the split a second time (a third of evaluation's slice predictions)."""

    def __init__(self, n_rows: int, cuts: tuple[float, ...]):
        self.probability = {float(t): np.full(n_rows, np.nan) for t in cuts}

    def add(self, prediction: Prediction, at: np.ndarray, slice_index: np.ndarray, rows: np.ndarray,
            cleaned_at: dict[float, np.ndarray] | None = None) -> None:
        """One patient's slices: rows `at` of the shard's `prediction`, at positions `rows` of the split.
        `cleaned_at`: its re-stacked, cleaned volumes at some cuts already (`MaskThresholdTally.add`'s); the
        others are cleaned here."""
        evidence = prediction.classifier_probability[at]
        cleaned_at = cleaned_at or {}
        volume, planes = patient_volume(prediction, at, slice_index)  # the same for every cut
        for cut, probability in self.probability.items():
            cleaned = cleaned_at.get(cut)
            if cleaned is None:
                cleaned = cleaned_volume(prediction.mask_probability[at] >= cut, slice_index, evidence)
            probability[rows] = volume_scores_after_cleanup(volume, planes, cleaned, cut)

    def at(self, split: SplitPredictions, cut: float) -> SplitPredictions:
        """`split` (the pass that fed this) with its BraTS slices' probabilities read in volume at `cut`: what
        `predict_split(..., in_volume=True, mask_threshold=cut)` gives. Photos keep their own."""
        if float(cut) not in self.probability:
            raise ValueError(f"mask cut {cut} was not among the recorded candidates {sorted(self.probability)}")
        recorded = self.probability[float(cut)]
        probability = np.where(np.isnan(recorded), split.slices["probability"].to_numpy(), recorded)
        return SplitPredictions(split.slices.assign(probability=probability), split.slice_scores,
                                split.volume_scores)


def stacked(per_slice: np.ndarray | None, slice_index: np.ndarray) -> np.ndarray | None:
    """(N, ...) per-slice values re-stacked by `slice_index` (metrics.stack_volume); None stays None."""
    if per_slice is None:
        return None
    order = np.argsort(slice_index)
    return metrics.stack_volume(np.asarray(per_slice)[order], slice_index[order], metrics.slice_step(slice_index))


# Candidates for a mask threshold chosen on validation: 0.30, 0.35, ..., 0.90.
MASK_THRESHOLD_CANDIDATES = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))


class MaskThresholdTally:
    """For each candidate threshold, the WT Dice of every tumour slice and of every re-stacked, cleaned-up patient
    volume fed to it (the two figures the gate checks); `table()` gives their means."""

    def __init__(self, candidates: tuple[float, ...] = MASK_THRESHOLD_CANDIDATES):
        self.candidates = candidates
        self.slice_dice: dict[float, list[float]] = {t: [] for t in candidates}
        self.volume_dice: dict[float, list[float]] = {t: [] for t in candidates}

    def add(self, probability: np.ndarray, truth: np.ndarray, slice_index: np.ndarray,
            slice_probability: np.ndarray | None = None) -> dict[float, np.ndarray]:
        """One patient's (N, H, W) mask probabilities, boolean truth, slice indices and the classifier's (N,) slice
        tumour probabilities (the clean-up's evidence; None: size rule alone). Returns its re-stacked, cleaned
        volume at each candidate (what `cleaned_volume` gives at that cut)."""
        tumour = truth.reshape(len(truth), -1).any(axis=1)
        true_volume = stacked(truth, slice_index)
        probability_volume, evidence = stacked(probability, slice_index), stacked(slice_probability, slice_index)
        cleaned = {}
        for t in self.candidates:  # stacked once; each candidate only cuts and cleans
            predicted = probability >= t
            self.slice_dice[t] += [_dice(p, q) for p, q in zip(predicted[tumour], truth[tumour])]
            cleaned[t] = drop_stray_components(probability_volume >= t, slice_probability=evidence)
            self.volume_dice[t].append(_dice(cleaned[t], true_volume))
        return cleaned

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"threshold": list(self.candidates),
                             "slice_dice": [_mean_or_nan(self.slice_dice[t]) for t in self.candidates],
                             "volume_dice": [_mean_or_nan(self.volume_dice[t]) for t in self.candidates]})


def _mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else np.nan


def choose_mask_threshold(table: pd.DataFrame) -> float:
    """The candidate with the best mean of slice and volume Dice; on a tie the one nearest 0.5 (the untuned cut).
    A table without any tumour (NaN everywhere) gives 0.5."""
    objective = (table["slice_dice"] + table["volume_dice"]) / 2
    if objective.isna().all():
        return metrics.MASK_THRESHOLD
    best = objective.max()
    tied = table.loc[np.isclose(objective, best), "threshold"]
    return float(tied.iloc[np.argmin(np.abs(tied.to_numpy() - metrics.MASK_THRESHOLD))])


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty, as metrics.segmentation_scores scores that case."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(predicted, truth).sum()) / total
