"""A quirky local BraTS/Kaggle download is found recursively and normalised into the raw layout."""

import os

import numpy as np
import pytest

from tasks.data.local_import import classify_brats_file, find_brats_patients, import_brats, import_kaggle
from tasks.errors import SliceWiseError
from tests.nifti_factory import write_kaggle, write_patient


def test_classify_brats_file_handles_real_quirks(tmp_path):
    cases = {
        "BraTS20_Training_001_flair.nii.gz": "flair",
        "BraTS20_Training_001_t1ce.nii": "t1ce",
        "BraTS20_Training_001_T1.NII.GZ": "t1",
        "BraTS20_Training_001_t2.nii.gz": "t2",
        "BraTS20_Training_001_seg.nii": "seg",
        "W39_1998.09.19_Segm.nii": "seg",  # patient 355
        "W39_1998.09.19_Segm.nii.gz": "seg",
        # "seg" elsewhere in a name is not a label file: a model's prediction saved beside a validation case became
        # its ground truth, and a re-downloaded copy of 355's file was taken in place of it
        "BraTS20_Validation_001_segmentation_pred.nii": None,
        "W39_1998.09.19_Segm (1).nii": None,
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


def test_unlabelled_cases_beside_the_training_set_are_left_out_and_counted(tmp_path, caplog):
    """The Kaggle download of BraTS 2020 holds the 125 validation cases (no segmentation) next to the 369 training
    ones: imported, each became a rejected.csv row and took a place in patient_fraction's choice."""
    from flows.source_inventory import planned_raw_files

    rng = np.random.default_rng(2)
    root = tmp_path / "download" / "BraTS2020"
    for i in range(3):
        write_patient(root / "BraTS2020_TrainingData", f"BraTS20_Training_{i:03d}", rng, parts=("flair", "seg"))
    for i in range(2):
        write_patient(root / "BraTS2020_ValidationData", f"BraTS20_Validation_{i:03d}", rng, parts=("flair", "t1"))
    with caplog.at_level("WARNING"):
        assert import_brats(tmp_path / "download", tmp_path / "raw") == 3
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [f"BraTS20_Training_{i:03d}" for i in range(3)]
    assert "2 patient folder(s)" in caplog.text and "BraTS20_Validation_000" in caplog.text
    # the flow's data-change trigger plans the same import: no drift right after it
    assert {k.split("/")[1] for k in planned_raw_files(tmp_path / "download", None, 1.0, 0)} == \
        {f"BraTS20_Training_{i:03d}" for i in range(3)}
    with pytest.raises(SliceWiseError, match="none of the 2 BraTS patient folders"):
        import_brats(root / "BraTS2020_ValidationData", tmp_path / "raw2")


def test_import_fraction_is_a_seeded_subset_that_adding_a_patient_keeps(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(12):
        write_patient(tmp_path / "src", f"BraTS20_Training_{i:03d}", rng, parts=("flair", "seg"))
    first = import_brats(tmp_path / "src", tmp_path / "a", fraction=0.5, seed=3)
    import_brats(tmp_path / "src", tmp_path / "b", fraction=0.5, seed=3)
    chosen = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert 1 <= first < 12 and len(chosen) == first
    assert chosen == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(find_brats_patients(tmp_path / "src")) == 12
    # One more patient in the folder: the patients chosen before stay chosen (only the new one may join them)
    write_patient(tmp_path / "src", "BraTS20_Training_012", rng, parts=("flair", "seg"))
    import_brats(tmp_path / "src", tmp_path / "c", fraction=0.5, seed=3)
    again = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert set(chosen) <= set(again) and set(again) - set(chosen) <= {"BraTS20_Training_012"}
    assert import_brats(tmp_path / "src", tmp_path / "d", fraction=0.01, seed=3) == 1  # never none


def test_brats_2023_names_and_macos_shadow_files(tmp_path):
    rng = np.random.default_rng(4)
    source = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    write_patient(source, "BraTS-GLI-00000-000", rng)
    for part, name in (("flair", "t2f"), ("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w")):
        (source / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000_{part}.nii.gz").rename(
            source / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000-{name}.nii.gz")
    (source / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000_seg.nii.gz").rename(
        source / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz")
    (source / "BraTS-GLI-00000-000" / "._BraTS-GLI-00000-000-t2f.nii.gz").write_bytes(b"\0\x05\x16\x07")  # AppleDouble
    (source / "__MACOSX" / "BraTS-GLI-00000-000").mkdir(parents=True)
    (source / "__MACOSX" / "BraTS-GLI-00000-000" / "._BraTS-GLI-00000-000-seg.nii.gz").write_bytes(b"\0")
    found = find_brats_patients(source)
    assert set(found) == {"BraTS-GLI-00000-000"}
    assert {part: path.name for part, path in found["BraTS-GLI-00000-000"].items()} == {
        "flair": "BraTS-GLI-00000-000-t2f.nii.gz", "t1": "BraTS-GLI-00000-000-t1n.nii.gz",
        "t1ce": "BraTS-GLI-00000-000-t1c.nii.gz", "t2": "BraTS-GLI-00000-000-t2w.nii.gz",
        "seg": "BraTS-GLI-00000-000-seg.nii.gz"}


def test_one_patient_name_in_two_folders_is_an_error_naming_both(tmp_path):
    rng = np.random.default_rng(5)
    write_patient(tmp_path / "src" / "site_a", "BraTS20_Training_002", rng, parts=("flair", "t1", "seg"))
    write_patient(tmp_path / "src" / "site_b", "BraTS20_Training_002", rng)
    with pytest.raises(SliceWiseError, match="two folders hold patient BraTS20_Training_002") as error:
        import_brats(tmp_path / "src", tmp_path / "out")
    assert "site_a" in str(error.value) and "site_b" in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing half-imported


def test_a_patients_copy_under_another_folder_name_is_an_error_naming_both(tmp_path):
    """"BraTS20_Training_003 (copy)" holds BraTS20_Training_003's files: imported, the split put the patient in train
    and the copy in test."""
    import shutil

    rng = np.random.default_rng(6)
    for i in (1, 2, 3):
        write_patient(tmp_path / "src", f"BraTS20_Training_00{i}", rng, parts=("flair", "seg"))
    shutil.copytree(tmp_path / "src" / "BraTS20_Training_003", tmp_path / "src" / "BraTS20_Training_003 (copy)")
    with pytest.raises(SliceWiseError, match="two folders hold patient BraTS20_Training_003's files") as error:
        import_brats(tmp_path / "src", tmp_path / "out")
    assert "(copy)" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_several_patients_files_is_an_error_naming_it(tmp_path):
    """All patients' files in one folder, or another patient's segmentation strayed into a folder missing its own:
    the folder would import as one patient built from several. An error names the folder and two of the files."""
    rng = np.random.default_rng(6)
    flat = tmp_path / "flat"
    for i in (1, 2, 3):
        for path in write_patient(tmp_path / "tmp", f"BraTS20_Training_00{i}", rng).iterdir():
            flat.mkdir(exist_ok=True)
            path.rename(flat / path.name)
    with pytest.raises(SliceWiseError, match="holds files of more than one patient") as error:
        import_brats(flat, tmp_path / "out")
    assert error.value.path == str(flat) and "BraTS20_Training_001_" in str(error.value)

    stray = tmp_path / "stray"
    write_patient(stray, "BraTS20_Training_001", rng, parts=("flair", "t1", "t1ce", "t2"))
    write_patient(stray, "BraTS20_Training_002", rng)
    (stray / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz").rename(
        stray / "BraTS20_Training_001" / "BraTS20_Training_002_seg.nii.gz")
    with pytest.raises(SliceWiseError, match="BraTS20_Training_002_seg.nii.gz"):
        import_brats(stray, tmp_path / "out2")

    renamed = tmp_path / "renamed"  # one patient's files in a folder of another name: fine, the folder names it
    write_patient(renamed, "BraTS20_Training_004", rng)
    (renamed / "BraTS20_Training_004").rename(renamed / "patient_a")
    assert set(find_brats_patients(renamed)) == {"patient_a"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its mode")
def test_an_unreadable_folder_is_an_error_naming_it(tmp_path):
    write_patient(tmp_path / "src", "BraTS20_Training_001", np.random.default_rng(0))
    locked = tmp_path / "src" / "locked"
    write_patient(locked, "BraTS20_Training_002", np.random.default_rng(1))
    locked.chmod(0)
    try:
        with pytest.raises(SliceWiseError, match="cannot read this folder"):
            import_brats(tmp_path / "src", tmp_path / "out")
    finally:
        locked.chmod(0o755)


def test_os_walk_errors_other_than_a_vanished_folder_stop_the_walk(tmp_path):
    """Running as root (as here) no folder is unreadable: the hook os.walk calls is checked directly."""
    from tasks.data import local_import

    with pytest.raises(SliceWiseError, match="cannot read this folder") as error:
        local_import._unreadable_folder(PermissionError(13, "Permission denied", str(tmp_path / "locked")))
    assert error.value.path == str(tmp_path / "locked")
    local_import._unreadable_folder(FileNotFoundError(2, "No such file", str(tmp_path / "gone")))  # no error
    for system in ("lost+found", ".Trashes", "System Volume Information"):  # a drive's root: never data
        local_import._unreadable_folder(PermissionError(13, "Permission denied", str(tmp_path / system)))


def test_patient_folders_linked_in_are_found_and_archives_are_named(tmp_path, caplog):
    rng = np.random.default_rng(6)
    write_patient(tmp_path / "elsewhere", "BraTS20_Training_009", rng)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "BraTS20_Training_009").symlink_to(tmp_path / "elsewhere" / "BraTS20_Training_009")
    (tmp_path / "src" / "loop").symlink_to(tmp_path / "src")  # a link loop must not hang the walk
    (tmp_path / "src" / "BraTS20_Training_010.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    linked = write_patient(tmp_path / "elsewhere", "BraTS20_Training_011", rng)  # files linked one by one
    (tmp_path / "src" / "BraTS20_Training_011").mkdir()
    for file in linked.iterdir():
        (tmp_path / "src" / "BraTS20_Training_011" / file.name).symlink_to(os.path.relpath(file, tmp_path / "src" /
                                                                                            "BraTS20_Training_011"))
    (tmp_path / "src" / "BraTS20_Training_011" / "BraTS20_Training_011_t2.nii.gz").unlink()
    (tmp_path / "src" / "BraTS20_Training_011" / "BraTS20_Training_011_t2.nii.gz").symlink_to("/nonexistent/t2")
    with caplog.at_level("WARNING"):
        assert import_brats(tmp_path / "src", tmp_path / "out") == 2
    assert (tmp_path / "out" / "BraTS20_Training_009" / "BraTS20_Training_009_flair.nii.gz").exists()
    assert "BraTS20_Training_010.zip" in caplog.text and "not extracted" in caplog.text
    imported = tmp_path / "out" / "BraTS20_Training_011"
    assert all(not p.is_symlink() and p.is_file() for p in imported.iterdir())  # the files, not links to them
    assert not (imported / "BraTS20_Training_011_t2.nii.gz").exists()  # a dangling link is no file: t2 missing
    # ... but it is said, naming the link and why it is no file (the patient is rejected for a "missing modality")
    assert ("BraTS20_Training_011_t2.nii.gz: a symbolic link to /nonexistent/t2, which does not exist"
            in caplog.text)


class _ListedBackwards:
    """os.scandir listing a folder's entries in reverse name order: a file system whose order is another disk's."""

    def __init__(self, path, real=os.scandir):
        with real(path) as entries:
            self._entries = iter(sorted(entries, key=lambda entry: entry.name, reverse=True))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("listing", ["sorted", "backwards"])
def test_a_patient_reached_through_a_link_too_is_named_by_its_own_folder(tmp_path, monkeypatch, listing):
    """os.walk kept whichever path it listed first, so a link `latest` beside the patient's folder named the patient
    `latest` on a disk that lists it first: another id, another split."""
    rng = np.random.default_rng(8)
    for i in range(3):
        write_patient(tmp_path / "src" / "site", f"BraTS20_Training_{i:03d}", rng)
    (tmp_path / "src" / "latest").symlink_to(tmp_path / "src" / "site" / "BraTS20_Training_001")
    if listing == "backwards":
        monkeypatch.setattr(os, "scandir", _ListedBackwards)
    assert sorted(find_brats_patients(tmp_path / "src")) == [f"BraTS20_Training_{i:03d}" for i in range(3)]


def test_a_looping_link_named_as_a_modality_is_left_out_and_said(tmp_path, caplog):
    rng = np.random.default_rng(7)
    patient = write_patient(tmp_path / "src", "BraTS20_Training_012", rng)
    flair = patient / "BraTS20_Training_012_flair.nii.gz"
    flair.unlink()
    flair.symlink_to(flair.name)  # points at itself
    with caplog.at_level("WARNING"):
        assert import_brats(tmp_path / "src", tmp_path / "out") == 1
    assert not (tmp_path / "out" / "BraTS20_Training_012" / flair.name).exists()
    assert f"left out {flair}: a symbolic link that loops (it leads back to itself)" in caplog.text


def test_a_fraction_of_a_kaggle_folder_with_only_one_class(tmp_path, caplog):
    write_kaggle(tmp_path / "archive", np.random.default_rng(3))
    for image in (tmp_path / "archive" / "no").iterdir():
        image.unlink()
    (tmp_path / "archive" / "no").rmdir()
    counts = import_kaggle(tmp_path / "archive", tmp_path / "out", fraction=0.5, seed=1)
    assert counts["no"] == 0 and counts["yes"] >= 1
    assert "no no/ folder with JPEG/PNG images: the classifier gets photos of one class only" in caplog.text  # said


def test_import_kaggle_takes_yes_no_folders_any_case(tmp_path):
    source = tmp_path / "archive" / "brain_tumor_dataset"
    write_kaggle(source, np.random.default_rng(2))
    (source / "yes" / "notes.txt").write_text("x")
    (source / "yes").rename(source / "Yes")  # as a download may spell them
    (source / "no").rename(source / "NO")
    counts = import_kaggle(tmp_path / "archive", tmp_path / "out")
    assert counts == {"yes": 3, "no": 3}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["no", "yes"]
    assert not (tmp_path / "out" / "yes" / "notes.txt").exists()


def test_a_link_out_of_the_source_folder_must_hold_what_its_name_says(tmp_path):
    """A link in a downloaded archive can point at any file of the machine: one to a secret, named like a NIfTI or a
    photo, is refused naming the link, and nothing is imported; a link to a real volume elsewhere still imports."""
    rng = np.random.default_rng(8)
    secret = tmp_path / "home" / ".kaggle" / "kaggle.json"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"username": "u", "key": "not-for-dvc"}')
    elsewhere = write_patient(tmp_path / "elsewhere", "BraTS20_Training_004", rng)
    patient = write_patient(tmp_path / "src", "BraTS20_Training_004", rng)
    for file in patient.iterdir():  # a data set assembled from links to another folder: imports
        file.unlink()
        file.symlink_to(elsewhere / file.name)
    assert import_brats(tmp_path / "src", tmp_path / "out") == 1
    (patient / "BraTS20_Training_004_t2.nii.gz").unlink()
    (patient / "BraTS20_Training_004_t2.nii.gz").symlink_to(secret)
    with pytest.raises(SliceWiseError, match=r"is a link to .*kaggle\.json, outside .* not a \.nii\.gz file") as error:
        import_brats(tmp_path / "src", tmp_path / "out2")
    assert error.value.path.endswith("BraTS20_Training_004_t2.nii.gz")
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("*t2*"))

    kaggle = write_kaggle(tmp_path / "photos", rng)
    (kaggle / "yes" / "Y9.jpg").symlink_to(secret)
    with pytest.raises(SliceWiseError, match="not a .jpg file"):
        import_kaggle(kaggle, tmp_path / "kaggle_out")


def test_two_files_for_one_part_of_a_patient_are_an_error_naming_both(tmp_path):
    """`x_flair.nii` beside `x_flair.nii.gz` (a `gunzip -k`, or another scan copied in): one would be taken without a
    word."""
    rng = np.random.default_rng(9)
    write_patient(tmp_path / "src", "BraTS20_Training_119", rng)
    write_patient(tmp_path / "other", "BraTS20_Training_119", rng, ext=".nii", parts=("flair",))
    os.replace(tmp_path / "other" / "BraTS20_Training_119" / "BraTS20_Training_119_flair.nii",
               tmp_path / "src" / "BraTS20_Training_119" / "BraTS20_Training_119_flair.nii")
    with pytest.raises(SliceWiseError, match="two flair files for patient BraTS20_Training_119: "
                                             "BraTS20_Training_119_flair.nii and BraTS20_Training_119_flair.nii.gz"):
        find_brats_patients(tmp_path / "src")


def test_two_odd_label_files_for_one_patient_are_an_error_naming_both(tmp_path):
    """Two regular seg files were an error; two of patient 355's odd name (`.nii` and `.nii.gz`) were one taken
    without a word, the other ignored."""
    rng = np.random.default_rng(10)
    write_patient(tmp_path / "src", "BraTS20_Training_355", rng, ext=".nii", seg_name="W39_1998.09.19_Segm.nii")
    folder = tmp_path / "src" / "BraTS20_Training_355"
    (folder / "W39_1998.09.19_Segm.nii.gz").write_bytes((folder / "W39_1998.09.19_Segm.nii").read_bytes())
    with pytest.raises(SliceWiseError, match="two seg files for patient BraTS20_Training_355: W39_1998.09.19_Segm"):
        find_brats_patients(tmp_path / "src")


def test_kaggle_folders_left_out_are_named_in_a_warning(tmp_path, caplog):
    """Only the first yes/ and no/ folders are imported (the Kaggle download holds every image twice); the other
    yes/no folders, and folders inside the chosen ones, are named with their image counts."""
    rng = np.random.default_rng(10)
    write_kaggle(tmp_path / "src" / "a", rng)
    write_kaggle(tmp_path / "src" / "b", rng, n_per_class=2)
    write_kaggle(tmp_path / "src" / "a" / "yes" / "batch2", rng, n_per_class=1)
    with caplog.at_level("WARNING"):
        assert import_kaggle(tmp_path / "src", tmp_path / "out") == {"yes": 3, "no": 3}
    left_out = caplog.text.split("left out", 1)[1]
    for folder, count in (("b/yes", 2), ("b/no", 2), ("a/yes/batch2/yes", 1), ("a/yes/batch2/no", 1)):
        assert f"{tmp_path / 'src' / folder} ({count} images)" in left_out


def test_a_failed_fetch_keeps_the_last_raw_data_and_leaves_no_partial_folder(tmp_path):
    from tasks.config import load_settings
    from tasks.fetch import fetch_raw

    rng = np.random.default_rng(11)
    write_patient(tmp_path / "src", "BraTS20_Training_001", rng)
    write_patient(tmp_path / "src" / "copy", "BraTS20_Training_001", rng)  # one patient in two folders: refused
    settings = load_settings()
    data = settings.data.model_copy(update={"source": "local", "brats_dir": str(tmp_path / "src")})
    raw = tmp_path / "data" / "raw"
    (raw / "brats").mkdir(parents=True)
    (raw / "brats" / "kept.txt").write_text("the last fetch's")
    with pytest.raises(SliceWiseError, match="two folders hold patient BraTS20_Training_001"):
        fetch_raw(data, settings.active, 0, raw, tmp_path / "downloads")
    assert (raw / "brats" / "kept.txt").read_text() == "the last fetch's"
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no raw.partial beside it


def test_a_source_folder_inside_the_pipelines_data_is_refused_before_anything_is_deleted(tmp_path, monkeypatch):
    """data.brats_dir=data/raw/brats passed `tasks check`, and fetch, which replaces data/raw whole, deleted the
    source's files it did not import (a validation case, a CSV; with a patient fraction, training patients)."""
    from types import SimpleNamespace

    from tasks.data.local_import import check_source_folders

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(21)
    inside = tmp_path / "data" / "raw" / "brats"
    write_patient(inside, "BraTS20_Training_001", rng)
    (inside / "survival_info.csv").write_text("id,age\n")
    before = sorted(p.relative_to(tmp_path) for p in inside.rglob("*"))
    for brats_dir, words in (("data/raw/brats", "lies inside data/raw/"), (".", "holds the pipeline's own data/raw/"),
                             (str(tmp_path / "data"), "holds the pipeline's own data/raw/")):
        with pytest.raises(SliceWiseError, match=words) as error:
            check_source_folders(SimpleNamespace(source="local", brats_dir=brats_dir, kaggle_dir=None))
        assert error.value.path == brats_dir
        with pytest.raises(SliceWiseError, match=words):
            import_brats(tmp_path / brats_dir, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path) for p in inside.rglob("*")) == before
    outside = tmp_path / "downloads_elsewhere"
    write_patient(outside, "BraTS20_Training_001", rng)
    check_source_folders(SimpleNamespace(source="local", brats_dir=str(outside), kaggle_dir=None))


def test_tasks_check_refuses_source_folders_that_fetch_would_find_empty(tmp_path):
    """A brats_dir holding only an archive passed `tasks check`; `dvc repro` then removed data/raw before fetch said
    "no BraTS NIfTI files". The check now finds what fetch would, and says the same."""
    from types import SimpleNamespace

    from tasks.data.local_import import check_source_folders

    (tmp_path / "brats").mkdir()
    (tmp_path / "brats" / "archive.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (tmp_path / "photos" / "misc").mkdir(parents=True)
    write_patient(tmp_path / "labelled", "BraTS20_Training_001", np.random.default_rng(22))
    with pytest.raises(SliceWiseError, match=r"no BraTS NIfTI files .* \(extract its archives first\)"):
        check_source_folders(SimpleNamespace(source="local", brats_dir=str(tmp_path / "brats"), kaggle_dir=None))
    with pytest.raises(SliceWiseError, match="no yes/ or no/ folder with JPEG/PNG images"):
        check_source_folders(SimpleNamespace(source="local", brats_dir=str(tmp_path / "labelled"),
                                             kaggle_dir=str(tmp_path / "photos")))
    unlabelled = tmp_path / "validation"
    write_patient(unlabelled, "BraTS20_Validation_001", np.random.default_rng(23), parts=("flair", "t1"))
    with pytest.raises(SliceWiseError, match="holds a segmentation"):
        check_source_folders(SimpleNamespace(source="local", brats_dir=str(unlabelled), kaggle_dir=None))


def test_tasks_check_leaves_fetchs_warnings_to_fetch(tmp_path, caplog):
    """`make run` runs `tasks check` every time: what fetch warns of when it imports (an archive not extracted) was
    said again at each run, fetch or no fetch. The check says errors only; fetch still warns."""
    from types import SimpleNamespace

    from tasks.config import load_settings
    from tasks.data.local_import import check_source_folders
    from tasks.preflight import check_prerequisites
    from tests.conftest import REPO

    write_patient(tmp_path / "brats", "BraTS20_Training_001", np.random.default_rng(24))
    (tmp_path / "brats" / "more.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    settings = load_settings(REPO / "params.yaml")
    settings = settings.model_copy(update={"data": settings.data.model_copy(
        update={"source": "local", "brats_dir": str(tmp_path / "brats")})})
    with caplog.at_level("WARNING"):
        check_prerequisites(settings)
    assert "not extracted" not in caplog.text
    with caplog.at_level("WARNING"):
        import_brats(tmp_path / "brats", tmp_path / "out")
    assert "more.zip" in caplog.text and "not extracted" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the check asked directly still warns by default
        check_source_folders(SimpleNamespace(source="local", brats_dir=str(tmp_path / "brats"), kaggle_dir=None))
    assert "not extracted" in caplog.text


def test_a_quiet_check_silences_its_own_warnings_only(tmp_path, caplog, monkeypatch):
    """check_source_folders(warn=False) lowered the module logger's level for the call: a fetch importing in
    another thread at that moment lost its warnings too. Now only the check's own thread is quiet."""
    import threading
    from types import SimpleNamespace

    from tasks.data import local_import

    original = local_import.labelled_brats_patients

    def with_a_fetch_beside(source):
        elsewhere = threading.Thread(target=local_import.log.warning, args=("fetch, in another thread",))
        elsewhere.start()
        elsewhere.join()
        return original(source)

    monkeypatch.setattr(local_import, "labelled_brats_patients", with_a_fetch_beside)
    write_patient(tmp_path / "brats", "BraTS20_Training_001", np.random.default_rng(25))
    (tmp_path / "brats" / "more.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    with caplog.at_level("WARNING"):
        local_import.check_source_folders(SimpleNamespace(source="local", brats_dir=str(tmp_path / "brats"),
                                                          kaggle_dir=None), warn=False)
    assert "fetch, in another thread" in caplog.text and "not extracted" not in caplog.text
    with caplog.at_level("WARNING"):  # quiet no longer once the check is over
        local_import.log.warning("after the check")
    assert "after the check" in caplog.text


def test_one_patient_under_names_that_differ_in_case_only_is_an_error_naming_both(tmp_path):
    """backup/brats20_training_001/ beside BraTS20_Training_001/ was imported as a sixth patient: byte-identical
    volumes in train and in val."""
    import shutil

    rng = np.random.default_rng(24)
    for i in (1, 2):
        write_patient(tmp_path / "src", f"BraTS20_Training_00{i}", rng)
    copy = tmp_path / "src" / "backup" / "brats20_training_001"
    copy.mkdir(parents=True)
    for path in (tmp_path / "src" / "BraTS20_Training_001").iterdir():
        shutil.copy(path, copy / path.name.lower())
    with pytest.raises(SliceWiseError, match="two folders hold patient") as error:
        import_brats(tmp_path / "src", tmp_path / "out")
    assert "brats20_training_001" in str(error.value) and "BraTS20_Training_001" in str(error.value)


def test_a_source_file_that_cannot_be_written_under_its_name_is_an_error_naming_it(tmp_path):
    """A 245-character patient folder name printed a traceback ("File name too long") instead of one line."""
    name = "P" * 245  # its files are named as usual; the import names them <folder>/<folder>_<part>.nii.gz
    folder = write_patient(tmp_path / "src", "BraTS20_Training_001", np.random.default_rng(25), parts=("flair", "seg"))
    folder.rename(folder.with_name(name))
    with pytest.raises(SliceWiseError, match="cannot be imported as .*File name too long") as error:
        import_brats(tmp_path / "src", tmp_path / "out")
    assert name in str(error.value.path)


def test_two_source_files_imported_under_one_name_never_write_into_the_first_ones_source(tmp_path):
    """On a file system that ignores case, `Y1.jpg` and `y1.JPG` import under one name. The fallback for a failed
    hard link copied the second file over the first one's link, which wrote through it into the user's own file."""
    from tasks.data.local_import import link_or_copy

    source = tmp_path / "source"
    source.mkdir()
    first, second = source / "Y1.jpg", source / "y1.JPG"
    first.write_bytes(b"\xff\xd8\xff first scan")
    second.write_bytes(b"\xff\xd8\xff second scan")
    target = tmp_path / "raw" / "yes" / "Y1.jpg"
    link_or_copy(first, target)

    with pytest.raises(SliceWiseError, match="another file of the source folder was imported under that name") as e:
        link_or_copy(second, target)  # as a case-insensitive file system would see the same name
    assert e.value.path == str(second)
    assert first.read_bytes() == b"\xff\xd8\xff first scan" and target.read_bytes() == first.read_bytes()
