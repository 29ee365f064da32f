"""`register`: the exported model into the MLflow registry, through the promotion gate (tasks/gate.py).

    1. read reports/metrics.json, reports/export.json, exports/model.onnx (+ model.json) and the joint best.pt
    2. decide: thresholds, ONNX parity, and "not worse than the champion" (see champion_score)
    3. log the ONNX model (mlflow.onnx flavour, signature, input example; best.pt and model.json as extra files,
       so Grad-CAM at serving time has the torch weights) into the pipeline's parent run
    4. create a version of registry.model_name with the contract's tags and the model card as description
    5. verify it: download the version, its model.onnx must have the exported sha256 and give the same outputs
    6. move an alias: `champion` when the gate passed, `challenger` when not; end the parent run.
       A version that fails 5 or 6 is deleted, so no alias ever points at a broken version
With tracking.enabled false nothing is registered; the gate still runs and reports/register.json says so.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import paths, provenance
from tasks.config import Settings
from tasks.errors import SliceWiseError
from tasks.evaluate import write_json_atomic
from tasks.gate import ChampionScore, GateDecision, PromotionGate
from tasks.mlflow_tracking import MlflowTracker, fluent_store, retrying, tracking_uri
from tasks.model_card import render_model_card, split_summary

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged model; its extra_files/ hold best.pt and model.json
CHECKPOINT_FILE = "best.pt"
METADATA_FILE = "model.json"


@dataclass(frozen=True)
class Release:
    """Everything `register` ships, read from the files the earlier steps wrote."""

    onnx_path: Path
    checkpoint_path: Path
    metadata_path: Path
    metrics: dict
    export_report: dict
    metadata: dict
    onnx_sha256: str


def _read_json(path: Path, producer: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SliceWiseError(f"not found (run the {producer} step first)", path) from exc
    except ValueError as exc:
        raise SliceWiseError(f"not valid JSON: {exc}", path) from exc


def read_release(onnx_path: Path, metadata_path: Path, checkpoint_path: Path, metrics_path: Path,
                 export_report_path: Path) -> Release:
    for path, producer in ((onnx_path, "export"), (checkpoint_path, "train_joint")):
        if not path.exists():
            raise SliceWiseError(f"not found (run the {producer} step first)", path)
    release = Release(onnx_path, checkpoint_path, metadata_path, _read_json(metrics_path, "evaluate"),
                      _read_json(export_report_path, "export"), _read_json(metadata_path, "export"),
                      provenance.sha256_file(onnx_path))
    if release.export_report.get("onnx", {}).get("sha256") != release.onnx_sha256:
        raise SliceWiseError("the export report describes another model file; rerun the export step",
                             export_report_path)
    return release


def parity_detail(parity: dict) -> str:
    """The numbers behind the parity verdict, with their limits."""
    if "max_abs_diff" not in parity:
        return "no parity result in the export report"
    return (f"max |logit diff| {parity['max_abs_diff']:.1e} (limit {parity['atol']:.0e}), "
            f"{parity['decision_mismatches']} decision mismatches, mask Dice {parity['mask_dice']:.4f} "
            f"(min {parity['min_mask_dice']})")


def current_champion(client, cfg, model_name: str, alias: str):
    """The version the alias points at, or None (no such model or alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return retrying(cfg, "get champion", client.get_model_version_by_alias, model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def rescore_champion(model_uri: str, processed: Path, splits_dir: Path) -> float | None:
    """The champion's accuracy on the current test split at its own threshold; None if its input does not fit."""
    import mlflow

    from tasks.evaluate import predict_split, split_rows
    from tasks.predict import OnnxPredictor
    from tasks.shards import read_shard
    from tasks.split import read_split

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        metadata = json.loads((local / "extra_files" / METADATA_FILE).read_text())
        rows = split_rows(processed, read_split("test", splits_dir))
        image_shape = list(read_shard(processed / rows["shard"].iloc[0]).images.shape[1:])
        if metadata["input"]["shape"][1:] != image_shape:
            return None
        predictor = OnnxPredictor(local / "model.onnx", providers=["CPUExecutionProvider"])
        slices = predict_split(predictor, processed, rows, segmentation=False, description="re-scoring champion").slices
    decisions = slices["probability"].to_numpy() >= metadata["threshold"]
    return float((decisions == slices["label"].to_numpy().astype(bool)).mean())


def champion_score(champion, data_tags: dict[str, str], processed: Path, splits_dir: Path) -> ChampionScore:
    """The champion's test accuracy, as comparable with the challenger's as possible:
    recorded when it was tested on the same data (same data and split hashes), else re-scored on this test split,
    else (its input does not fit the current data, e.g. another image size) the recorded one, marked as such."""
    tags, version = champion.tags, str(champion.version)
    recorded = float(tags["test_accuracy"]) if "test_accuracy" in tags else None
    same_data = all(tags.get(k) == v and v != provenance.UNKNOWN for k, v in data_tags.items()
                    if k in ("data_hash", "splits_hash"))
    if same_data:
        return ChampionScore(version, recorded, "same test data")
    try:
        rescored = rescore_champion(f"models:/{champion.name}/{version}", processed, splits_dir)
    except (OSError, KeyError, ValueError) as exc:  # an old or foreign version without our metadata
        log.warning("register: cannot re-score champion v%s (%s)", version, exc)
        rescored = None
    if rescored is not None:
        return ChampionScore(version, rescored, "re-scored on this test split")
    return ChampionScore(version, recorded, "recorded on other test data")


def model_signature(channels: int, size: int):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, channels, size, size), "image")]),
        outputs=Schema([TensorSpec(f32, (-1, 1, size, size), "seg_logits"), TensorSpec(f32, (-1,), "cls_logits")]))


def input_example(processed: Path, splits_dir: Path) -> np.ndarray:
    from tasks.export import iter_test_slices

    return next(iter_test_slices(processed, splits_dir))[:1]


def serving_requirements() -> list[str]:
    """The pinned packages that run the model. Listing them also spares MLflow from inferring them (a subprocess
    that loads the model: most of the time `register` took)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("onnx", "onnxruntime", "numpy")]


def log_model(release: Release, example: np.ndarray, tracker: MlflowTracker, card: str) -> str:
    """Log the ONNX flavour (+ best.pt, model.json) and the reports into the parent run; returns the model URI."""
    import mlflow
    import mlflow.onnx
    import onnx

    _, channels, size, _ = example.shape
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / "model_card.md"
        card_path.write_text(card)
        with mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.onnx.log_model(
                onnx.load(str(release.onnx_path)), name=MODEL_ARTIFACT, signature=model_signature(channels, size),
                input_example=example, metadata=release.metadata, save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"], pip_requirements=serving_requirements(),
                extra_files=[str(release.checkpoint_path.resolve()), str(release.metadata_path.resolve())])
        for path, folder in ((card_path, None), (paths.METRICS, "reports"), (paths.EXPORT_REPORT, "reports")):
            tracker.log_artifact(path, folder)
    return info.model_uri


def verify_version(model_name: str, version: str, release: Release, example: np.ndarray) -> None:
    """The registered files are the exported ones and run: sha256 of model.onnx and best.pt, same outputs."""
    import mlflow
    import onnxruntime as ort

    def outputs(onnx_file: Path) -> list[np.ndarray]:
        return ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"image": example})

    def same_file(path: Path, sha256: str) -> bool:
        return path.exists() and provenance.sha256_file(path) == sha256

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=tmp))
        onnx_file, checkpoint = local / "model.onnx", local / "extra_files" / CHECKPOINT_FILE
        if not same_file(onnx_file, release.onnx_sha256):
            raise SliceWiseError(f"registered version {version} does not hold the exported model.onnx", onnx_file)
        if not same_file(checkpoint, provenance.sha256_file(release.checkpoint_path)):
            raise SliceWiseError(f"registered version {version} does not hold the joint checkpoint", checkpoint)
        registered = outputs(onnx_file)
    if not all(np.array_equal(a, b) for a, b in zip(registered, outputs(release.onnx_path))):
        raise SliceWiseError(f"registered version {version} gives other outputs than the exported model",
                             release.onnx_path)


def create_verified_version(client, cfg, model_name: str, model_uri: str, tags: dict, card: str,
                            release: Release, example: np.ndarray, alias: str) -> str:
    """Register, describe, verify, then point the alias at it. A version that fails any of it is deleted before
    the error is raised, so no version stays behind half-registered (without artifact, card or its alias)."""
    import mlflow

    version = str(retrying(cfg, "register model", mlflow.register_model, model_uri, model_name, tags=tags).version)
    try:
        retrying(cfg, "describe version", client.update_model_version, model_name, version,
                 description=card.replace(f"# {model_name}\n", f"# {model_name} version {version}\n", 1))
        verify_version(model_name, version, release, example)
        retrying(cfg, "set alias", client.set_registered_model_alias, model_name, alias, version)
    except Exception as exc:
        try:
            client.delete_model_version(model_name, version)
        except Exception as cleanup:  # the store is gone too: the version has no alias, say so
            log.error("register: could not delete unverified version %s: %s", version, cleanup)
        if isinstance(exc, SliceWiseError):
            raise
        raise SliceWiseError(f"registering version {version} failed and it was removed: {exc}", model_uri) from exc
    return version


def register_release(settings: Settings, release: Release, tracker: MlflowTracker, processed: Path,
                     splits_dir: Path) -> dict:
    """Gate, log, register, verify, alias. Returns the content of reports/register.json."""
    with fluent_store():
        return _register_release(settings, release, tracker, processed, splits_dir)


def _register_release(settings: Settings, release: Release, tracker: MlflowTracker, processed: Path,
                      splits_dir: Path) -> dict:
    name, cfg, reg = settings.registry.model_name, settings.tracking, settings.registry
    tags = provenance.run_tags(settings)
    champion = current_champion(tracker.client, cfg, name, reg.alias)
    score = champion_score(champion, tags, processed, splits_dir) if champion is not None else None
    decision = decide(settings, release, score)
    version_tags = tags | {
        "promotion": "promoted" if decision.promoted else "rejected", "promotion_reason": decision.reason,
        "onnx_sha256": release.onnx_sha256, "mlflow_run_id": tracker.run_id,
        "test_accuracy": str(release.metrics["classification"]["accuracy"]),
        "test_sensitivity": str(release.metrics["classification"]["sensitivity"]),
        "threshold": str(release.metrics["classification"]["threshold"]),
    }
    card = render_model_card(model_name=name, version=None, profile=settings.profile,
                             data_source=settings.data.source, image_size=settings.active.image_size,
                             modalities=list(settings.slice.modalities), splits=split_summary(processed, splits_dir),
                             metrics=release.metrics, export_report=release.export_report, decision=decision,
                             tags=version_tags)
    example = input_example(processed, splits_dir)
    model_uri = retrying(cfg, "log model", log_model, release, example, tracker, card)
    alias = reg.alias if decision.promoted else reg.challenger_alias
    version = create_verified_version(tracker.client, cfg, name, model_uri, version_tags, card, release, example,
                                      alias)
    tracker.set_tags({"registered_version": version, "promotion": version_tags["promotion"]})
    log.info("register: %s version %s -> @%s (%s)", name, version, alias, decision.reason)
    return {"registered": True, "model_name": name, "version": version, "promoted": decision.promoted, "alias": alias,
            "reason": decision.reason, "gate": decision.as_dict()["criteria"], "mlflow_run_id": tracker.run_id,
            "model_uri": f"models:/{name}/{version}", "onnx_sha256": release.onnx_sha256,
            "tracking_uri": tracking_uri()}


def decide(settings: Settings, release: Release, champion: ChampionScore | None) -> GateDecision:
    cls = release.metrics.get("classification", {})
    parity = release.export_report.get("parity", {})
    return PromotionGate.from_settings(settings.promotion).decide(
        cls.get("accuracy"), cls.get("sensitivity"), bool(parity.get("passed")), parity_detail(parity), champion)


def main(settings: Settings) -> dict:
    paths.REGISTER_REPORT.unlink(missing_ok=True)  # a failed run must not leave the previous decision looking current
    release = read_release(paths.ONNX_MODEL, paths.EXPORT_METADATA, paths.best_checkpoint("joint"), paths.METRICS,
                           paths.EXPORT_REPORT)
    if not settings.tracking.enabled:
        decision = decide(settings, release, None)
        result = {"registered": False, "model_name": settings.registry.model_name, "version": None,
                  "promoted": False, "alias": None, "gate": decision.as_dict()["criteria"],
                  "reason": f"not registered (tracking.enabled is false); the gate alone says {decision.reason}"}
    else:
        tracker = MlflowTracker.for_step(settings, "register")  # the parent run: register ends it
        try:
            result = register_release(settings, release, tracker, paths.PROCESSED, paths.SPLITS)
        except BaseException:
            tracker.close("FAILED")
            raise
        tracker.close()
    write_json_atomic(result, paths.REGISTER_REPORT)
    return result
