"""A quirky local BraTS/Kaggle download is found recursively and normalised into the raw layout."""

import numpy as np

from tasks.data.local_import import classify_brats_file, find_brats_patients, import_brats, import_kaggle
from tests.nifti_factory import write_kaggle, write_patient


def test_classify_brats_file_handles_real_quirks(tmp_path):
    cases = {
        "BraTS20_Training_001_flair.nii.gz": "flair",
        "BraTS20_Training_001_t1ce.nii": "t1ce",
        "BraTS20_Training_001_T1.NII.GZ": "t1",
        "BraTS20_Training_001_t2.nii.gz": "t2",
        "BraTS20_Training_001_seg.nii": "seg",
        "W39_1998.09.19_Segm.nii": "seg",  # patient 355
        "name_mapping.csv": None,
        "survival_info.csv": None,
    }
    for name, expected in cases.items():
        assert classify_brats_file(tmp_path / name) == expected, name


def test_import_brats_finds_nested_patients_and_renames_odd_seg(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "download" / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    write_patient(source, "BraTS20_Training_001", rng)
    write_patient(source, "BraTS20_Training_355", rng, ext=".nii", seg_name="W39_1998.09.19_Segm.nii")
    (source / "name_mapping.csv").write_text("a,b\n")
    out = tmp_path / "raw"

    assert import_brats(tmp_path / "download", out) == 2
    assert (out / "BraTS20_Training_355" / "BraTS20_Training_355_seg.nii").exists()
    assert (out / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz").exists()
    assert not list(out.rglob("*.csv"))


def test_import_fraction_is_seeded_subset(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(6):
        write_patient(tmp_path / "src", f"BraTS20_Training_{i:03d}", rng, parts=("flair", "seg"))
    first = import_brats(tmp_path / "src", tmp_path / "a", fraction=0.5, seed=3)
    import_brats(tmp_path / "src", tmp_path / "b", fraction=0.5, seed=3)
    assert first == 3
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(find_brats_patients(tmp_path / "src")) == 6


def test_import_kaggle_takes_yes_no_folders_any_case(tmp_path):
    write_kaggle(tmp_path / "archive" / "brain_tumor_dataset", np.random.default_rng(2))
    (tmp_path / "archive" / "brain_tumor_dataset" / "yes" / "notes.txt").write_text("x")
    counts = import_kaggle(tmp_path / "archive", tmp_path / "out")
    assert counts == {"yes": 3, "no": 3}
    assert not (tmp_path / "out" / "yes" / "notes.txt").exists()
