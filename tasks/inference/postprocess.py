"""Clean-up of a predicted tumour volume: connected components that the slice classifier does not confirm, and those
much smaller than the largest confirmed one, are dropped.

A 2D model predicts each slice on its own, so a re-stacked volume collects stray specks (a bright vessel, the edge
of the skull) that no neighbouring slice confirms. nnU-Net removes every component but the largest when that helps
on its validation folds; here components smaller than `MIN_COMPONENT_SHARE` of the largest go, which keeps a second
lesion of comparable size (multifocal gliomas exist in real BraTS data) and drops the specks.

Size alone fails when the segmentation head paints a false lesion larger than a small true tumour (white-matter
hyperintensities look like oedema on FLAIR): the false one becomes "the largest" and the tumour is dropped as a speck.
The network's other head knows better: on the slices a false lesion spans, the classifier mostly says "no tumour"
(measured: a median tumour probability of 0.21-0.28 there, 0.95 and above on the true tumour's slices). So a
component is kept only when the median, over the axial slices it spans, of the classifier's slice tumour probability
is at least `MIN_SLICE_EVIDENCE`; the size rule then runs among the confirmed ones. Both values were chosen on the
validation patients of five seeds, never on test (docs/recipes.md, "Post-processing").

Applied to whole volumes only: what /v1/predict/volume returns and what evaluation's volume scores score. A single
slice has no neighbours to confirm anything, so slice predictions and the per-slice Dice stay as the model gives
them. Nested regions (TC, ET) are kept only inside the cleaned whole tumour. A volume's slice scores are read after
the clean-up (`scores_after_cleanup`) where the model was evaluated that way (`evaluate.slices_in_volume`, the
default): evaluation's BraTS slice scores, and the volume route's answers for such a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tasks.inference import predictor

# Chosen on validation (docs/recipes.md, "Post-processing"); 0 turns the size rule off.
MIN_COMPONENT_SHARE = 0.3
# Chosen on validation (docs/recipes.md, "Post-processing"; 0.5 until 2026-12-04): on ten AMD models' validation
# patients every false lesion of 300+ voxels had a median evidence of 0.50-0.55 and every true tumour component
# 0.85-1.00; 0.7 is the middle of that gap. It needs no operating threshold. 0 turns the classifier's veto off.
# Its known cost: a faint tumour the classifier doubts (0.51-0.56 on two fresh seeds' test patients) goes whole. A lower
# floor for volumes it would empty was measured and not adopted: it left false tumours on 56 instead of 38 of 100
# tumour-free synthetic brains (docs/recipes.md, "When the veto deletes a real tumour").
MIN_SLICE_EVIDENCE = 0.7


@dataclass(frozen=True)
class Component:
    """One face-connected component of a predicted mask and what the clean-up did with it: what
    /v1/predict/volume reports, so a reader sees a dropped lesion instead of only its absence."""

    voxels: int
    planes: tuple[int, int]  # first and last plane it spans along the slice axis (inclusive)
    evidence: float | None  # median classifier tumour probability over those planes (None: no veto)
    kept: bool
    reason: str  # why it was kept or dropped, with the numbers and limits

    def as_dict(self) -> dict:
        return {"voxels": self.voxels, "slices": list(self.planes),
                "evidence": None if self.evidence is None else round(self.evidence, 4), "kept": self.kept,
                "reason": self.reason}


def drop_stray_components(mask: np.ndarray, min_share: float = MIN_COMPONENT_SHARE,
                          slice_probability: np.ndarray | None = None, slice_axis: int = 0,
                          min_evidence: float = MIN_SLICE_EVIDENCE) -> np.ndarray:
    """A boolean mask without its unconfirmed and its small face-connected components.

    `slice_probability`: the classifier's tumour probability of each plane along `slice_axis` (None: no veto). A
    component whose median over the planes it spans is below `min_evidence` goes; of the rest, those smaller than
    `min_share` x the largest go."""
    return cleaned_components(mask, min_share, slice_probability, slice_axis, min_evidence, explain=False)[0]


def cleaned_components(mask: np.ndarray, min_share: float = MIN_COMPONENT_SHARE,
                       slice_probability: np.ndarray | None = None, slice_axis: int = 0,
                       min_evidence: float = MIN_SLICE_EVIDENCE,
                       explain: bool = True) -> tuple[np.ndarray, tuple[Component, ...]]:
    """`drop_stray_components`'s mask, and (with `explain`) every component's `Component`, largest first."""
    mask = np.asarray(mask, dtype=bool)
    veto = slice_probability is not None and min_evidence > 0
    if not mask.any() or (min_share <= 0 and not veto and not explain):
        return mask, ()
    # A tumour fills a few % of a 240x240x155 volume: label only the box around everything predicted.
    box = ndimage.find_objects(mask.view(np.uint8))[0]
    labels, count = ndimage.label(mask[box])
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    extents = ndimage.find_objects(labels) if veto or explain else []
    evidence = None
    if veto:
        per_plane = np.asarray(slice_probability, dtype=np.float64)[box[slice_axis]]
        # A face-connected component spans an unbroken run of planes: its bounding box's run along the axis.
        evidence = np.array([np.median(per_plane[extent[slice_axis]]) for extent in extents])
        keep[1:] = evidence >= min_evidence
    confirmed = keep.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1) if min_share > 0 or explain else None
    largest = 0
    if min_share > 0 and keep.any():
        largest = int(sizes[keep].max())
        keep &= sizes >= min_share * largest
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    if not explain:
        return out, ()
    start = box[slice_axis].start
    components = []
    for label, extent in enumerate(extents, start=1):
        seen = None if evidence is None else float(evidence[label - 1])
        if not confirmed[label]:
            reason = f"dropped: classifier evidence {seen:.2f} < {min_evidence:.2f} over its slices"
        elif not keep[label]:
            voxels = f"{sizes[label]:,} voxel" + ("" if sizes[label] == 1 else "s")
            reason = f"dropped: {voxels} < {min_share:.2f} x {largest:,} (the largest confirmed)"
        else:
            reason = "kept" + ("" if seen is None else f": classifier evidence {seen:.2f} >= {min_evidence:.2f}")
        planes = (start + extent[slice_axis].start, start + extent[slice_axis].stop - 1)
        components.append(Component(int(sizes[label]), planes, seen, bool(keep[label]), reason))
    return out, tuple(sorted(components, key=lambda c: (-c.voxels, c.planes)))


def clean_regions(masks: np.ndarray, min_share: float = MIN_COMPONENT_SHARE,
                  slice_probability: np.ndarray | None = None, slice_axis: int = 0,
                  min_evidence: float = MIN_SLICE_EVIDENCE) -> np.ndarray:
    """(R, ...) region masks, whole tumour first → the whole tumour cleaned (`drop_stray_components`; `slice_axis`
    counts the axes of one region's mask), every other region kept inside it."""
    return clean_regions_explained(masks, min_share, slice_probability, slice_axis, min_evidence, explain=False)[0]


def clean_regions_explained(masks: np.ndarray, min_share: float = MIN_COMPONENT_SHARE,
                            slice_probability: np.ndarray | None = None, slice_axis: int = 0,
                            min_evidence: float = MIN_SLICE_EVIDENCE,
                            explain: bool = True) -> tuple[np.ndarray, tuple[Component, ...]]:
    """`clean_regions`' masks and the whole tumour's components (`cleaned_components`)."""
    masks = np.asarray(masks, dtype=bool)
    whole, components = cleaned_components(masks[0], min_share, slice_probability, slice_axis, min_evidence, explain)
    return np.concatenate([whole[None], masks[1:] & whole[None]]), components


# A dropped component's soft edge: the pixels under the mask cut but at least this share of it that connect to the
# component (hysteresis, as an edge detector links its weak edges to strong ones).
FRINGE_SHARE = 0.5


def scores_after_cleanup(prediction: predictor.Prediction, slice_masks: np.ndarray, threshold: float) -> np.ndarray:
    """(Z,) slice scores of a cleaned volume: a fused score reads its segmentation half from the whole-tumour
    probabilities without the components the clean-up dropped, so a slice is never called tumour on the strength
    of a lesion the answer does not show. `slice_masks`: (Z, R, S, S) cleaned masks cut at `threshold`.

    A component is dropped with its fringe (`FRINGE_SHARE`): its pixels at the cut were zeroed but not those just
    under it, and a fringe pixel at 0.73 under a 0.75 cut lifted a slice's fused score over the decision threshold
    (0.52 from the classifier: (0.52 + 0.73) / 2 = 0.63 > 0.60) with no mask on it at all (a review, 2026-12-06)."""
    whole_tumour = prediction.mask_probability
    kept_mask = slice_masks[:, 0]
    dropped = (whole_tumour >= threshold) & ~kept_mask
    if not dropped.any():
        return prediction.tumour_probability
    soft, _ = ndimage.label(whole_tumour >= FRINGE_SHARE * threshold)  # face-connected, in 3D as the components are
    touched = np.unique(soft[dropped])
    # a soft region that also holds a kept component is that lesion's edge too: left as it is (its dropped pixels
    # themselves still go), or a speck bridged to a kept lesion would take the lesion's edge slices with it
    shared = np.unique(soft[kept_mask])
    gone = (np.isin(soft, np.setdiff1d(touched[touched > 0], shared)) | dropped) & ~kept_mask
    kept = np.where(gone, np.float32(0), whole_tumour)[:, None]
    return predictor.slice_probability(prediction.classifier_probability, kept, prediction.slice_score)
