"""A whole (X, Y, Z) volume through the slice model: every axial slice, optional flip TTA, back on the input's grid.

The one implementation of volume inference, used by serving (/v1/predict/volume) and by evaluation (BraTS-style
scores on the test patients' raw volumes), so both see the same numbers.

    inputs       each modality volume turned to the display orientation (anterior up, whichever way it is stored:
                 tasks/data/orientation.py), z-scored over its brain and cut into axial slices of the model's size
                 (tasks/data/preprocess.py's `prepare_volume_slices`, as the slice step does); a modality that
                 is missing is an all-zero channel (what modality dropout trains the model for)
    TTA          `flips` lists the flips to run, each a list of axes of the (N, C, H, W) slice batch (2 = up-down,
                 3 = left-right; [] = as is). The flipped copies of a chunk of slices are stacked into ONE
                 predictor run (not one pass per flip), flipped back, and their probabilities averaged.
    native grid  the averaged region probabilities are resized back bilinearly, the 90° display rotation and the
                 turn to display orientation undone, then thresholded: masks, a 0/1/2/4 label map
                 (`labels_from_regions`) and the uncertainty map have the input's voxel grid, so a NIfTI written
                 with the input's affine overlays it.
    clean-up     components the classifier does not confirm on their slices, and those much smaller than the largest,
                 are dropped from the masks (tasks/inference/postprocess.py); `components` says which, and why, and
                 `slice_dropped` where their pixels were on the model's slices.
    uncertainty  the binary entropy (bits, 0..1) of the TTA-averaged probability of each region, the largest over
                 the regions, per voxel ("entropy": the predictive entropy; with TTA it grows where the flips
                 disagree, without TTA it is the model's own doubt). 0 = certain, 1 = a coin flip. Outside the
                 brain (every modality 0, the background preprocessing zeroes) and the predicted tumour it is 0:
                 the model's faint probabilities there are no question anyone asked.

Numpy, Pillow, scipy and nibabel only (the predictor may be ONNX), so the slim serving image can import it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from tasks.data.orientation import Orientation
from tasks.data.preprocess import prepare_volume_slices
from tasks.data.regions import REGIONS, labels_from_regions
from tasks.inference.postprocess import (MIN_COMPONENT_SHARE, MIN_SLICE_EVIDENCE, Component, clean_regions,
                                         clean_regions_explained, scores_after_cleanup)
from tasks.inference.predictor import LEGACY_SLICE_SCORE, MASK_THRESHOLD, Prediction

UNCERTAINTY_KIND = "entropy"
FLIP_AXES = (2, 3)  # the spatial axes of an (N, C, H, W) batch
NO_TTA: tuple[tuple[int, ...], ...] = ((),)


class SlicePredictor(Protocol):
    batch_size: int

    def predict(self, images: np.ndarray) -> Prediction: ...


@dataclass(frozen=True)
class VolumePrediction:
    """One volume's prediction. Arrays on the input's grid are (X, Y, Z); model-grid arrays are per axial slice."""

    regions: tuple[str, ...]  # what the model predicts: ("wt",) or ("wt", "tc", "et")
    masks: np.ndarray  # (R, X, Y, Z) bool, one per region
    label_map: np.ndarray  # (X, Y, Z) uint8, 2020 labels 0/1/2/4
    uncertainty: np.ndarray  # (X, Y, Z) float32, see the module docstring
    tumour_probability: np.ndarray  # (Z,) per-slice tumour probability (TTA-averaged)
    slice_probability: np.ndarray  # (Z, R, S, S) TTA-averaged region probabilities on the model's slices
    slice_masks: np.ndarray  # (Z, R, S, S) bool, thresholded and cleaned by the same rule on the model's grid
    flips: tuple[tuple[int, ...], ...]
    uncertainty_kind: str = UNCERTAINTY_KIND
    orientation: Orientation | None = None  # how the input's grid was turned to slice it (None: as stored)
    # the whole tumour's connected components, largest first, and what the clean-up did with each (voxels of the
    # input's grid; `planes` are axial slice numbers, as the slice answers count them)
    components: tuple[Component, ...] = ()
    # (Z, S, S) bool on the model's slices: the whole-tumour pixels the clean-up removed (at or above the mask
    # threshold, not in `slice_masks`) on the slices of a component it dropped, so a viewer can show a dropped lesion
    # where it was; None: not computed
    slice_dropped: np.ndarray | None = None

    @property
    def whole_tumour(self) -> np.ndarray:
        return self.masks[0]

    def slice_areas_px(self) -> np.ndarray:
        """(Z,) whole-tumour voxels of each axial slice, in the order of the slice answers (display orientation)."""
        shown = self.whole_tumour if self.orientation is None else self.orientation.display(self.whole_tumour)
        return shown.sum(axis=(0, 1))

    def region_volumes_cm3(self, spacing: Sequence[float]) -> dict[str, float]:
        """cm³ of each region the model predicts; `spacing` is the voxel size in mm."""
        voxel_cm3 = voxel_volume_cm3(spacing)
        return {region: float(mask.sum()) * voxel_cm3 for region, mask in zip(self.regions, self.masks)}

    def uncertainty_summary(self, decimals: int = 6) -> dict:
        """Mean over the volume, mean inside the predicted whole tumour, 95th percentile (of the brain's voxels
        with any doubt: most of a volume is certain background). With no predicted tumour the mean inside it is
        None: a 0.0 there read as a tumour the model was sure of."""
        u = self.uncertainty
        inside = u[self.whole_tumour]
        doubtful = u[u > 1e-3]
        return {"kind": self.uncertainty_kind,
                "mean": round(float(u.mean()), decimals) if u.size else 0.0,
                "mean_in_tumour": round(float(inside.mean()), decimals) if inside.size else None,
                "p95": round(float(np.percentile(doubtful, 95)), decimals) if doubtful.size else 0.0,
                "tta_flips": [list(f) for f in self.flips]}


def voxel_volume_cm3(spacing: Sequence[float]) -> float:
    """cm³ of one voxel of `spacing` (mm; the first three axes)."""
    return float(np.prod(np.asarray(spacing[:3], dtype=np.float64))) / 1000.0


def check_flips(flips: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Normalised flips (sorted axes, no duplicates); a ValueError names a bad one."""
    out = []
    for flip in flips:
        axes = tuple(sorted({int(a) for a in flip}))
        if any(a not in FLIP_AXES for a in axes):
            raise ValueError(f"TTA flip {list(flip)}: axes must be among {list(FLIP_AXES)} (2 = up-down, "
                             "3 = left-right of the (N, C, H, W) slices)")
        if axes not in out:
            out.append(axes)
    if not out:
        raise ValueError("TTA needs at least one flip ([] = the slices as they are)")
    return tuple(out)


def prepare_channels(volumes: Sequence[np.ndarray | None], size: int) -> np.ndarray:
    """One (X, Y, Z) volume per model input channel, None for a missing modality → (Z, C, size, size) float32.

    The present ones go through `prepare_volume_slices` (the slice step's normalisation); missing ones stay 0."""
    present = [i for i, v in enumerate(volumes) if v is not None]
    if not present:
        raise ValueError("no modality volume given")
    shapes = {volumes[i].shape for i in present}
    if len(shapes) != 1:
        raise ValueError(f"modality volumes differ in shape: {sorted(shapes)}")
    depth = volumes[present[0]].shape[2]
    out = np.zeros((depth, len(volumes), size, size), dtype=np.float32)
    for i in present:  # one modality at a time: one z-scored copy in memory, not four
        out[:, i] = prepare_volume_slices([volumes[i]], size)[:, 0]
    return out


def predict_slices_tta(predictor: SlicePredictor, inputs: np.ndarray,
                       flips: Sequence[Sequence[int]] = NO_TTA) -> Prediction:
    """(N, C, S, S) slices → the Prediction averaged over `flips`. Each chunk of slices is stacked with its flipped
    copies into one predictor run (about one predictor batch: batch_size // len(flips) slices x every flip), and
    each copy's probabilities are flipped back before averaging."""
    flips = check_flips(flips)
    n = len(inputs)
    chunk = max(1, int(getattr(predictor, "batch_size", 32)) // len(flips))
    classifier = np.empty(n, dtype=np.float32)
    regions: np.ndarray | None = None
    slice_score = LEGACY_SLICE_SCORE  # the predictor's own rule, once its first prediction says it
    for start in range(0, n, chunk):
        part = inputs[start : start + chunk]
        stacked = np.concatenate([np.flip(part, axis=f) if f else part for f in flips])
        prediction = predictor.predict(np.ascontiguousarray(stacked, dtype=np.float32))
        k, slice_score = len(part), prediction.slice_score
        probs = prediction.region_probability.reshape(len(flips), k, *prediction.region_probability.shape[1:])
        unflipped = sum(np.flip(p, axis=f) if f else p for p, f in zip(probs, flips)) / len(flips)
        if regions is None:
            regions = np.empty((n, *unflipped.shape[1:]), dtype=np.float32)
        regions[start : start + k] = unflipped
        classifier[start : start + k] = prediction.classifier_probability.reshape(len(flips), k).mean(axis=0)
    if regions is None:
        regions = np.empty((0, 1, *inputs.shape[2:]), dtype=np.float32)
    # the slice score (a fused one included) is made from the TTA-averaged probabilities
    return Prediction(classifier_probability=classifier, region_probability=regions, slice_score=slice_score)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli(p), elementwise: 0 at p = 0 or 1, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def slice_to_grid(image: np.ndarray, x: int, y: int) -> np.ndarray:
    """A display-oriented (S, S) float slice → (x, y) on the input's grid: bilinear resize, then the 90° rotation
    of tasks.data.preprocess.axial_slice undone."""
    resized = np.asarray(Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize(
        (x, y), Image.BILINEAR))  # (y, x), like axial_slice(volume, z)
    return np.rot90(resized, k=-1)


def brain_of(volumes: Sequence[np.ndarray | None]) -> np.ndarray:
    """The brain of co-registered modality volumes: a voxel any of them has (None: a missing modality). One
    logical_or per volume: np.any over a list would stack the volumes into a copy first."""
    return functools.reduce(np.logical_or, (v > 0 for v in volumes if v is not None))


def quiet_outside_brain(uncertainty: np.ndarray, brain: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`uncertainty` set to 0 in place, and returned, where there is no `brain` and no region of `masks` (R, ...) is
    predicted: the model's faint probabilities there are no question anyone asked. The volume's uncertainty map
    and serving's per-slice overlay both go through here."""
    # `brain` comes from nibabel's Fortran-ordered volumes, `masks` are C-ordered: one layout before combining them
    uncertainty[~(np.ascontiguousarray(brain) | masks.any(axis=0))] = 0.0
    return uncertainty


def to_volume_grid(slice_probability: np.ndarray, shape: tuple[int, int, int],
                   threshold: float = MASK_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(Z, R, S, S) region probabilities → (R, X, Y, Z) bool masks and the (X, Y, Z) uncertainty, slice by slice
    (the native-grid probabilities are never held whole). Each slice is written to a z-major buffer, one contiguous
    plane, then the buffers are laid out (X, Y, Z) once: writing planes strided by Z took twice as long."""
    x, y, depth = shape
    n_regions = slice_probability.shape[1]
    masks = np.zeros((n_regions, depth, x, y), dtype=bool)
    uncertainty = np.zeros((depth, x, y), dtype=np.float32)
    for z in range(depth):
        for r in range(n_regions):
            native = slice_to_grid(slice_probability[z, r], x, y)
            masks[r, z] = native >= threshold
            np.maximum(uncertainty[z], binary_entropy(native), out=uncertainty[z])
    return np.ascontiguousarray(np.moveaxis(masks, 1, -1)), np.ascontiguousarray(np.moveaxis(uncertainty, 0, -1))


def in_display_orientation(volumes: Sequence[np.ndarray | None],
                           orientation: Orientation | None) -> list[np.ndarray | None]:
    """The volumes (None: a missing modality) turned by `orientation` to display orientation, as views; as they are
    for None."""
    if orientation is None:
        return list(volumes)
    return [None if v is None else orientation.display(v) for v in volumes]


def predict_volume(predictor: SlicePredictor, volumes: Sequence[np.ndarray | None], image_size: int,
                   flips: Sequence[Sequence[int]] = NO_TTA, threshold: float = MASK_THRESHOLD,
                   inputs: np.ndarray | None = None,
                   min_component_share: float = MIN_COMPONENT_SHARE,
                   min_slice_evidence: float = MIN_SLICE_EVIDENCE,
                   orientation: Orientation | None = None, slices_in_volume: bool = True) -> VolumePrediction:
    """Every axial slice of a volume (one (X, Y, Z) array per model channel, None where missing) → VolumePrediction.

    `orientation`: the volumes' (Orientation.of their affine). They are sliced in display orientation
    (tasks/data/orientation.py, as the slice step cuts training data), and the answers on the input's grid are turned
    back to the stored one. None: the volumes are in display orientation already. `inputs` may pass the already
    prepared (Z, C, S, S) slices of the display-oriented volumes (serving prepares them first, for its OOD check).
    `slices_in_volume`: each slice's `tumour_probability` is read after the clean-up, as evaluation scores BraTS slices
    by default; False: the model's own score of each slice, as a model evaluated with `evaluate.slices_in_volume: false`
    was judged (its threshold was chosen on those scores)."""
    volumes = in_display_orientation(volumes, orientation)
    if inputs is None:
        inputs = prepare_channels(volumes, image_size)
    shape = next(v for v in volumes if v is not None).shape[:3]
    flips = check_flips(flips)
    prediction = predict_slices_tta(predictor, inputs, flips)
    masks, uncertainty = to_volume_grid(prediction.region_probability, shape, threshold)
    # The classifier's slice probabilities are the clean-up's evidence (tasks/inference/postprocess.py): the classifier
    # alone, even when the slice decision is fused, so a false lesion cannot vouch for itself.
    evidence = prediction.classifier_probability
    masks, components = clean_regions_explained(masks, min_component_share, evidence, slice_axis=2,
                                                min_evidence=min_slice_evidence)
    # The model-grid masks (the slice overlays a client draws) are cleaned by the same rule, so an overlay never shows
    # a component the returned volume dropped. (R, Z, S, S): Z is a spatial axis like the others here.
    slice_masks = np.moveaxis(clean_regions(np.moveaxis(prediction.region_probability >= threshold, 1, 0),
                                            min_component_share, evidence, 0, min_slice_evidence), 0, 1)
    tumour_probability = scores_after_cleanup(prediction, slice_masks, threshold) if slices_in_volume \
        else prediction.tumour_probability
    # What the overlays lost to the clean-up, on the slices of a component the native-grid clean-up dropped (the one
    # `components` lists): the two grids' connectivity can differ, and a speck the returned volume kept is no drop.
    slice_dropped = (prediction.region_probability[:, 0] >= threshold) & ~slice_masks[:, 0]
    dropped_planes = np.zeros(len(slice_dropped), dtype=bool)
    for component in components:
        if not component.kept:
            dropped_planes[component.planes[0]:component.planes[1] + 1] = True
    slice_dropped &= dropped_planes[:, None, None]
    quiet_outside_brain(uncertainty, brain_of(volumes), masks)
    label_map = labels_from_regions(masks)
    if orientation is not None:  # back on the stored grid, contiguous (torch and MONAI refuse negative strides)
        masks = np.ascontiguousarray(np.moveaxis(orientation.stored(np.moveaxis(masks, 0, -1)), -1, 0))
        label_map, uncertainty = (np.ascontiguousarray(orientation.stored(a)) for a in (label_map, uncertainty))
    n_regions = len(masks)
    return VolumePrediction(
        regions=REGIONS[:n_regions] if n_regions in (1, len(REGIONS)) else tuple(f"r{i}" for i in range(n_regions)),
        masks=masks, label_map=label_map, uncertainty=uncertainty,
        tumour_probability=tumour_probability, slice_probability=prediction.region_probability,
        slice_masks=slice_masks, flips=flips, orientation=orientation, components=components,
        slice_dropped=slice_dropped)
