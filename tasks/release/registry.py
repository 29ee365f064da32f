"""The model registry client: the one place that finds a version (by number or alias), downloads and verifies it.

Used by `register` (the current champion, verifying the version it created), `python -m tasks lineage` and
serving (serve/model_source.py). A registered version holds the ONNX model (`model.onnx`, mlflow.onnx flavour)
and, as extra files, the joint checkpoint (`best.pt`, for Grad-CAM) and the export's `model.json`.
MLflow and onnxruntime are imported on use, so serving starts from its cache without either.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import TrackingSettings
from tasks.errors import SliceWiseError
from tasks.io import read_json, sha256_file
from tasks.tracking.store import fluent_store, make_client, retrying, sqlite_file, tracking_uri

ONNX_FILE = "model.onnx"
EXTRA_FILES = "extra_files"
CHECKPOINT_FILE = "best.pt"
METADATA_FILE = "model.json"
EXAMPLES_ARCHIVE = "examples.zip"  # example inputs (tasks/release/examples.py), served with the model
SEEN_PATIENTS_FILE = "seen_patients.json"  # the patients the model was trained and tuned on (train + val splits)
CARD_FILE = "model_card.md"  # the whole card, logged in the registering run (serving and the flow show it from there)
# A version's figures count as measured on this test data only when all of these match: DVC's recorded hashes, and
# what is on disk (data_fingerprint: a step run by hand after `dvc repro` leaves dvc.lock stale). The gate re-scores a
# champion otherwise (tasks/release/champion.py), and the Model tab compares figures only then (serve/compare.py).
SAME_DATA_TAGS = ("data_hash", "splits_hash", "data_fingerprint")


def versioned_title(card: str, model_name: str, version) -> str:
    """The card titled with its version: it is written, and logged as CARD_FILE, before the version exists."""
    return card.replace(f"# {model_name}\n", f"# {model_name} version {version}\n", 1)


# What MLflow answers when a model, version or alias does not exist (yet).
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
# Run artifacts are searched this many folders deep.
ARTIFACT_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class RegisteredModel:
    """One registry version downloaded: the ONNX model, the torch weights (Grad-CAM) and the export's metadata."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]  # promotion, promotion_reason, git_commit, data_hash, ... (docs/CONTRACT.md)
    onnx_path: Path
    checkpoint_path: Path  # joint best.pt: tasks.inference.checkpoints.load_model rebuilds the torch model from it
    metadata: dict  # exports/model.json of that export: input, outputs, threshold, preprocessing, versions


class ModelRegistry:
    """The versions of one registered model in the project's MLflow store."""

    def __init__(self, cfg: TrackingSettings, model_name: str, client=None):
        self.cfg = cfg
        self.model_name = model_name
        self.client = client if client is not None else make_client(cfg)

    @classmethod
    def existing(cls, cfg: TrackingSettings, model_name: str) -> "ModelRegistry":
        """The registry of a store that exists: asking a local store that does not would create it empty."""
        uri = tracking_uri()
        if (path := sqlite_file(uri)) is not None and not path.exists():
            raise SliceWiseError("no MLflow store yet; run the pipeline (make run) first", uri)
        return cls(cfg, model_name)

    def by_alias(self, alias: str):
        """The version the alias points at (e.g. the champion), or None when there is no such model or alias."""
        from mlflow.exceptions import MlflowException

        try:
            return retrying(self.cfg, f"get @{alias}", self.client.get_model_version_by_alias, self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND:
                return None
            raise SliceWiseError(f"registry query failed: {exc}", tracking_uri()) from exc

    def resolve(self, ref: str):
        """Version `ref` ("3") or the version alias `ref` ("champion") points at; an error when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            if ref.isdigit():
                return retrying(self.cfg, "get version", self.client.get_model_version, self.model_name, ref)
            return retrying(self.cfg, "get alias", self.client.get_model_version_by_alias, self.model_name, ref)
        except MlflowException as exc:
            raise SliceWiseError(f"model {self.model_name!r} has no version or alias {ref!r} ({exc.error_code}); "
                                 f"{self._what_exists()}", tracking_uri()) from exc

    def _what_exists(self) -> str:
        """The versions and aliases a user can ask for instead, or how to make one."""
        try:
            numbers = sorted(int(v.version) for v in self.client.search_model_versions(f"name = '{self.model_name}'"))
            aliases = self.client.get_registered_model(self.model_name).aliases if numbers else {}
        except Exception:  # noqa: BLE001 - a hint only: the error above stands either way
            return "the registry could not list its versions"
        if not numbers:
            return "run the pipeline (make run) to register one"
        shown = ", ".join(map(str, numbers[-10:]))  # the latest ten: a long-lived registry has hundreds
        named = ", ".join(f"{alias} → {version}" for alias, version in sorted(aliases.items()))
        return (f"it has versions {'…, ' if len(numbers) > 10 else ''}{shown}"
                + (f" (aliases: {named})" if named else ""))

    def download(self, version: str, dst: Path) -> Path:
        """The files of a version (model.onnx, extra_files/...) downloaded into `dst`; returns their folder."""
        import mlflow

        with fluent_store():  # models:/ URIs resolve against the project's tracking and registry stores
            return Path(retrying(self.cfg, "download model", mlflow.artifacts.download_artifacts,
                                 artifact_uri=f"models:/{self.model_name}/{version}", dst_path=str(dst)))

    def fetch(self, ref: str, dst: Path) -> RegisteredModel:
        """Download version `ref` ("3") or alias ("champion") into `dst`."""
        version = self.resolve(ref)
        local = self.download(str(version.version), dst)
        extra = local / EXTRA_FILES
        return RegisteredModel(version.name, str(version.version), list(version.aliases or []), dict(version.tags),
                               local / ONNX_FILE, extra / CHECKPOINT_FILE, read_json(extra / METADATA_FILE))

    def verify(self, version: str, onnx_path: Path, onnx_sha256: str, checkpoint_path: Path,
               example: np.ndarray) -> None:
        """The version holds the exported files (sha256 of model.onnx and best.pt) and its model gives their
        outputs on `example`; anything else is a SliceWiseError."""
        import onnxruntime as ort

        def outputs(onnx_file: Path) -> list[np.ndarray]:
            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            return session.run(None, {"image": example})

        def same_file(path: Path, sha256: str) -> bool:
            return path.exists() and sha256_file(path) == sha256

        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(version, Path(tmp))
            onnx_file, checkpoint = local / ONNX_FILE, local / EXTRA_FILES / CHECKPOINT_FILE
            if not same_file(onnx_file, onnx_sha256):
                raise SliceWiseError(f"registered version {version} does not hold the exported model.onnx", onnx_file)
            if not same_file(checkpoint, sha256_file(checkpoint_path)):
                raise SliceWiseError(f"registered version {version} does not hold the joint checkpoint", checkpoint)
            registered = outputs(onnx_file)
        if not all(np.array_equal(a, b) for a, b in zip(registered, outputs(onnx_path))):
            raise SliceWiseError(f"registered version {version} gives other outputs than the exported model", onnx_path)

    def download_run_file(self, run_id: str, filename: str, dst: Path) -> tuple[str, Path] | None:
        """The shallowest artifact of run `run_id` named `filename` (e.g. the registering run's metrics.json),
        downloaded under `dst`: (its artifact path, the local file), or None when the run logged none."""
        import mlflow

        found = find_artifact(self.client, run_id, filename)
        if found is None:
            return None
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=found, dst_path=str(dst),
                                                    tracking_uri=tracking_uri())
        return found, Path(local)

    def run_card(self, run_id: str | None, scratch: Path | None = None) -> str | None:
        """The registering run's whole model card (CARD_FILE) as text, downloaded through a temporary folder under
        `scratch` (the system's by default); None without a run, or for a run that logged none."""
        if not run_id:
            return None
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            downloaded = self.download_run_file(run_id, CARD_FILE, Path(tmp))
            return downloaded[1].read_text() if downloaded else None


def find_artifact(client, run_id: str, filename: str) -> str | None:
    """The shallowest artifact path of the run named `filename` (searched ARTIFACT_SEARCH_DEPTH folders deep)."""
    todo, found = [("", 0)], []
    while todo:
        path, depth = todo.pop()
        for item in client.list_artifacts(run_id, path or None):
            if item.is_dir and depth < ARTIFACT_SEARCH_DEPTH:
                todo.append((item.path, depth + 1))
            elif not item.is_dir and item.path.rsplit("/", 1)[-1] == filename:
                found.append(item.path)
    return min(found, key=len) if found else None
