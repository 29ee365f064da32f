"""A retried `register` (Prefect retries it: the store is on the network) must never break the champion that an
earlier attempt promoted: neither delete the version holding the alias nor the logged model behind it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tasks.config import TrackingSettings
from tasks.errors import SliceWiseError
from tasks.io import sha256_file


def tiny_onnx(path: Path, k: float) -> Path:
    """image (N, 1, 8, 8) → seg_logits = k * image, cls_logits = mean of seg_logits."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])
    seg = helper.make_tensor_value_info("seg_logits", TensorProto.FLOAT, [None, 1, 8, 8])
    cls = helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, [None])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "k"], ["seg_logits"]),
         helper.make_node("ReduceMean", ["seg_logits"], ["mean"], keepdims=0),
         helper.make_node("Reshape", ["mean", "shape"], ["cls_logits"])],
        "tiny", [image], [seg, cls],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [1], [k]),
                     helper.make_tensor("shape", TensorProto.INT64, [1], [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    from tasks.release import versions
    from tasks.release.release_files import Release
    from tasks.release.registry import ModelRegistry
    from tasks.tracking.mlflow_runs import MlflowTracker
    from tasks.tracking.store import fluent_store, make_client

    cfg = TrackingSettings(max_attempts=1, backoff_seconds=0)
    client = make_client(cfg)
    experiment = client.create_experiment("retry", artifact_location=(tmp_path / "artifacts").as_uri())
    (tmp_path / "best.pt").write_bytes(b"weights")
    (tmp_path / "model.json").write_text("{}")
    registry = ModelRegistry(cfg, "slicewise", client)
    example = np.ones((1, 1, 8, 8), np.float32)

    def attempt(run_id: str, k: float):
        onnx_path = tiny_onnx(tmp_path / f"m{k}.onnx", k)
        release = Release(onnx_path, tmp_path / "best.pt", tmp_path / "model.json", {}, {}, {}, sha256_file(onnx_path))
        tracker = MlflowTracker(client, run_id, cfg)
        tags = {"onnx_sha256": release.onnx_sha256, "mlflow_run_id": run_id}
        with fluent_store():
            logged = versions.log_model(release, example, tracker, "# slicewise\ncard")
            version = versions.create_verified_version(registry, logged.model_uri, tags, "# slicewise\ncard",
                                                       release, example, "champion")
        return version, tracker, release

    run = lambda: client.create_run(experiment).info.run_id  # noqa: E731
    return versions, registry, attempt, run, example


def test_a_retry_that_fails_to_log_keeps_the_champions_model(store, tmp_path):
    versions, registry, attempt, run, _ = store
    attempt(run(), 1.0)
    version, tracker, _ = attempt(run(), 2.0)  # attempt 1 of a pipeline run: promoted, then something later failed
    assert registry.by_alias("champion").version == int(version)
    # attempt 2 fails while logging: what register's cleanup does then
    versions.discard_logged_models(tracker, None, keep=versions.registered_model_ids(registry))
    champion = registry.by_alias("champion")
    assert champion.version == int(version)
    downloaded = registry.download(str(champion.version), tmp_path / "download")
    assert any(p.suffix == ".onnx" for p in downloaded.rglob("*"))  # its files are all still there


def test_asking_for_a_version_that_does_not_exist_lists_those_that_do(store):
    _, registry, attempt, run, _ = store
    with pytest.raises(SliceWiseError, match="run the pipeline"):  # nothing registered yet: how to make one
        registry.resolve("champion")
    attempt(run(), 1.0)
    attempt(run(), 2.0)
    listed = r"no version or alias '99'.*it has versions 1, 2 \(aliases: champion → 2\)"
    with pytest.raises(SliceWiseError, match=listed):
        registry.resolve("99")


def test_a_retry_that_fails_to_verify_keeps_the_version_holding_the_alias(store):
    versions, registry, attempt, run, example = store
    attempt(run(), 1.0)
    pipeline_run = run()
    version, _, release = attempt(pipeline_run, 2.0)

    def failing_verify(*args, **kwargs):
        raise SliceWiseError("download failed after 3 attempt(s)")

    registry.verify = failing_verify  # attempt 2 finds the same version (same run, same ONNX) and cannot verify it
    deleted = []
    real_delete = registry.client.delete_model_version
    registry.client.delete_model_version = lambda *a, **k: deleted.append(a) or real_delete(*a, **k)
    with pytest.raises(SliceWiseError, match="download failed after 3 attempt"):
        versions.create_verified_version(registry, "models:/whatever", {"onnx_sha256": release.onnx_sha256,
                                         "mlflow_run_id": pipeline_run}, "# slicewise\ncard", release, example,
                                         "champion")
    # the version found was attempt 1's own (no new one made, and so none deleted), and it keeps the alias
    assert deleted == []
    assert registry.by_alias("champion").version == int(version)
    listed = registry.client.search_model_versions(f"name = '{registry.model_name}'")
    assert sorted(int(v.version) for v in listed) == [1, 2]


def test_when_the_store_cannot_say_what_is_registered_only_the_known_model_goes(store, tmp_path):
    """A store that fails mid-cleanup: nothing found by search is deleted, and no artifact folder is removed
    whose model the store did not let go."""
    versions, registry, attempt, run, _ = store
    version, tracker, _ = attempt(run(), 1.0)

    class Flaky:  # the registry's and the run's client, with the deletes and the lookups failing
        def __init__(self, client):
            self.client = client

        def __getattr__(self, name):
            if name in ("search_model_versions", "delete_logged_model", "get_model_version"):
                raise ConnectionError("database is locked")
            return getattr(self.client, name)

    registry.client = tracker.client = Flaky(tracker.client)
    assert versions.registered_model_ids(registry) is None and versions._holds_alias(registry, version)
    versions.discard_logged_models(tracker, None, keep=versions.registered_model_ids(registry))
    registry.client = tracker.client = tracker.client.client
    downloaded = registry.download(version, tmp_path / "download")
    assert any(p.suffix == ".onnx" for p in downloaded.rglob("*"))


def test_a_retry_judged_otherwise_gets_a_version_of_its_own(store):
    """Attempt 1 registered v as rejected (@challenger) and failed after; the champion changed; attempt 2 passed
    the gate and reused v, its tags still "rejected": both aliases on one version, the served model's card saying
    it was refused."""
    versions, registry, attempt, run, example = store
    pipeline_run = run()
    first, _, release = attempt(pipeline_run, 2.0)
    base = {"onnx_sha256": release.onnx_sha256, "mlflow_run_id": pipeline_run}
    registry.client.set_model_version_tag(registry.model_name, first, "promotion", "rejected")
    same_verdict = versions.find_or_create_version(registry, "models:/unused", base | {"promotion": "rejected"},
                                                   pipeline_run)
    assert same_verdict == first  # the same release: completed, not registered twice
    logged = registry.client.get_model_version(registry.model_name, first).source
    other = versions.find_or_create_version(registry, logged, base | {"promotion": "promoted"}, pipeline_run)
    assert other != first
    assert registry.client.get_model_version(registry.model_name, other).tags["promotion"] == "promoted"


def test_a_version_left_without_an_alias_by_a_killed_register_is_completed_by_the_next_run(store, tmp_path):
    """A register killed (SIGKILL) between creating its version and moving the alias, rerun under a new parent run (a
    code change, or the other front door): the version found by run alone stayed behind, tagged "promoted", never
    verified, and a second version of the same release took the alias."""
    from tasks.tracking.mlflow_runs import MlflowTracker
    from tasks.tracking.store import fluent_store

    versions, registry, attempt, run, example = store
    attempt(run(), 1.0)  # an earlier champion
    killed_run, rerun = run(), run()
    onnx_path = tiny_onnx(tmp_path / "m2.onnx", 2.0)
    sha = sha256_file(onnx_path)
    from tasks.release.release_files import Release

    release = Release(onnx_path, tmp_path / "best.pt", tmp_path / "model.json", {}, {}, {}, sha)
    release_tags = {"onnx_sha256": sha, "promotion": "promoted", "data_hash": "d1"}
    with fluent_store():
        logged = versions.log_model(release, example, MlflowTracker(registry.client, killed_run, registry.cfg), "# c")
        left = versions.find_or_create_version(registry, logged.model_uri, release_tags | {"mlflow_run_id": killed_run},
                                               killed_run)  # ... and killed here: no description, no alias
        again = versions.log_model(release, example, MlflowTracker(registry.client, rerun, registry.cfg), "# c")
        version = versions.create_verified_version(registry, again.model_uri, release_tags | {"mlflow_run_id": rerun},
                                                   "# slicewise\ncard", release, example, "champion")
    assert version == left
    assert registry.by_alias("champion").version == int(left)
    assert registry.client.get_model_version(registry.model_name, left).tags["mlflow_run_id"] == rerun
    assert len(registry.client.search_model_versions(f"name = '{registry.model_name}'")) == 2  # v1 and this one
    # another data set is another release: a version of its own, whatever the alias-less one holds
    registry.client.delete_registered_model_alias(registry.model_name, "champion")
    with fluent_store():
        other = versions.find_or_create_version(registry, again.model_uri, release_tags | {"data_hash": "d2"}, rerun)
    assert other not in (left, "1")
