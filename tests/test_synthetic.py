"""The embedded synthetic data set: real BraTS/Kaggle formats, anatomy-like contrast, nested labels, determinism."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tasks.data import synthetic, synthetic_photos
from tasks.data.synthetic_shapes import BRATS_SHAPE, load_template, sample_pose, sample_tumour

SEED = 11
KINDS = ("flair", "t1", "t1ce", "t2", "seg")


def load_patient(folder) -> dict[str, np.ndarray]:
    return {kind: np.asarray(nib.load(folder / f"{folder.name}_{kind}.nii.gz").dataobj) for kind in KINDS}


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    out = tmp_path_factory.mktemp("brats")
    folders = synthetic.generate_brats(out, n_patients=2, seed=SEED)
    return out, folders, [load_patient(f) for f in folders]


def test_brats_layout_and_format(brats):
    out, folders, _ = brats
    assert [f.name for f in folders] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert sorted(p.name for p in out.iterdir()) == [f.name for f in folders]  # no temp folders left behind
    for folder in folders:
        for kind in KINDS:
            image = nib.load(folder / f"{folder.name}_{kind}.nii.gz")
            assert image.shape == BRATS_SHAPE
            assert image.get_data_dtype() == (np.uint8 if kind == "seg" else np.int16)
            assert np.allclose(image.header.get_zooms(), 1.0)
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_labels_are_brats_codes_and_all_present(brats):
    for volumes in brats[2]:
        assert set(np.unique(volumes["seg"])) == {0, 1, 2, 4}


def test_labels_nest_core_inside_rim_inside_oedema(brats):
    for volumes in brats[2]:
        seg, brain = volumes["seg"], volumes["flair"] > 0
        necrotic, core, whole = seg == 1, np.isin(seg, (1, 4)), seg > 0
        around_necrosis = ndimage.binary_dilation(necrotic) & ~necrotic & brain
        assert core[around_necrosis].mean() > 0.98  # necrosis is wrapped in enhancing tumour
        around_core = ndimage.binary_dilation(core) & ~core & brain
        assert whole[around_core].mean() > 0.98  # the core is wrapped in oedema
        components, n = ndimage.label(whole)
        assert np.bincount(components.ravel())[1:].max() > 0.95 * whole.sum()  # one tumour, not scattered blobs


def test_skull_stripped_and_tumour_inside_brain(brats):
    for volumes in brats[2]:
        brain = volumes["flair"] > 0
        assert 1.0e6 < brain.sum() < 2.0e6  # about 1.1-1.7 litres of brain at 1 mm
        for kind in ("t1", "t1ce", "t2"):
            assert np.array_equal(volumes[kind] > 0, brain)  # background exactly 0 in every modality
        assert brain[volumes["seg"] > 0].all()


def test_tissue_and_tumour_contrast(brats):
    _, _, patients = brats
    for index, volumes in enumerate(patients, start=1):
        patient, region, grid = synthetic.patient_grid(SEED, index)
        anatomy = synthetic.patient_anatomy(patient, load_template(), grid)
        seg = volumes["seg"][region]
        far = ~ndimage.binary_dilation(seg > 0, iterations=5)
        wm, gm, csf = ((m > 0.9) & far & anatomy.brain for m in (anatomy.wm, anatomy.gm, anatomy.csf))
        mean = {kind: {name: volumes[kind][region][mask].mean() for name, mask in
                       (("wm", wm), ("gm", gm), ("csf", csf), ("oedema", seg == 2), ("enh", seg == 4), ("nec", seg == 1))}
                for kind in ("flair", "t1", "t1ce", "t2")}
        assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
        assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
        assert mean["flair"]["gm"] > mean["flair"]["wm"] > mean["flair"]["csf"]
        assert mean["flair"]["oedema"] > mean["flair"]["wm"]
        assert mean["t2"]["oedema"] > mean["t2"]["wm"]
        assert mean["t1"]["oedema"] < mean["t1"]["wm"]
        assert mean["t1ce"]["enh"] > mean["t1ce"]["nec"]
        assert mean["t1ce"]["enh"] > mean["t1ce"]["wm"]
        assert mean["t2"]["nec"] > mean["t2"]["wm"]


def test_each_region_shows_on_the_modality_that_shows_it_in_real_mri(brats):
    """What the model sees (each volume z-scored over the brain), in effect sizes (difference of means over the
    pooled standard deviation): the enhancing rim is bright on T1ce (contrast uptake: brighter than on T1), necrosis
    dark on T1ce, oedema bright on FLAIR and T2. So each BraTS region is learnable from the modality that shows it,
    and ET is told apart from oedema by T1ce, not by FLAIR, as in real scans (why 4 channels serve TC and ET)."""
    from tasks.data.preprocess import zscore_volume

    for volumes in brats[2]:
        seg, brain = volumes["seg"], volumes["flair"] > 0
        where = {"normal": brain & ~ndimage.binary_dilation(seg > 0, iterations=5), "ed": seg == 2, "et": seg == 4,
                 "ncr": seg == 1}
        z = {kind: zscore_volume(volumes[kind].astype(np.float32)) for kind in ("flair", "t1", "t1ce", "t2")}

        def effect(kind: str, a: str, b: str) -> float:
            x, y = z[kind][where[a]], z[kind][where[b]]
            return float((x.mean() - y.mean()) / np.sqrt((x.var() + y.var()) / 2))

        assert effect("t1ce", "et", "normal") > 1.0 and effect("t1ce", "et", "ncr") > 2.0
        assert effect("t1ce", "et", "normal") > effect("t1", "et", "normal") + 1.0  # enhancement: T1ce, not T1
        assert effect("t1ce", "ncr", "normal") < -0.5  # necrosis dark on T1ce
        assert effect("flair", "ed", "normal") > 1.0 and effect("t2", "ed", "normal") > 0.3  # oedema bright
        assert abs(effect("t1ce", "et", "ed")) > 1.0 + abs(effect("flair", "et", "ed"))


def test_patients_differ(brats):
    first, second = brats[2]
    assert not np.array_equal(first["seg"], second["seg"])
    assert not np.array_equal(first["flair"] > 0, second["flair"] > 0)  # different head shape and pose


@pytest.mark.slow  # spawns a process pool and writes two more patients (~10 s on 2 cores)
def test_serial_and_parallel_runs_are_identical(brats, tmp_path):
    _, serial_folders, serial = brats
    parallel_folders = synthetic.generate_brats(tmp_path, n_patients=2, seed=SEED, workers=2)
    assert [f.name for f in parallel_folders] == [f.name for f in serial_folders]
    for expected, folder in zip(serial, parallel_folders):
        got = load_patient(folder)
        for kind in KINDS:
            np.testing.assert_array_equal(got[kind], expected[kind])
    # the same bytes, not only the same voxels: a file's bytes are its identity for DVC and the slice fingerprints
    # (ISA-L's deflate wrote other bytes from one run to the next in the pool's workers, and every refetch retrained)
    for serial_folder, folder in zip(serial_folders, parallel_folders):
        for kind in KINDS:
            name = f"{folder.name}_{kind}.nii.gz"
            assert (folder / name).read_bytes() == (serial_folder / name).read_bytes(), name
    written = (parallel_folders[0] / f"{parallel_folders[0].name}_flair.nii.gz").read_bytes()
    assert written == gzip.compress(gzip.decompress(written), 1, mtime=0)  # zlib's deterministic stream


def test_tumour_free_patients_come_after_the_others_which_stay_as_they_were(brats, tmp_path):
    """generate_brats(..., tumour_free=1): one more brain, with an all-zero seg and no tumour contrast, after the
    patients with a tumour, which are the same files as without it."""
    _, folders, _ = brats
    more = synthetic.generate_brats(tmp_path, n_patients=1, seed=SEED, tumour_free=1)
    assert [f.name for f in more] == [f.name for f in folders]  # BraTS20_Training_001, _002
    for kind in KINDS:
        name = f"{folders[0].name}_{kind}.nii.gz"
        assert (more[0] / name).read_bytes() == (folders[0] / name).read_bytes(), name
    healthy, same_person = load_patient(more[1]), synthetic.synthesize_patient(SEED, 2, with_tumour=False)
    assert not healthy["seg"].any() and healthy["flair"].any()
    np.testing.assert_array_equal(healthy["flair"], same_person[0]["flair"])


def test_without_bias_fields_the_same_brain_keeps_its_labels_and_loses_only_the_inhomogeneity():
    """synthesize_patient(bias_fields=False) (bench.bench_cleanup_rule --no-bias-field): the same brain and labels;
    the intensities change by a smooth factor, so their ratio varies slowly across the brain, not voxel to voxel."""
    volumes, labels = synthetic.synthesize_patient(SEED, 1)
    flat, flat_labels = synthetic.synthesize_patient(SEED, 1, bias_fields=False)
    np.testing.assert_array_equal(flat_labels, labels)
    brain = volumes["flair"] > 0
    np.testing.assert_array_equal(flat["flair"] > 0, brain)
    ratio = np.zeros(brain.shape, np.float32)
    ratio[brain] = volumes["flair"][brain] / flat["flair"][brain]
    assert not np.array_equal(flat["flair"], volumes["flair"]) and np.ptp(ratio[brain]) > 0.1  # the field is there
    centre = tuple(s // 2 for s in brain.shape)
    neighbours = ratio[centre[0] - 1:centre[0] + 2, centre[1] - 1:centre[1] + 2, centre[2]]
    assert np.ptp(neighbours[neighbours > 0]) < 0.05  # smooth: neighbouring voxels share it (noise aside)


def test_interrupted_write_leaves_no_complete_looking_patient(tmp_path, monkeypatch):
    volumes = {m: np.ones((4, 4, 4), np.int16) for m in synthetic.MODALITIES}
    saved = []

    def failing_save(image, path):
        saved.append(path)
        if len(saved) == 3:
            raise KeyboardInterrupt  # as if the run were killed mid-patient
        path.write_bytes(b"partial")

    monkeypatch.setattr(synthetic, "write_nifti_gz", failing_save)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_patient(tmp_path, "BraTS20_Training_001", volumes, np.zeros((4, 4, 4), np.uint8))
    assert not (tmp_path / "BraTS20_Training_001").exists()
    assert all(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # only the hidden temp folder


def test_tumours_vary_in_size_and_location():
    template = load_template()
    rng = np.random.default_rng(0)
    tumours = [sample_tumour(rng, template, sample_pose(rng, template)) for _ in range(200)]
    cores = np.array([t.core_mm for t in tumours])
    centres = np.array([t.centre for t in tumours])
    assert (cores < 9).mean() > 0.1 and (cores > 18).mean() > 0.1
    assert 0.25 < (centres[:, 0] < 119.5).mean() < 0.75  # both hemispheres
    assert np.ptp(centres[:, 1]) > 60 and np.ptp(centres[:, 2]) > 40  # front to back, low to high


def test_kaggle_images(tmp_path):
    counts = synthetic_photos.generate_kaggle(tmp_path, n_per_class=8, seed=SEED)
    assert counts == {"yes": 8, "no": 8}
    files = {folder: sorted((tmp_path / folder).iterdir()) for folder in ("yes", "no")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no", "yes"]
    images = [Image.open(p) for p in files["yes"] + files["no"]]
    for image in images:
        image.load()
        assert 100 <= min(image.size) and max(image.size) <= 900
    assert len({image.size for image in images}) > 1
    assert len({image.mode for image in images}) > 1
    assert {image.format for image in images} >= {"JPEG"}
    assert all(re.fullmatch(r"Y\d+\.(jpg|JPG|jpeg|png)", p.name) for p in files["yes"])
    assert all(re.search(r"(?i)\bno?\b|^No?\d", p.name) for p in files["no"])
    again = tmp_path / "again"
    synthetic_photos.generate_kaggle(again, n_per_class=8, seed=SEED, workers=2)  # parallel writes the same bytes
    for folder, paths in files.items():
        assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in sorted((again / folder).iterdir())]


def test_kaggle_yes_slices_cut_through_the_tumour():
    template = load_template()
    rng = np.random.default_rng(SEED)
    for _ in range(4):
        yes, tumour_px = synthetic_photos.kaggle_slice(rng, template, with_tumour=True)
        no, no_tumour_px = synthetic_photos.kaggle_slice(rng, template, with_tumour=False)
        assert tumour_px > 150 and no_tumour_px == 0
        for head in (yes, no):
            assert head.shape == (240, 240) and (head > 0).mean() > 0.2  # a whole head, scalp included
