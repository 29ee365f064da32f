"""Clean-up of a predicted tumour volume: connected components much smaller than the largest one are dropped.

A 2D model predicts each slice on its own, so a re-stacked volume collects stray specks (a bright vessel, the edge
of the skull) that no neighbouring slice confirms. nnU-Net removes every component but the largest when that helps
on its validation folds; here components smaller than `MIN_COMPONENT_SHARE` of the largest go, which keeps a second
lesion of comparable size (multifocal gliomas exist in real BraTS data) and drops the specks. The share was chosen
on the validation patients of five seeds, never on test (README, "Post-processing").

Applied to whole volumes only: what /v1/predict/volume returns and what evaluation's volume scores score. A single
slice has no neighbours to confirm anything, so slice predictions and the per-slice scores stay as the model gives
them. Nested regions (TC, ET) are kept only inside the cleaned whole tumour.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Chosen on validation (README, "Post-processing"); 0 turns the clean-up off.
MIN_COMPONENT_SHARE = 0.3


def drop_small_components(mask: np.ndarray, min_share: float = MIN_COMPONENT_SHARE) -> np.ndarray:
    """A boolean mask without the face-connected components smaller than `min_share` x the largest one."""
    mask = np.asarray(mask, dtype=bool)
    if min_share <= 0 or not mask.any():
        return mask
    # A tumour fills a few % of a 240x240x155 volume: label only the box around everything predicted.
    box = ndimage.find_objects(mask.view(np.uint8))[0]
    labels, count = ndimage.label(mask[box])
    if count == 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = sizes >= min_share * sizes.max()
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    return out


def clean_regions(masks: np.ndarray, min_share: float = MIN_COMPONENT_SHARE) -> np.ndarray:
    """(R, ...) region masks, whole tumour first → the whole tumour cleaned, every other region kept inside it."""
    masks = np.asarray(masks, dtype=bool)
    whole = drop_small_components(masks[0], min_share)
    return np.concatenate([whole[None], masks[1:] & whole[None]])
