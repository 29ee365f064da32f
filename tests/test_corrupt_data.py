"""A damaged shard is never reused, never committed, and never fails a later step without naming it (issue 13, 5).

Reproduced as reported: `truncate -s` on a shard of data/processed, then `slice` (directly, and through
`dvc repro`), then training on it.
"""

from __future__ import annotations

import os

import numpy as np
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
    other = read_shard(out / "brats" / "BraTS20_Training_001.npz")
    fewer = type(other)(**{k: (v[:3] if k != "spacing" else v) for k, v in other.__dict__.items()})
    write_shard(shard, fewer)  # a valid file, but not what the manifest says is there
    assert "expected" in shard_problem(shard, len(read_shard(out / "brats" / "BraTS20_Training_001.npz")) + 1, 1, 32)

    result = slice_dataset(raw, out, CFG, image_size=32, stride=1)
    assert result["damaged_shards"] == [str(shard)] and len(read_shard(shard)) != 3


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
