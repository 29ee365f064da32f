"""Which way up a slice is shown: every volume is turned to one orientation, LAS, before it is sliced.

An axial slice is `np.rot90` of a volume's (X, Y) plane (tasks/data/preprocess.axial_slice). Of an LAS array (first
axis toward the patient's Left, second toward Anterior, third toward Superior) that is the radiologists' view: anterior
up, the patient's right on the image's left, as PACS viewers show an axial slice and as Kaggle's photos are. Volumes
stored otherwise (BraTS: LPS, which showed the brain upside down; nibabel's and MONAI's canonical RAS, which showed it
mirrored left-right; a sagittal acquisition stored as PIR, whose third axis is not even axial) are flipped and
transposed, as views, from the axis codes of their affine (nibabel.orientations). Answers on the input's grid are
turned back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nibabel import orientations

DISPLAY_AXES = ("L", "A", "S")
# BraTS 2020 stores LPS voxels at 1 mm with this affine (SRI24 space); the synthetic volumes are stored the same way.
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


@dataclass(frozen=True)
class Orientation:
    """How a volume's stored axes map to the display orientation (nibabel `ornt` arrays, both ways)."""

    stored_axes: tuple[str, ...]  # e.g. ("L", "P", "S") for BraTS
    to_display: np.ndarray
    to_stored: np.ndarray

    @classmethod
    def of(cls, affine: np.ndarray) -> Orientation:
        """From a voxel → world affine (RAS+ world, as NIfTI's); an oblique one by its closest axes. A ValueError
        for one that names no three distinct axes (not finite, a zero or repeated column)."""
        try:
            stored = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ValueError(f"degenerate affine (sform/qform), no orientation can be read from it: {exc}") from exc
        if np.isnan(stored).any():  # an axis no world direction claims (a zero column)
            raise ValueError("degenerate affine (sform/qform): a voxel axis has no world direction")
        display = orientations.axcodes2ornt(DISPLAY_AXES)
        return cls(tuple(orientations.ornt2axcodes(stored)), orientations.ornt_transform(stored, display),
                   orientations.ornt_transform(display, stored))

    def display(self, array: np.ndarray) -> np.ndarray:
        """A stored (X, Y, Z, ...) array in display orientation: a view (flips and a transpose), never a copy."""
        return orientations.apply_orientation(array, self.to_display)

    def stored(self, array: np.ndarray) -> np.ndarray:
        """A display-oriented (X, Y, Z, ...) array back on the stored grid: a view."""
        return orientations.apply_orientation(array, self.to_stored)

    def display_spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The stored axes' voxel sizes in the display axes' order."""
        return tuple(float(s) for s in self._in_display_order(spacing))

    def display_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The stored (X, Y, Z) shape in the display axes' order: (.., .., axial slices)."""
        return tuple(int(n) for n in self._in_display_order(shape))

    def _in_display_order(self, values: Sequence) -> list:
        out = [None, None, None]
        for stored_axis, (display_axis, _) in enumerate(self.to_display):
            out[int(display_axis)] = values[stored_axis]
        return out
