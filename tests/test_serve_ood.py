"""The out-of-distribution guard: MRI slices like the training data pass; photos, blank images and wrong
intensity ranges come back with a warning and a score instead of a tumour decision."""

from __future__ import annotations

import numpy as np
import pytest

from serve.ood import colour_score, intensity_score
from tests.serve_factory import (brain_slice, brain_volume, file_app, jpeg_bytes, local_client, make_served_files,
    nifti_bytes, npy_bytes, png_bytes)

THRESHOLD = 0.5


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with local_client(file_app(make_served_files(tmp_path_factory.mktemp("ood")), ood_threshold=THRESHOLD)) as client:
        yield client


def answer(client, data: bytes, name: str = "upload") -> dict:
    response = client.post("/v1/predict", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()


def assert_in_distribution(body: dict) -> None:
    assert body["ood_score"] < THRESHOLD and body["warning"] is None, body["ood_checks"]
    assert isinstance(body["has_tumor"], bool)


def assert_flagged(body: dict, reason: str) -> None:
    assert body["ood_score"] >= THRESHOLD, body["ood_checks"]
    assert body["has_tumor"] is None  # no confident answer
    assert reason in body["warning"] and "out of distribution" in body["warning"]
    assert 0 <= body["tumor_probability"] <= 1  # the number stays available, the decision does not


def skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


@pytest.mark.slow
def test_synthetic_kaggle_like_mri_photos_pass(client, tmp_path):
    from tasks.data.synthetic_photos import generate_kaggle

    generate_kaggle(tmp_path, n_per_class=3, seed=11)  # JPEG/PNG, RGB/RGBA/gray, tinted: the project's own data
    photos = sorted(p for p in tmp_path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert len(photos) == 6
    for photo in photos:
        assert_in_distribution(answer(client, photo.read_bytes(), photo.name))


@pytest.mark.parametrize("encode", [png_bytes, jpeg_bytes, lambda a: npy_bytes(a.astype(np.int16) * 5)])
def test_mri_like_slices_pass(client, encode):
    assert_in_distribution(answer(client, encode(brain_slice(size=96))))


def test_an_already_normalised_slice_passes(client):
    raw = brain_slice(size=64, tumour=True).astype(np.float32)
    brain = raw > 0
    zscored = np.where(brain, (raw - raw[brain].mean()) / raw[brain].std(), 0).astype(np.float32)
    assert_in_distribution(answer(client, npy_bytes(zscored)))


@pytest.mark.parametrize(("photo", "reason"), [("astronaut", "colour"), ("camera", "background"),
                                               ("coffee", "colour")])
def test_photographs_are_flagged(client, photo, reason):
    assert_flagged(answer(client, png_bytes(skimage_photo(photo))), reason)


@pytest.mark.parametrize("value", [0, 128])
def test_blank_images_are_flagged(client, value):
    assert_flagged(answer(client, png_bytes(np.full((64, 64), value, np.uint8))), "blank")


def slice_normalised_with_volume(mean: float, sd: float) -> np.ndarray:
    """A brain slice whose brain has this mean and SD after z-scoring, as preprocessing leaves a slice near the top
    or bottom of the head (it z-scores the brain over the whole volume); zero around the brain."""
    raw = brain_slice(size=64, tumour=True).astype(np.float32)
    brain = raw > 0
    own = np.where(brain, (raw - raw[brain].mean()) / raw[brain].std(), 0)
    return np.where(brain, own * sd + mean, 0).astype(np.float32)


@pytest.mark.parametrize(("mean", "sd"), [(-0.9, 0.32), (-0.5, 1.28), (-0.3, 0.5)])
def test_a_slice_normalised_with_its_volume_passes(client, mean, sd):
    """The extremes of the quick profile's training slices (brain mean -0.91 to 0.76, SD 0.32 to 1.28), as an NPY
    cut from data/processed: in distribution, as the same values bundled as an example are."""
    channel = slice_normalised_with_volume(mean, sd)
    assert (channel < 0).mean() > 0.01  # more negatives than a magnitude may have: only the normalisation passes it
    assert_in_distribution(answer(client, npy_bytes(channel)))


def test_each_channel_is_judged_alone_and_a_missing_one_is_not_judged():
    normalised = [slice_normalised_with_volume(-0.9, 0.32), slice_normalised_with_volume(0.5, 1.2)]
    assert intensity_score(np.stack([normalised[0], np.zeros_like(normalised[0]), normalised[1]]))[0] == 0.0
    offset = normalised[1] * 300  # one channel in scanner units with negatives: a spread of hundreds
    assert intensity_score(np.stack([normalised[0], offset]))[0] == 1.0
    # a volume is judged whole, its brain z-scored as one: two halves that each fail alone pass together
    halves = np.stack([slice_normalised_with_volume(1.7, 1.0), slice_normalised_with_volume(-1.7, 1.0)])
    assert intensity_score(halves)[0] == 1.0 and intensity_score(halves[None])[0] == 0.0


@pytest.mark.parametrize("transform", [lambda s: s.astype(np.float32) - 1000.0,  # negative magnitudes, no background
                                       lambda s: (s.astype(np.float32) / s.max()) * 2 - 1,  # [-1, 1]: background -1
                                       lambda s: np.where(s > 0, s.astype(np.float32) * -3.0, 0)])  # negated
def test_intensities_that_are_not_magnitudes_nor_normalised_are_flagged(client, transform):
    assert_flagged(answer(client, npy_bytes(transform(brain_slice(size=64)))), "intensity range")


def test_flagged_volume_has_no_decisions(client):
    volume, _ = brain_volume()
    body = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(-volume)[0])}).json()
    assert body["ood_score"] >= THRESHOLD and "intensity range" in body["warning"]
    assert body["has_tumor"] is None and all(s["has_tumor"] is None for s in body["slices"])
    assert body["tumor_slices"] is None  # withheld too: [] read as "no slice with tumour", a clean scan


def test_normal_volume_is_not_flagged(client):
    volume, _ = brain_volume()
    body = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(volume)[0])}).json()
    assert body["warning"] is None and body["has_tumor"] is True and body["tumor_slices"]


@pytest.mark.parametrize("how", ["offset", "inverted"])
def test_a_volume_without_an_empty_background_gets_no_decision(client, how):
    """An offset (+100 on every voxel) or an inverted FLAIR went through the guard with a score of 0: the offset one
    came back as a whole tumour larger than a brain, the inverted one as "no tumour", both confidently. The border
    check looked at the fullest axial slice by voxels above 0, which every slice then was."""
    volume, _ = brain_volume()
    bad = volume.astype(np.float32) + 100 if how == "offset" else volume.max() - volume.astype(np.float32)
    body = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(bad)[0])}).json()
    assert body["ood_checks"]["background"] == 1.0 and "flair: no empty background" in body["warning"]
    assert body["has_tumor"] is None and body["tumor_slices"] is None


def test_an_npy_slice_with_an_offset_gets_no_decision(client):
    shifted = brain_slice(size=64).astype(np.float32) + 100
    assert_flagged(answer(client, npy_bytes(shifted)), "no empty background")
    assert_in_distribution(answer(client, npy_bytes(brain_slice(size=64).astype(np.float32))))


def four_modality_files(folder):
    """A four-modality, three-region model served from files (tests/serve_factory.py's BrightRegionsNet)."""
    from tests.serve_factory import ServedFiles, export_regions_onnx, write_metrics

    return ServedFiles(export_regions_onnx(folder / "model.onnx"), folder / "none.pt", write_metrics(folder / "m.json"))


def test_every_modality_of_a_volume_is_judged_not_only_flair(tmp_path_factory):
    """Only FLAIR was checked: a T1 with an offset went into a four-channel model unremarked."""
    files = four_modality_files(tmp_path_factory.mktemp("ood4"))
    volume, _ = brain_volume()
    good = nifti_bytes(volume)[0]
    with local_client(file_app(files, ood_threshold=THRESHOLD)) as four:
        sent = {"flair": good, "t1": nifti_bytes(volume.astype(np.float32) + 50)[0], "t2": good}
        body = four.post("/v1/predict/volume", files={m: (f"p_{m}.nii.gz", data) for m, data in sent.items()}).json()
        assert "t1: no empty background" in body["warning"] and body["has_tumor"] is None
        sent["t1"] = good
        body = four.post("/v1/predict/volume", files={m: (f"p_{m}.nii.gz", data) for m, data in sent.items()}).json()
        assert body["warning"] is None and body["ood_checks"]["background"] == 0.0


@pytest.mark.parametrize("how", ["not a number", "negative", "zero", "4D zero channel"])
def test_a_modality_with_nothing_the_model_can_read_is_listed_as_missing_not_sent(tmp_path_factory, how):
    """Review 2026-12-07: an all-NaN, all-negative or all-zero T1 was read as a zero channel (a modality not sent), and
    the answer listed it under `modalities.sent`; a 4D file's missing channel, all zero as the README asks, is one."""
    files = four_modality_files(tmp_path_factory.mktemp("empty-t1"))
    volume, _ = brain_volume()
    t1 = {"not a number": np.full(volume.shape, np.nan, np.float32), "negative": -volume.astype(np.float32)}.get(
        how, np.zeros(volume.shape, np.float32))
    if how == "4D zero channel":
        four = np.stack([volume, t1.astype(volume.dtype), volume, volume], axis=-1)
        sent = {"file": ("p.nii.gz", nifti_bytes(four)[0])}
    else:
        sent = {"flair": ("p_flair.nii.gz", nifti_bytes(volume)[0]), "t1": ("p_t1.nii.gz", nifti_bytes(t1)[0])}
    with local_client(file_app(files, ood_threshold=THRESHOLD)) as client:
        body = client.post("/v1/predict/volume", files=sent).json()
    assert "t1" in body["modalities"]["missing"] and "t1" not in body["modalities"]["sent"], body["modalities"]
    assert body["modalities"]["empty"] == ["t1"]
    assert body["warning"] is None and body["has_tumor"] is True  # what the model reads is in distribution


@pytest.mark.parametrize("how", ["zero", "not a number"])
def test_a_flair_with_nothing_the_model_can_read_is_listed_as_empty_and_gets_no_decision(tmp_path_factory, how):
    """Review 2026-12-07: a blank FLAIR stays in (the answer's grid is its), so it was listed as sent, never as empty,
    unlike a blank T1; the guard withheld the decision all the same."""
    files = four_modality_files(tmp_path_factory.mktemp("empty-flair"))
    volume, _ = brain_volume()
    blank = np.zeros(volume.shape, np.float32) if how == "zero" else np.full(volume.shape, np.nan, np.float32)
    sent = {"flair": ("p_flair.nii.gz", nifti_bytes(blank)[0]), "t1": ("p_t1.nii.gz", nifti_bytes(volume)[0])}
    with local_client(file_app(files, ood_threshold=THRESHOLD)) as client:
        body = client.post("/v1/predict/volume", files=sent).json()
    assert body["modalities"] == {"sent": ["t1"], "missing": ["flair", "t1ce", "t2"], "empty": ["flair"]}
    assert body["has_tumor"] is None and body["warning"]


def test_a_volume_in_tiny_units_is_read_as_the_same_volume():
    """Review 2026-12-07: standard deviations under an absolute 1e-6 counted as flat, so a FLAIR stored at 1e-8 of its
    scale came back as "no tumour" (its z-scores all zero)."""
    from tasks.data.preprocess import zscore_volume

    volume = brain_volume()[0].astype(np.float64)
    assert np.allclose(zscore_volume(volume * 1e-8), zscore_volume(volume), atol=1e-4)
    assert not zscore_volume(np.where(volume > 0, 5.0, 0.0)).any()  # a truly flat brain stays flat, not NaN


def test_a_tint_is_not_colour():
    gray = np.repeat(brain_slice(size=64)[..., None], 3, axis=2).astype(np.float32)
    tinted = (gray * np.array([1.0, 0.85, 0.8])).astype(np.uint8)
    assert colour_score(tinted)[0] == 0.0
    rainbow = tinted.copy()
    rainbow[:, :32, 0] = 0  # half the image a different hue
    assert colour_score(rainbow)[0] == 1.0
