"""BraTS labels and the three nested tumour regions the segmentation head predicts.

Labels (BraTS 2017–2021): 0 background, 1 necrotic / non-enhancing core (NCR/NET), 2 peritumoural oedema (ED),
4 enhancing tumour (ET). From BraTS 2023 on, enhancing tumour is labelled 3. Everything inside SliceWise (shards,
label maps it writes) uses the 2020 convention; `to_brats2020_labels` maps a patient's segmentation to it.

Regions (what BraTS ranks, and what nnU-Net trains on for BraTS, one sigmoid each):
    WT whole tumour  = labels 1, 2, 4
    TC tumour core   = labels 1, 4
    ET enhancing     = label 4
They are nested (ET ⊆ TC ⊆ WT), so a label map is recovered from the three region masks.
"""

from __future__ import annotations

import numpy as np

REGIONS = ("wt", "tc", "et")
REGION_LABELS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}
# Known label conventions: the set of labels a segmentation may hold → how to map it to the 2020 convention.
CONVENTIONS = {
    "brats2020": ({0, 1, 2, 4}, {}),
    "brats2023": ({0, 1, 2, 3}, {3: 4}),
}


class UnknownLabels(ValueError):
    """A segmentation whose label set matches no known BraTS convention."""

    def __init__(self, found: list[int]):
        self.found = found
        super().__init__(f"unknown segmentation labels {found}: expected a subset of {{0, 1, 2, 4}} (BraTS 2017–2021) "
                         "or {0, 1, 2, 3} (BraTS 2023+)")


SMALL_LABEL_RANGE = 16  # up to this many candidate values, one comparison pass per value beats counting them all


def label_set(labels: np.ndarray) -> set[int]:
    """The distinct values of an integer label map, without np.unique's sort of 8.9 M voxels (it was half of slicing
    a patient). A label map's values lie in a small non-negative range: one vectorised comparison per candidate value
    (BraTS: five, 5 ms) or, for a wider range, bincount (50 ms: it widens every voxel to 64 bits); anything else
    (negative or large values, a hostile file) falls back to np.unique."""
    flat = np.asarray(labels).ravel(order="K")  # no copy of the Fortran-ordered arrays nibabel returns
    if flat.size and np.issubdtype(flat.dtype, np.integer) and 0 <= flat.min():
        top = int(flat.max())
        if top < SMALL_LABEL_RANGE:
            return {value for value in range(top + 1) if (flat == value).any()}
        if top < 1024:
            return {int(v) for v in np.flatnonzero(np.bincount(flat))}
    return {int(v) for v in np.unique(flat)}


def detect_convention(labels: np.ndarray) -> str:
    """The convention a segmentation's label set belongs to. A set without 3 or 4 fits both: mapping is the same."""
    found = label_set(labels)
    for name, (allowed, _) in CONVENTIONS.items():
        if found <= allowed:
            return name
    raise UnknownLabels(sorted(found))


def to_brats2020_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 label map in the 2020 convention (0/1/2/4); UnknownLabels names what was found otherwise."""
    mapping = CONVENTIONS[detect_convention(labels)][1]
    out = np.asarray(labels).astype(np.uint8)
    for source, target in mapping.items():
        out[labels == source] = target
    return out


def regions_from_labels(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) 2020 labels → (3, ..., H, W) bool masks WT, TC, ET (region axis first)."""
    labels = np.asarray(labels)
    return np.stack([np.isin(labels, REGION_LABELS[region]) for region in REGIONS])


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """(R, ...) bool region masks (R = 3: WT, TC, ET; R = 1: WT only) → uint8 2020 label map.

    Nesting is enforced the way BraTS submissions do it: ET wins, then the rest of TC is necrosis (1), then the
    rest of WT is oedema (2). A TC or ET pixel outside WT still counts as tumour (the union is the whole tumour).
    With WT alone, every tumour pixel is labelled oedema (2): the whole tumour, without finer structure.
    """
    regions = np.asarray(regions, dtype=bool)
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[regions.any(axis=0)] = 2
    if len(regions) >= 3:
        out[regions[1] | regions[2]] = 1
        out[regions[2]] = 4
    return out
