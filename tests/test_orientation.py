"""Slices are cut in one orientation whichever way a volume is stored (tasks/data/orientation.py): anterior up, the
patient's right on the image's left; answers on the input's grid come back on the stored grid."""

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from tasks.data.orientation import BRATS_AFFINE, Orientation
from tasks.data.preprocess import axial_slice
from tasks.data.slicing import SliceSpec, slice_patient
from tasks.inference.predictor import TorchPredictor
from tasks.inference.volume import predict_volume
from tests.test_volume_inference import Bright

SHAPE = (40, 48, 12)  # x, y, z of the display (LAS) array: not square, so a transpose shows
# Storage orientations a user's files come in: BraTS's LPS, the RAS of nibabel / MONAI canonical, and a transposed,
# inferior-first one (the third stored axis is not even the axial one).
STORED = [("L", "P", "S"), ("R", "A", "S"), ("A", "L", "I"), ("S", "R", "P")]


def display_phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An LAS (display-oriented) head: a brain disc, a bright marker in its anterior, right part and a tumour blob
    in its posterior, left part. Returns (intensities, labels)."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    brain = ((x - 20) ** 2 + (y - 24) ** 2 < 18 ** 2) & (z >= 2)
    volume = np.where(brain, 100 + 5 * np.random.default_rng(seed).standard_normal(SHAPE), 0)
    volume[(x < 16) & (y > 34) & brain] = 300  # L is +x in LAS: small x = the patient's right; large y = anterior
    labels = np.zeros(SHAPE, np.uint8)
    labels[((x - 28) ** 2 + (y - 14) ** 2 < 16) & (z >= 4) & (z < 9)] = 2
    volume[labels > 0] = 600
    return volume.astype(np.int16), labels


def stored_as(image: nib.Nifti1Image, axes: tuple[str, ...]) -> nib.Nifti1Image:
    """The same anatomy, its voxels stored along `axes` (nibabel moves the data and the affine together)."""
    return image.as_reoriented(orientations.ornt_transform(orientations.io_orientation(image.affine),
                                                           orientations.axcodes2ornt(axes)))


def write(folder, volume: np.ndarray, labels: np.ndarray, axes: tuple[str, ...]) -> None:
    las = np.diag([1.0, 1.0, 1.0, 1.0])
    las[0, 0] = -1.0  # LAS: +x of the array runs toward the patient's left, world -x
    folder.mkdir(parents=True)
    for part, data in (("flair", volume), ("seg", labels)):
        image = stored_as(nib.Nifti1Image(data, las), axes)
        nib.save(image, folder / f"{folder.name}_{part}.nii.gz")


def test_brats_storage_is_turned_anterior_up_and_the_turn_is_undone():
    shown = Orientation.of(BRATS_AFFINE)
    assert shown.stored_axes == ("L", "P", "S")
    stored = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(shown.display(stored), stored[:, ::-1])  # only the y axis turns
    np.testing.assert_array_equal(shown.stored(shown.display(stored)), stored)
    transposed = Orientation.of(np.array([[0, 0, -1.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]]))
    assert transposed.stored_axes == ("P", "I", "L")
    assert transposed.display(stored).shape == (4, 2, 3)
    assert transposed.display_spacing((1.0, 2.0, 3.0)) == (3.0, 1.0, 2.0)


def test_every_storage_of_one_anatomy_gives_the_same_slices_anterior_up(tmp_path):
    volume, labels = display_phantom()
    spec = SliceSpec(("flair",), 32, 1, 0.05)
    shards = {}
    for axes in STORED:
        folder = tmp_path / f"P_{''.join(axes)}"
        write(folder, volume, labels, axes)
        shards[axes] = slice_patient(folder, spec)
    reference = shards[STORED[0]]
    for axes, shard in shards.items():
        np.testing.assert_array_equal(shard.images, reference.images, err_msg=str(axes))
        np.testing.assert_array_equal(shard.masks, reference.masks, err_msg=str(axes))
        np.testing.assert_array_equal(shard.slice_index, reference.slice_index, err_msg=str(axes))
    # the marker (anterior, patient's right) is in the top-left quarter of the slice; the tumour (posterior, left)
    # in the bottom-right one
    above, through = (int(np.flatnonzero(reference.slice_index == z)[0]) for z in (10, 6))
    image = reference.images[above, 0].astype(np.float32)  # above the tumour: the marker is the brightest
    assert image[:16, :16].max() == image.max() and image[16:, :].max() < image.max()
    rows, cols = np.nonzero(reference.masks[through])
    assert rows.size and rows.min() >= 16 and cols.min() >= 16


def test_display_slice_of_a_stored_volume_matches_the_display_phantom():
    volume, _ = display_phantom()
    for axes in STORED:
        image = stored_as(nib.Nifti1Image(volume, np.diag([-1.0, 1, 1, 1])), axes)
        shown = Orientation.of(image.affine).display(np.asarray(image.dataobj))
        np.testing.assert_array_equal(axial_slice(shown, 6), axial_slice(volume, 6), err_msg=str(axes))


@pytest.mark.parametrize("axes", STORED)
def test_volume_answers_come_back_on_the_stored_grid(axes):
    """Whichever way a volume is stored, the predicted mask overlays its tumour voxel for voxel (with the input's
    affine), the slice answers are numbered in display order, and the per-slice areas follow them."""
    volume, labels = display_phantom()
    image = stored_as(nib.Nifti1Image(volume, np.diag([-1.0, 1, 1, 1])), axes)
    truth = stored_as(nib.Nifti1Image(labels, np.diag([-1.0, 1, 1, 1])), axes)
    data = np.asarray(image.dataobj).astype(np.float32)
    # channel 0 z-scored: brain ~ -0.5, marker ~ 1.5, tumour ~ 4; WT above 3
    result = predict_volume(TorchPredictor(Bright(regions=1, levels=(3.0,))), [data], 48,
                            orientation=Orientation.of(image.affine))
    assert result.masks.shape[1:] == data.shape and result.label_map.shape == data.shape
    np.testing.assert_array_equal(result.whole_tumour, np.asarray(truth.dataobj) > 0)
    assert result.masks.flags.c_contiguous and result.uncertainty.flags.c_contiguous
    per_display_slice = (labels > 0).sum(axis=(0, 1))
    np.testing.assert_array_equal(result.slice_areas_px(), per_display_slice)
    assert np.flatnonzero(result.slice_masks.any(axis=(1, 2, 3))).tolist() == np.flatnonzero(per_display_slice).tolist()


def test_a_volume_whose_affine_names_no_axes_is_rejected_naming_the_file(tmp_path):
    from tasks.errors import SliceWiseError

    volume, labels = display_phantom()
    folder = tmp_path / "P_flat"
    folder.mkdir()
    flat = np.diag([1.0, 0.0, 1.0, 1.0])  # the second voxel axis has no world direction
    for part, data in (("flair", volume), ("seg", labels)):
        image = nib.Nifti1Image(data, None)
        image.set_sform(flat, code=2)  # a zeroed sform, as a broken converter writes it (no qform)
        nib.save(image, folder / f"P_flat_{part}.nii.gz")
    with pytest.raises(SliceWiseError, match="degenerate affine") as error:
        slice_patient(folder, SliceSpec(("flair",), 32, 1, 0.05))
    assert str(error.value.path).endswith("P_flat_flair.nii.gz")


def test_a_transposed_storage_puts_each_voxel_size_on_its_display_axis(tmp_path):
    """0.8 mm across (x), 1.2 mm front to back (y), 2.5 mm slices (z), stored S, R, P: the shard's spacing is still
    x, y, then the slice thickness, each resized axis scaled to the image size."""
    volume, labels = display_phantom()
    las = np.diag([-0.8, 1.2, 2.5, 1.0])
    spacings = []
    for axes in (("L", "A", "S"), ("S", "R", "P")):
        folder = tmp_path / f"P_{''.join(axes)}"
        folder.mkdir()
        for part, data in (("flair", volume), ("seg", labels)):
            nib.save(stored_as(nib.Nifti1Image(data, las), axes), folder / f"{folder.name}_{part}.nii.gz")
        spacings.append(slice_patient(folder, SliceSpec(("flair",), 32, 1, 0.05)).spacing)
    np.testing.assert_allclose(spacings[0], [0.8 * 40 / 32, 1.2 * 48 / 32, 2.5], rtol=1e-6)
    np.testing.assert_array_equal(spacings[1], spacings[0])
