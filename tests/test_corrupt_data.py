"""A damaged shard is never reused, never committed, and never fails a later step without naming it (issue 13, 5).

Reproduced as reported: `truncate -s` on a shard of data/processed, then `slice` (directly, and through
`dvc repro`), then training on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks import paths
from tasks.config import SliceSettings
from tasks.data.shards import read_shard, shard_problem, write_shard
from tasks.data.slicing import slice_dataset
from tasks.errors import SliceWiseError
from tests.nifti_factory import write_kaggle, write_patient
from tests.release_factory import fresh_mlflow_store, tracked

CFG = SliceSettings(modalities=("flair",), min_brain_fraction=0.05, workers=1)


def make_raw(tmp_path, n=3):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for i in range(n):
        write_patient(raw / "brats", f"BraTS20_Training_{i + 1:03d}", rng)
    write_kaggle(raw / "kaggle", rng)
    return raw


def truncate(path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def test_a_truncated_shard_is_found_named_and_sliced_again(tmp_path, caplog):
    raw, out = make_raw(tmp_path), tmp_path / "processed"
    slice_dataset(raw, out, CFG, image_size=32, stride=1)
    shard = out / "brats" / "BraTS20_Training_001.npz"
    intact = read_shard(shard)
    truncate(shard, shard.stat().st_size // 2)

    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)

    assert result["resliced"] == 1 and result["damaged_shards"] == [str(shard)]
    assert str(shard) in caplog.text and "slicing BraTS20_Training_001 again" in caplog.text
    repaired = read_shard(shard)
    np.testing.assert_array_equal(repaired.images, intact.images)
    assert slice_dataset(raw, out, CFG, image_size=32, stride=1)["resliced"] == 0  # intact shards are reused


def test_a_shard_that_loads_but_has_the_wrong_shape_is_sliced_again(tmp_path):
    raw, out = make_raw(tmp_path, n=2), tmp_path / "processed"
    slice_dataset(raw, out, CFG, image_size=32, stride=1)
    shard = out / "brats" / "BraTS20_Training_002.npz"
    original = read_shard(shard)
    other = read_shard(out / "brats" / "BraTS20_Training_001.npz")
    fewer = type(other)(**{k: (v[:3] if k != "spacing" else v) for k, v in other.__dict__.items()})
    write_shard(shard, fewer)  # a valid file, but not what the manifest says is there
    assert "expected" in shard_problem(shard, len(read_shard(out / "brats" / "BraTS20_Training_001.npz")) + 1, 1, 32)

    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["damaged_shards"] == [str(shard)]
    np.testing.assert_array_equal(read_shard(shard).images, original.images)  # sliced again: the patient's own slices
    np.testing.assert_array_equal(read_shard(shard).masks, original.masks)


def test_an_altered_byte_inside_a_shard_is_found(tmp_path):
    raw, out = make_raw(tmp_path, n=1), tmp_path / "processed"
    slice_dataset(raw, out, CFG, image_size=32, stride=1)
    shard = out / "brats" / "BraTS20_Training_001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x55  # inside the compressed images: the zip member's CRC no longer matches
    shard.write_bytes(bytes(data))
    assert slice_dataset(raw, out, CFG, image_size=32, stride=1)["damaged_shards"] == [str(shard)]


def test_training_names_the_shard_it_cannot_read_and_ends_its_runs_failed(tiny_data, tiny_settings, monkeypatch):
    from tasks import train_seg

    monkeypatch.chdir(tiny_data.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLICEWISE_PARENT_RUN_ID", raising=False)
    fresh_mlflow_store(tiny_data.root)
    shard = paths.PROCESSED / "brats" / "BraTS20_Training_001.npz"
    truncate(shard, 2000)

    with pytest.raises(SliceWiseError) as error:
        train_seg.main(tracked(tiny_settings))
    assert str(shard) in str(error.value) and "BadZipFile" in str(error.value)
    client = MlflowClient(f"sqlite:///{tiny_data.root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("slicewise").experiment_id])
    assert {run.info.status for run in runs} == {"FAILED"} and len(runs) == 2  # the step's run and its parent
    parent = next(run for run in runs if "step" not in run.data.tags)
    assert parent.data.tags["failed_step"] == "train_seg"


@pytest.mark.slow
def test_dvc_lock_never_records_a_damaged_shard(tmp_path):
    """The report's sequence through DVC: repro, truncate a shard, repro. `slice` reruns (its output changed),
    finds the shard damaged and rebuilds it, so what dvc.lock records is a verified output."""
    from tests.project_copy import copy_project, dvc

    project = copy_project(tmp_path, stages=["fetch", "slice"])
    first = dvc(project, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    shard = sorted((project / "data" / "processed" / "brats").glob("*.npz"))[0]
    truncate(shard, 2000)

    second = dvc(project, "repro")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage 'slice'" in second.stdout and "damaged shards replaced" in second.stdout + second.stderr
    for path in (project / "data" / "processed").rglob("*.npz"):
        read_shard(path)  # every shard DVC recorded loads
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout  # and dvc.lock describes exactly these files
    assert os.path.getsize(shard) > 2000


# ---------------------------------------------------------------- review 2026-12-05: inputs that stopped the step


def broken_png(path) -> None:
    """A 300x300 grey PNG whose second IDAT chunk's type is overwritten: Pillow raises SyntaxError while loading."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(
        buffer, "PNG", compress_level=0)
    data = bytearray(buffer.getvalue())
    idats = [i for i in range(len(data)) if data[i:i + 4] == b"IDAT"]
    if len(idats) < 2:  # one chunk: split it in two so that a second one exists
        start = idats[0] - 4
        length = struct.unpack(">I", data[start:start + 4])[0]
        payload = bytes(data[idats[0] + 4:idats[0] + 4 + length])
        half = length // 2
        import zlib

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        data = data[:start] + chunk(b"IDAT", payload[:half]) + chunk(b"IDAT", payload[half:]) \
            + data[idats[0] + 8 + length:]
        idats = [i for i in range(len(data)) if data[i:i + 4] == b"IDAT"]
    data[idats[1]:idats[1] + 4] = b"\xc4^\x85\xf2"
    path.write_bytes(bytes(data))


def test_photos_that_stopped_the_slice_step_are_rejected_rows(tmp_path):
    """A PNG Pillow fails with SyntaxError, an 8 x 100,000 strip (padded to a square: 37 GB), a name in bytes that
    are not UTF-8: each a rejected.csv row naming it, and the other images are sliced."""
    from PIL import Image

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    broken_png(raw / "kaggle" / "yes" / "broken.png")
    Image.fromarray(np.zeros((8, 100_000), np.uint8)).save(raw / "kaggle" / "yes" / "strip.png")
    undecodable = os.fsdecode(b"Y\xe9.jpg")
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(raw / "kaggle" / "no" / undecodable, "JPEG")
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)

    assert result["kaggle_images"] == 6
    rejected = (out / "rejected.csv").read_text(encoding="utf-8")
    assert "broken.png" in rejected and "SyntaxError" in rejected
    assert "strip.png" in rejected and "at most 4096 a side" in rejected
    assert "Y\\xe9.jpg" in rejected and "not valid UTF-8" in rejected


def test_a_patient_folder_named_in_bytes_that_are_not_utf8_is_a_rejected_row(tmp_path):
    raw, out = make_raw(tmp_path), tmp_path / "processed"
    (raw / "brats" / "BraTS20_Training_002").rename(raw / "brats" / os.fsdecode(b"BraTS20_Training_0\xe902"))
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2
    assert "BraTS20_Training_0\\xe902" in (out / "rejected.csv").read_text(encoding="utf-8")


def test_a_patient_folder_whose_name_holds_a_line_break_is_a_rejected_row(tmp_path):
    """`BraTS20_Training_007\nBraTS20_Training_001` would become two lines of a split list, the second another
    patient's name: that patient would then be in two sets."""
    from tasks.data.splits import read_split, write_split

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    for i, brk in enumerate(("\n", "\r", "\u2028")):
        write_patient(raw / "brats", f"BraTS20_Training_00{7 + i}{brk}BraTS20_Training_001", np.random.default_rng(i))
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 3
    rejected = pd.read_csv(out / "rejected.csv")
    assert set(rejected["reason"]) == {"file name holds a line break (the split lists hold one name per line); "
                                       "rename it"}
    assert sorted(Path(f).name for f in rejected["file"]) == [  # one row each, the break shown as an escape
        f"BraTS20_Training_00{7 + i}{brk}BraTS20_Training_001" for i, brk in enumerate(("\\n", "\\r", "\\u2028"))]
    patients = set(pd.read_csv(out / "manifest.csv")["patient"])
    (tmp_path / "splits").mkdir()
    write_split("train", sorted(patients), tmp_path / "splits")
    assert read_split("train", tmp_path / "splits") == sorted(patients)


def test_photos_that_are_not_jpeg_or_png_or_are_blank_are_rejected_rows(tmp_path):
    """A float TIFF named .jpg carried NaN pixels into the shard; a BMP, a GIF or an all-black image went in as a
    photo. Each is a rejected row naming it; real JPEG and PNG photos (any colour mode) are sliced."""
    from PIL import Image

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    nan = np.full((60, 60), np.nan, np.float32)
    nan[:30] = 1.0
    Image.fromarray(nan, mode="F").save(raw / "kaggle" / "yes" / "float_nan.jpg", "TIFF")
    grey = np.random.default_rng(1).integers(0, 255, (60, 60), dtype=np.uint8)
    Image.fromarray(grey).save(raw / "kaggle" / "yes" / "bitmap.png", "BMP")
    Image.fromarray(grey).save(raw / "kaggle" / "no" / "anim.png", "GIF")
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(raw / "kaggle" / "no" / "black.jpg", "JPEG")
    Image.fromarray(np.zeros((60, 60), np.uint16)).save(raw / "kaggle" / "no" / "zero16.png", "PNG")
    camera = Image.fromarray(grey)  # a camera's multi-picture JPEG (MPO): taken, as /v1/predict takes it
    camera.save(raw / "kaggle" / "yes" / "camera.jpg", "MPO", save_all=True, append_images=[camera])
    # blank once shown, though their stored bands vary: fully transparent (laid on black), and a palette of one colour
    rgba = np.dstack([np.stack([grey] * 3, axis=-1), np.zeros((60, 60), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(raw / "kaggle" / "yes" / "transparent.png", "PNG")
    palette = Image.fromarray((grey % 4).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0] * 256)  # every entry black
    palette.save(raw / "kaggle" / "yes" / "palette_black.png", "PNG")
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)

    assert result["kaggle_images"] == 7  # write_kaggle's three per class, and the camera's
    reasons = dict(pd.read_csv(out / "rejected.csv").assign(file=lambda t: t["file"].map(lambda f: Path(f).name))
                   .itertuples(index=False))
    assert reasons == {"float_nan.jpg": "a TIFF image; only JPEG and PNG are taken, whatever the file's name",
                       "bitmap.png": "a BMP image; only JPEG and PNG are taken, whatever the file's name",
                       "anim.png": "a GIF image; only JPEG and PNG are taken, whatever the file's name",
                       "black.jpg": "blank image (every pixel has one value)",
                       "zero16.png": "blank image (every pixel has one value)",
                       "transparent.png": "blank image (one value everywhere once its transparency and palette are "
                                          "applied)",
                       "palette_black.png": "blank image (one value everywhere once its transparency and palette are "
                                            "applied)"}
    assert np.isfinite(read_shard(out / "kaggle" / "yes.npz").images.astype(np.float32)).all()


def test_a_damaged_affine_or_a_huge_label_is_named_for_what_it_is(tmp_path):
    """A NaN sform was reported as the file being "not on its own grid"; a label of 1e30 as the label
    -9223372036854775808, with numpy's cast warnings on the console."""
    import warnings

    import nibabel as nib

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    flair = raw / "brats" / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz"
    image = nib.load(flair)
    affine = image.affine.copy()
    affine[0, 3] = np.nan
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), flair)
    seg = raw / "brats" / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz"
    image = nib.load(seg)
    labels = np.asanyarray(image.dataobj).astype(np.float64)
    labels[0, 0, 0] = 1e30
    nib.save(nib.Nifti1Image(labels, image.affine), seg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 1
    reasons = dict(pd.read_csv(out / "rejected.csv").assign(file=lambda t: t["file"].map(lambda f: Path(f).name))
                   .itertuples(index=False))
    assert "holds NaN or infinite values: a damaged header" in reasons["BraTS20_Training_001_flair.nii.gz"]
    assert reasons["BraTS20_Training_002_seg.nii.gz"] == "segmentation holds values as large as 1e+30: not a label map"


def test_a_modality_without_positive_intensity_rejects_its_patient(tmp_path):
    """An all-NaN (or already standardised, all-negative) FLAIR would have become a blank channel without a word."""
    import nibabel as nib

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    flair = raw / "brats" / "BraTS20_Training_003" / "BraTS20_Training_003_flair.nii.gz"
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.full(image.shape, np.nan, np.float32), image.affine), flair)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2
    rejected = (out / "rejected.csv").read_text()
    assert "BraTS20_Training_003_flair.nii.gz" in rejected and "no voxel has a positive intensity" in rejected


def test_a_slice_run_that_fails_halfway_leaves_no_manifest_and_the_next_reuses_what_was_done(tmp_path, monkeypatch):
    """The Kaggle shards are rewritten in place: a run that failed after that left the old manifest naming rows of
    the old shards, and `split` ran on it. Now no manifest means no complete run, and the next run still reuses the
    BraTS shards that did not change."""
    from tasks.data import slicing

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    slice_dataset(raw, out, CFG, image_size=32, stride=1)

    def failing_write(path, rows, columns):
        raise OSError("disk full")

    monkeypatch.setattr(slicing, "_write_table", failing_write)
    with pytest.raises(OSError):
        slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert not (out / "manifest.csv").exists()
    monkeypatch.undo()
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["resliced"] == 0 and (out / "manifest.csv").exists()
    assert not (out / slicing.PREVIOUS_MANIFEST).exists()


def _rewrite(path, data=None, zooms=None) -> None:
    import nibabel as nib

    image = nib.load(path)
    header = image.header.copy()
    if zooms is not None:
        header["pixdim"][1:4] = zooms  # the sform, the affine the grids are compared by, stays valid
    data = np.asanyarray(image.dataobj) if data is None else data
    header.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, None, header), path)  # no affine given: the header is saved as it is


def test_a_voxel_size_that_is_not_a_positive_finite_number_rejects_its_patient(tmp_path):
    """NaN pixdim beside a valid sform was sliced with spacing [nan nan nan], and evaluate failed on it after
    training ("data must be finite")."""
    raw, out = make_raw(tmp_path), tmp_path / "processed"
    for name, zooms in (("002", (np.nan, np.nan, np.nan)), ("003", (1.0, np.inf, 1.0))):
        folder = raw / "brats" / f"BraTS20_Training_{name}"
        for path in folder.iterdir():
            _rewrite(path, zooms=zooms)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 1
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["reason"].str.contains("voxel size \\(pixdim\\) is .*not a positive finite size").sum() == 2


def test_an_already_standardised_volume_is_rejected_not_sliced_with_half_its_brain(tmp_path):
    """A z-scored FLAIR passed: its brain (the voxels > 0) lost every voxel below the mean, with nothing in
    rejected.csv."""
    import nibabel as nib

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    flair = raw / "brats" / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    data = np.asarray(nib.load(flair).dataobj, dtype=np.float32)
    brain = data > 0
    data[brain] = (data[brain] - data[brain].mean()) / data[brain].std()
    _rewrite(flair, data=data)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2
    reason = pd.read_csv(out / "rejected.csv").set_index("file")["reason"][str(flair)]
    assert "the negative voxels sum to" in reason and "already standardised" in reason


def test_a_raw_volume_with_a_faint_negative_halo_is_sliced():
    """Resampled with a ringing kernel, a raw float volume has a thin rim just below 0 around its brain (Lanczos-3:
    6 % of its non-zero voxels): a count of negative voxels rejected it as standardised; their sum is tiny."""
    import tempfile

    import nibabel as nib

    from tasks.data.slicing import SliceSpec, slice_patient

    with tempfile.TemporaryDirectory() as tmp:
        raw = make_raw(Path(tmp), n=1)
        flair = raw / "brats" / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz"
        data = np.asarray(nib.load(flair).dataobj, dtype=np.float32)
        brain = data > 0
        halo = np.zeros_like(brain)
        halo[1:-1] = brain[2:] | brain[:-2]
        halo &= ~brain  # the voxels around the brain: ringing just below 0, a quarter of the brain's voxels or so
        data[halo] = -0.5
        assert halo.sum() > 0.05 * brain.sum()
        _rewrite(flair, data=data)
        shard = slice_patient(flair.parent, SliceSpec(("flair",), image_size=32, stride=1, min_brain_fraction=0.05))
    assert len(shard.images) > 0


def test_one_patient_that_breaks_slicing_in_a_way_no_check_foresaw_is_a_rejected_row(tmp_path, monkeypatch):
    """A 12x12x33000 volume raised a bare OverflowError naming no patient, and the whole step failed."""
    from tasks.data import slicing

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    original = slicing.slice_patient

    def slice_or_fail(patient_dir, spec):
        if patient_dir.name.endswith("002"):
            raise OverflowError("Python integer 32768 out of bounds for int16")
        return original(patient_dir, spec)

    monkeypatch.setattr(slicing, "slice_patient", slice_or_fail)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2
    row = pd.read_csv(out / "rejected.csv").iloc[0]
    assert row["file"].endswith("BraTS20_Training_002")
    assert row["reason"] == ("unexpected error while slicing (OverflowError: Python integer 32768 out of bounds "
                             "for int16)")


def test_a_volume_longer_than_slice_numbers_can_count_is_named(tmp_path):
    from tasks.data.volumes import load_volume

    import nibabel as nib

    path = tmp_path / "long_flair.nii"  # NIfTI-2: NIfTI-1 stores each axis's length in an int16
    nib.save(nib.Nifti2Image(np.ones((4, 4, 33_000), np.int16), np.eye(4)), path)
    with pytest.raises(SliceWiseError, match=r"shape \(4, 4, 33000\): an axis longer than 32,767 voxels"):
        load_volume(path)


def test_patient_folders_named_like_missing_values_are_names(tmp_path):
    """Patients NA, None, null: pandas read them back from the manifest as NaN, and split failed with
    "'<' not supported between instances of 'str' and 'float'"."""
    from tasks.config import SplitSettings
    from tasks.data.splitting import split_dataset

    rng = np.random.default_rng(3)
    raw, out = tmp_path / "raw", tmp_path / "processed"
    names = ["NA", "None", "null", "nan", "P1", "P2", "P3", "P4"]
    for name in names:
        write_patient(raw / "brats", name, rng)
    write_kaggle(raw / "kaggle", rng)
    slice_dataset(raw, out, CFG, image_size=32, stride=1)
    split_dataset(out, tmp_path / "splits", SplitSettings(), seed=0)
    listed = sorted(line for name in ("train", "val", "test")
                    for line in (tmp_path / "splits" / f"{name}.txt").read_text().split()
                    if not line.startswith("kaggle"))
    assert [n for n in listed if n in names] == sorted(names)


def test_an_unforeseen_error_is_not_remembered_and_running_out_of_memory_fails_the_step(tmp_path, monkeypatch):
    """A MemoryError in one patient was a rejected row, remembered by its fingerprint: the patient was never sliced
    again. Now the step fails (the next run tries again), and an unforeseen error is read again next run."""
    from tasks.data import slicing

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    original = slicing.slice_patient
    failure = {"error": OverflowError("int16")}

    def slice_or_fail(patient_dir, spec):
        if patient_dir.name.endswith("002") and failure["error"]:
            raise failure["error"]
        return original(patient_dir, spec)

    monkeypatch.setattr(slicing, "slice_patient", slice_or_fail)
    assert slice_dataset(raw, out, CFG, image_size=32, stride=1)["patients"] == 2
    failure["error"] = None  # whatever it was has gone: the patient is read again, not taken as rejected
    assert slice_dataset(raw, out, CFG, image_size=32, stride=1)["patients"] == 3
    failure["error"] = MemoryError()
    with pytest.raises(SliceWiseError, match="out of memory while slicing this patient") as error:
        slice_dataset(raw, tmp_path / "fresh", CFG, image_size=32, stride=1)
    assert error.value.path.endswith("002")


def test_a_named_problem_is_remembered_whatever_its_wording(tmp_path, monkeypatch):
    """Whether a rejection is remembered was read from its reason's first words: a check of ours whose reason began
    like the unforeseen errors' ("unexpected error while slicing") was forgotten, its patient read at every run."""
    from tasks.data import slicing

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    original, read = slicing.slice_patient, []

    def slice_or_refuse(patient_dir, spec):
        read.append(patient_dir.name)
        if patient_dir.name.endswith("002"):
            raise SliceWiseError(f"{slicing.UNEXPECTED} header extension (a check of ours)", patient_dir)
        return original(patient_dir, spec)

    monkeypatch.setattr(slicing, "slice_patient", slice_or_refuse)
    in_process = lambda fn, jobs: (fn(*job) for job in jobs)  # noqa: E731 - the jobs here, where `read` sees them
    assert slice_dataset(raw, out, CFG, image_size=32, stride=1, map_jobs=in_process)["patients"] == 2
    read.clear()
    again = slice_dataset(raw, out, CFG, image_size=32, stride=1, map_jobs=in_process)
    assert read == [] and again["rejected"] == 1  # unchanged since: rejected again without reading it


def test_a_binary_tumour_mask_rejects_its_patient_and_one_without_enhancing_tumour_is_sliced(tmp_path):
    """A 0/1 mask fits the BraTS label set as necrosis alone: it trained the tumour core on whole tumours."""
    import nibabel as nib

    raw, out = make_raw(tmp_path), tmp_path / "processed"
    binary, without_enhancing = (lambda seg: (seg > 0).astype(np.uint8)), (lambda seg: np.where(seg == 4, 1, seg))
    for number, relabel in (("001", binary), ("002", without_enhancing)):
        seg = raw / "brats" / f"BraTS20_Training_{number}" / f"BraTS20_Training_{number}_seg.nii.gz"
        image = nib.load(seg)
        labels = relabel(np.asanyarray(image.dataobj))
        assert labels.any()
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), image.affine), seg)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2  # 002 (necrosis and oedema, no enhancing part: as some BraTS gliomas) is sliced
    rejected = pd.read_csv(out / "rejected.csv")
    assert [Path(f).name for f in rejected["file"]] == ["BraTS20_Training_001_seg.nii.gz"]
    assert "label 1 only: a binary tumour mask?" in rejected["reason"].iloc[0]


def test_a_pixdim_that_disagrees_with_the_sform_rejects_its_patient_and_rounding_passes(tmp_path):
    """HD95 and volumes use pixdim, the grid checks the sform: 2 mm in one and 1 mm in the other was sliced."""
    raw, out = make_raw(tmp_path), tmp_path / "processed"
    for name, zooms in (("002", (1.0, 1.0, 2.0)), ("003", (1.004, 1.0, 0.997))):  # the sform says 1 mm
        for path in (raw / "brats" / f"BraTS20_Training_{name}").iterdir():
            _rewrite(path, zooms=zooms)
    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["patients"] == 2
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["file"].map(lambda f: Path(f).parent.name).tolist() == ["BraTS20_Training_002"]
    assert rejected["reason"].iloc[0].startswith("the header's voxel size (pixdim) is 1 x 1 x 2 mm but its "
                                                 "voxel-to-world transform (sform) puts voxels 1 x 1 x 1 mm apart")
