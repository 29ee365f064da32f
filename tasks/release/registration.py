"""The exported model into the MLflow registry, through the promotion gate (tasks/release/gate.py): `register`.

    1. read reports/metrics.json, reports/export.json, exports/model.onnx (+ model.json) and the joint best.pt
    2. decide: thresholds, ONNX parity, and "not worse than the champion" (see champion_score)
    3. log the ONNX model (mlflow.onnx flavour, signature, input example; best.pt and model.json as extra files,
       so Grad-CAM at serving time has the torch weights; examples.zip, test-split inputs to try: examples.py)
       into the pipeline's parent run
    4. create a version of registry.model_name with the contract's tags and the model card as description
    5. verify it: download the version, its model.onnx must have the exported sha256 and give the same outputs
    6. move an alias: `champion` when the gate passed, `challenger` when not; end the parent run.
       A version that fails 5 or 6 is deleted, so no alias ever points at a broken version
A release that the version holding its alias already is (same ONNX file, data and split hashes, same metrics.json,
same verdict, its files verified: a rerun after a code change that left the model as it was) creates no new version;
register.json says `reused`.
Retries are idempotent: a version is created only after asking whether this run already registered this ONNX
file (a retry after a lost response, or a rerun of an interrupted register, finds it). A register that fails or
is interrupted removes the logged models it left in the run (and their local artifact folders), so nothing
half-registered stays behind; a store lost meanwhile gives one error line, not MLflow's tracebacks.
With tracking.enabled false nothing is registered; the gate still runs and reports/register.json says so.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from tasks import paths
from tasks.config import Settings
from tasks.data.splits import iter_test_slices, read_split, split_rows
from tasks.data.subjects import subject_of
from tasks.errors import SliceWiseError
from tasks.inference.predictor import LEGACY_SLICE_SCORE, MASK_THRESHOLD, evaluated_in_volume, evaluated_slice_score
from tasks.io import read_json, sha256_file
from tasks.release.examples import bundle_examples
from tasks.release.gate import ChampionScore, GateDecision, PromotionGate
from tasks.release.model_card import render_model_card, split_summary
from tasks.release.registry import EXTRA_FILES, METADATA_FILE, ONNX_FILE, SEEN_PATIENTS_FILE, ModelRegistry
from tasks.tracking import provenance
from tasks.tracking.mlflow_runs import MlflowTracker
from tasks.redaction import redact
from tasks.tracking.store import check_store_present, fluent_store, retrying, tracking_uri

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged model; its extra_files/ hold best.pt and model.json


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


def read_release(onnx_path: Path, metadata_path: Path, checkpoint_path: Path, metrics_path: Path,
                 export_report_path: Path) -> Release:
    for path, producer in ((onnx_path, "export"), (checkpoint_path, "train_joint")):
        if not path.exists():
            raise SliceWiseError(f"not found (run the {producer} step first)", path)
    release = Release(onnx_path, checkpoint_path, metadata_path, read_json(metrics_path, "evaluate"),
                      read_json(export_report_path, "export"), read_json(metadata_path, "export"),
                      sha256_file(onnx_path))
    if release.export_report.get("onnx", {}).get("sha256") != release.onnx_sha256:
        raise SliceWiseError("the export report describes another model file; rerun the export step",
                             export_report_path)
    check_one_model(release, metrics_path)
    return release


def check_one_model(release: Release, metrics_path: Path) -> None:
    """The gate judges metrics.json and the registry ships model.onnx and best.pt: all three must be one model.
    A step run by hand out of order (evaluate again after export, or train again after evaluate) would otherwise
    promote one model on another's numbers."""
    weights = sha256_file(release.checkpoint_path)
    evaluated = (release.metrics.get("model") or {}).get("checkpoint_sha256")
    if evaluated is not None and evaluated != weights:
        raise SliceWiseError(f"metrics.json evaluated other weights than {release.checkpoint_path}; rerun the "
                             "evaluate step (then export)", metrics_path)
    exported = (release.metadata.get("checkpoint") or {}).get("sha256")
    if exported is not None and exported != weights:
        raise SliceWiseError(f"model.onnx was exported from other weights than {release.checkpoint_path}; rerun the "
                             "export step", release.metadata_path)
    pairs = {"decision threshold": ((release.metrics.get("classification") or {}).get("threshold"),
                                    release.metadata.get("threshold")),
             "mask threshold": ((release.metrics.get("segmentation_threshold") or {}).get("value"),
                                release.metadata.get("mask_threshold"))}
    for name, (judged, shipped) in pairs.items():
        a, b = _finite_number(judged), _finite_number(shipped)
        if a is not None and b is not None and not math.isclose(a, b):
            raise SliceWiseError(f"the {name} in metrics.json ({judged}) is not the exported model's ({shipped}): "
                                 "rerun the export step", release.metadata_path)
    judged = evaluated_slice_score(release.metrics), evaluated_in_volume(release.metrics)
    shipped = release.metadata.get("slice_score", LEGACY_SLICE_SCORE), bool(release.metadata.get("slices_in_volume"))
    if judged != shipped:
        raise SliceWiseError(f"metrics.json scored slices by {judged[0]!r} (in volume: {judged[1]}), the exported "
                             f"model by {shipped[0]!r} (in volume: {shipped[1]}): rerun the export step",
                             release.metadata_path)


def parity_detail(parity: dict) -> str:
    """The numbers behind the parity verdict, with their limits."""
    if "max_abs_diff" not in parity:
        return "no parity result in the export report"
    return (f"max |logit diff| {parity['max_abs_diff']:.1e} (limit {parity['atol']:.0e}), "
            f"{parity['decision_mismatches']} decision mismatches, mask Dice {parity['mask_dice']:.4f} "
            f"(min {parity['min_mask_dice']})")


def rescore_champion(registry: ModelRegistry, version: str, processed: Path, splits_dir: Path,
                     challenger: Release | None = None) -> tuple[float, list[str], float | None] | None:
    """The champion's accuracy on the current test split at its own threshold, leaving out the patients it was
    trained or tuned on (a split redrawn after patients were added can put them in today's test split, where it
    would shine), the patients it was scored on, and, when that is part of the split only, `challenger`'s accuracy
    on the same slices (its metrics.json figure covers the whole split: another population). None if its input does
    not fit or no test patient is new to it."""
    from tasks.data.shards import read_shard

    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download(version, Path(tmp))
        metadata = read_json(local / EXTRA_FILES / METADATA_FILE, default=None)
        if metadata is None:
            raise ValueError(f"no readable {METADATA_FILE}")
        seen = read_json(local / EXTRA_FILES / SEEN_PATIENTS_FILE, default=[])  # older versions: none known
        seen_subjects = {subject_of(patient) for patient in seen}  # another timepoint of a person it has seen
        today = read_split("test", splits_dir)
        test = [patient for patient in today if subject_of(patient) not in seen_subjects]
        if not test:
            return None
        rows = split_rows(processed, test)
        image_shape = list(read_shard(processed / rows["shard"].iloc[0]).images.shape[1:])
        if metadata["input"]["shape"][1:] != image_shape:
            return None
        accuracy = onnx_accuracy(local / ONNX_FILE, metadata, processed, rows, "re-scoring champion")
    if len(test) == len(today):
        return accuracy, test, None
    log.info("register: re-scoring champion v%s and this model without the %d test patients the champion was "
             "trained or tuned on", version, len(today) - len(test))
    mine = onnx_accuracy(challenger.onnx_path, challenger.metadata, processed, rows, "scoring this model alike") \
        if challenger is not None else None
    return accuracy, test, mine


def onnx_accuracy(onnx_path: Path, metadata: dict, processed: Path, rows, description: str) -> float:
    """An exported model's slice accuracy on `rows` at its own threshold and slice score, its BraTS slices scored in
    their volume when it was judged that way (model.json `slices_in_volume`, at its own mask threshold)."""
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import OnnxPredictor

    predictor = OnnxPredictor(onnx_path, providers=["CPUExecutionProvider"],
                              slice_score=metadata.get("slice_score", LEGACY_SLICE_SCORE))  # its own rule
    slices = predict_split(predictor, processed, rows, segmentation=False, description=description,
                           in_volume=bool(metadata.get("slices_in_volume")),
                           mask_threshold=float(metadata.get("mask_threshold", MASK_THRESHOLD))).slices
    decisions = slices["probability"].to_numpy() >= metadata["threshold"]
    return float((decisions == slices["label"].to_numpy().astype(bool)).mean())


# A champion's recorded figures count as measured on this test data only when all of these match: DVC's recorded
# hashes, and what is on disk (data_fingerprint: a step run by hand after `dvc repro` leaves dvc.lock stale).
SAME_DATA_TAGS = ("data_hash", "splits_hash", "data_fingerprint")


def champion_score(registry: ModelRegistry, champion, data_tags: dict[str, str], processed: Path,
                   splits_dir: Path, challenger: Release | None = None) -> ChampionScore:
    """The champion's test accuracy, as comparable with the challenger's as possible:
    recorded when it was tested on the same data (same data and split hashes), else re-scored on this test split
    (on its patients new to the champion, with `challenger` scored on the same slices when that leaves some out),
    else (its input does not fit the current data, e.g. another image size) the recorded one, marked as such."""
    tags, version = champion.tags, str(champion.version)
    recorded = _finite_number(tags.get("test_accuracy"))
    same_data = all(tags.get(k) == data_tags.get(k) not in (None, provenance.UNKNOWN) for k in SAME_DATA_TAGS)
    if same_data and recorded is not None:
        return ChampionScore(version, recorded, "same test data")
    try:
        rescored = rescore_champion(registry, version, processed, splits_dir, challenger)
    except Exception as exc:  # noqa: BLE001 - an old or foreign version without our metadata, an ONNX file
        # onnxruntime refuses, artifacts the store lost: the champion's own record is then all there is to compare,
        # and it must not stop this model from being registered
        log.warning("register: cannot re-score champion v%s (%s: %s)", version, type(exc).__name__, exc)
        rescored = None
    if rescored is None:
        return ChampionScore(version, recorded, "recorded on other test data")
    accuracy, patients, mine = rescored
    if mine is None:
        return ChampionScore(version, accuracy, "re-scored on this test split")
    return ChampionScore(version, accuracy, f"both scored on the {len(patients)} test patients new to the champion",
                         challenger_accuracy=mine)


def _finite_number(tag) -> float | None:
    """A number from a registry tag or a JSON field; None when it is missing or not a finite number (a hand-set
    or foreign version, a damaged file)."""
    try:
        value = float(tag)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def model_signature(channels: int, size: int, regions: int):
    """The ONNX model's tensors: `regions` segmentation channels (WT, TC, ET; one for a whole-tumour model)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, channels, size, size), "image")]),
        outputs=Schema([TensorSpec(f32, (-1, regions, size, size), "seg_logits"),
                        TensorSpec(f32, (-1,), "cls_logits")]))


def input_example(processed: Path, splits_dir: Path) -> np.ndarray:
    return next(iter_test_slices(processed, splits_dir))[:1]


def serving_requirements() -> list[str]:
    """The pinned packages that run the model. Listing them also spares MLflow from inferring them (a subprocess
    that loads the model: most of the time `register` took)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("onnx", "onnxruntime", "numpy")]


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    model_uri: str
    artifact_location: str


def log_model(release: Release, example: np.ndarray, tracker: MlflowTracker, card: str,
              examples: Path | None = None, seen_patients: Path | None = None) -> LoggedModel:
    """Log the ONNX flavour (+ best.pt, model.json, the bundled examples, the patients it has seen) and the reports
    into the parent run."""
    import mlflow
    import mlflow.onnx
    import onnx

    _, channels, size, _ = example.shape
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / "model_card.md"
        card_path.write_text(card)
        with mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.onnx.log_model(
                onnx.load(str(release.onnx_path)), name=MODEL_ARTIFACT,
                signature=model_signature(channels, size, len(release.metadata.get("regions", ["wt"]))),
                input_example=example, metadata=release.metadata, save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"], pip_requirements=serving_requirements(),
                extra_files=[str(release.checkpoint_path.resolve()), str(release.metadata_path.resolve())]
                + [str(extra.resolve()) for extra in (examples, seen_patients) if extra is not None])
        # leaving mlflow.start_run's block ended the parent run FINISHED, in the middle of register: it runs on
        retrying(tracker.cfg, "reopen parent run", tracker.client.update_run, tracker.run_id, "RUNNING")
        logged = LoggedModel(info.model_id, info.model_uri,
                             retrying(tracker.cfg, "get logged model", tracker.client.get_logged_model,
                                      info.model_id).artifact_location)
        for path, folder in ((card_path, None), (paths.METRICS, "reports"), (paths.EXPORT_REPORT, "reports")):
            tracker.log_artifact(path, folder)
    return logged


def find_or_create_version(registry: ModelRegistry, model_uri: str, tags: dict, run_id: str) -> str:
    """The version of this run for this ONNX file when an earlier attempt created one (its answer lost, or the
    attempt interrupted before verifying it), else a new one: so a retry never registers the model twice."""
    import mlflow

    versions = registry.client.search_model_versions(f"name = '{registry.model_name}' and run_id = '{run_id}'")
    mine = [v for v in versions if (v.tags or {}).get("onnx_sha256") == tags["onnx_sha256"]]
    if mine:
        version = max(mine, key=lambda v: int(v.version))
        log.warning("register: version %s of this run already holds this model (an earlier attempt created it); "
                    "completing it instead of creating another", version.version)
        return str(version.version)
    return str(mlflow.register_model(model_uri, registry.model_name, tags=tags).version)


def discard_logged_models(tracker: MlflowTracker, known: LoggedModel | None, search: bool = True,
                          keep: frozenset[str] | None = frozenset()) -> None:
    """Remove what a failed register logged: the run's logged models (the known one, and with `search` any whose
    creation answer was lost) and their local artifact folders, except those in `keep`: the models behind
    registered versions (a retried register must never delete the champion an earlier attempt promoted). `keep`
    None means the store could not say which those are: then only the known model goes. Best effort: the store may
    be why it failed, and a folder is only removed once the store has let its model go."""
    client, models = tracker.client, {}
    if known is not None:
        models[known.model_id] = known.artifact_location
    if search and keep is not None:
        models |= _logged_models_of_run(tracker)
    for model_id, location in models.items():
        if keep and model_id in keep:
            log.info("register: kept logged model %s, which a registered version uses", model_id)
            continue
        try:
            client.delete_logged_model(model_id)
        except Exception as exc:
            log.warning("register: could not delete logged model %s (%s)", model_id, type(exc).__name__)
            if not _store_lost():  # the store may still list it (the champion?): its files stay with it
                continue
        if location and location.startswith("file:"):
            folder = Path(unquote(urlparse(location).path))
            folder = folder.parent if folder.parent.name == model_id else folder  # .../models/<id>/artifacts
            shutil.rmtree(folder, ignore_errors=True)
        log.info("register: removed logged model %s", model_id)


def _store_lost() -> bool:
    """The local store file that this process used is gone: no version can point at the files left behind."""
    try:
        check_store_present("register clean-up")
    except SliceWiseError:
        return True
    return False


def _holds_alias(registry: ModelRegistry, version: str) -> bool:
    """Whether the version holds an alias; True when the store cannot say (keeping a version errs safe, deleting
    the champion's would not)."""
    try:
        return bool(registry.client.get_model_version(registry.model_name, version).aliases)
    except Exception:
        return True


def registered_model_ids(registry: ModelRegistry) -> frozenset[str] | None:
    """The logged models behind the registered versions (champion, challenger, any other); None when the store
    cannot say."""
    try:
        versions = registry.client.search_model_versions(f"name = '{registry.model_name}'")
    except Exception:
        return None
    return frozenset(v.model_id or v.source.rsplit("/", 1)[-1] for v in versions)


def _logged_models_of_run(tracker: MlflowTracker) -> dict[str, str]:
    client = tracker.client
    try:
        experiment_id = client.get_run(tracker.run_id).info.experiment_id
        found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{tracker.run_id}'")
    except Exception as exc:  # the store is gone or unreachable: remove what we know of
        log.warning("register: cannot list the logged models of run %s (%s)", tracker.run_id, type(exc).__name__)
        return {}
    return {m.model_id: m.artifact_location for m in found}


def create_verified_version(registry: ModelRegistry, model_uri: str, tags: dict, card: str, release: Release,
                            example: np.ndarray, alias: str) -> str:
    """Register, describe, verify, then point the alias at it. A version that fails any of it is deleted before
    the error is raised, so no version stays behind half-registered (without artifact, card or its alias)."""
    import mlflow

    client, cfg, model_name = registry.client, registry.cfg, registry.model_name
    version = retrying(cfg, "register model", find_or_create_version, registry, model_uri, tags, tags["mlflow_run_id"])
    try:
        retrying(cfg, "describe version", client.update_model_version, model_name, version,
                 description=card.replace(f"# {model_name}\n", f"# {model_name} version {version}\n", 1))
        registry.verify(version, release.onnx_path, release.onnx_sha256, release.checkpoint_path, example)
        retrying(cfg, "set alias", client.set_registered_model_alias, model_name, alias, version)
    except BaseException as exc:  # an interrupt too: no half-registered version stays behind
        kept = _holds_alias(registry, version)  # an earlier attempt completed it (a retried register): keep it
        if not kept:
            try:
                client.delete_model_version(model_name, version)
            except Exception as cleanup:  # the store is gone too: the version has no alias, say so
                log.error("register: could not delete unverified version %s: %s", version, type(cleanup).__name__)
        if isinstance(exc, (SliceWiseError, KeyboardInterrupt, SystemExit)):
            raise
        what = "it keeps the alias an earlier attempt gave it" if kept else "it was removed"
        raise SliceWiseError(f"registering version {version} failed and {what}: {exc}", model_uri) from exc
    return version


def register_release(settings: Settings, release: Release, tracker: MlflowTracker, processed: Path,
                     splits_dir: Path) -> dict:
    """Gate, log, register, verify, alias. Returns the content of reports/register.json."""
    with fluent_store():
        return _register_release(settings, release, tracker, processed, splits_dir)


def _register_release(settings: Settings, release: Release, tracker: MlflowTracker, processed: Path,
                      splits_dir: Path) -> dict:
    name, cfg, reg = settings.registry.model_name, settings.tracking, settings.registry
    tags = provenance.run_tags(settings) | {"data_fingerprint": provenance.data_fingerprint(processed, splits_dir)}
    registry = ModelRegistry(cfg, name, tracker.client)
    champion = registry.by_alias(reg.alias)
    score = champion_score(registry, champion, tags, processed, splits_dir, release) if champion is not None \
        else None
    decision = decide(settings, release, score)
    version_tags = tags | {
        "promotion": "promoted" if decision.promoted else "rejected", "promotion_reason": decision.reason,
        "promotion_gate": json.dumps(decision.as_dict()["criteria"]),  # machine-readable: /model/info shows it
        "onnx_sha256": release.onnx_sha256, "mlflow_run_id": tracker.run_id,
        "metrics_sha256": sha256_file(paths.METRICS),  # the figures the tags and the card show
        # .get: a metric missing from metrics.json fails its gate criterion (above), it must not crash the tags
        "test_accuracy": str((release.metrics.get("classification") or {}).get("accuracy")),
        "test_sensitivity": str((release.metrics.get("classification") or {}).get("sensitivity")),
        "test_dice": str((release.metrics.get("segmentation") or {}).get("dice")),
        "test_volume_dice": str((release.metrics.get("segmentation_volume") or {}).get("dice")),
        "threshold": str((release.metrics.get("classification") or {}).get("threshold")),
        "slice_score": evaluated_slice_score(release.metrics),  # what the threshold applies to
    }
    card = render_model_card(model_name=name, version=None, profile=settings.profile,
                             data_source=settings.data.source, image_size=settings.active.image_size,
                             modalities=list(settings.slice.modalities), splits=split_summary(processed, splits_dir),
                             metrics=release.metrics, export_report=release.export_report, decision=decision,
                             tags=version_tags)
    alias = reg.alias if decision.promoted else reg.challenger_alias
    holder = champion if alias == reg.alias else registry.by_alias(alias)
    example = input_example(processed, splits_dir)
    # not this run's own version (a register cut off after its alias moved, rerun): that one it completes below
    if holder is not None and holder.run_id != tracker.run_id and already_registered(holder, version_tags) \
            and still_intact(registry, holder, release, example):
        return kept_version(settings, decision, holder, alias, tracker, release)
    logged = None
    try:
        with tempfile.TemporaryDirectory() as tmp:  # test-split examples the served model carries (serve/examples.py)
            examples = bundle_examples(processed, splits_dir, paths.RAW_BRATS, settings.slice.modalities, Path(tmp))
            seen = Path(tmp) / SEEN_PATIENTS_FILE  # so that a later register never re-scores it on them
            seen.write_text(json.dumps(sorted(read_split("train", splits_dir) + read_split("val", splits_dir))))
            logged = retrying(cfg, "log model", log_model, release, example, tracker, card, examples, seen)
        version = create_verified_version(registry, logged.model_uri, version_tags, card, release, example, alias)
    except BaseException:
        discard_logged_models(tracker, logged, keep=registered_model_ids(registry))
        raise
    registered = retrying(cfg, "read version", registry.client.get_model_version, name, version)
    if registered.source != logged.model_uri:  # an earlier attempt's model was completed instead
        discard_logged_models(tracker, logged, search=False, keep=registered_model_ids(registry))
    tracker.set_tags({"registered_version": version, "promotion": version_tags["promotion"]})
    log.info("register: %s version %s -> @%s (%s)", name, version, alias, decision.reason)
    return {"registered": True, "model_name": name, "version": version, "promoted": decision.promoted, "alias": alias,
            "reason": decision.reason, "gate": decision.as_dict()["criteria"], "mlflow_run_id": tracker.run_id,
            "model_uri": f"models:/{name}/{version}", "onnx_sha256": release.onnx_sha256,
            "tracking_uri": redact(tracking_uri())}


# What makes a version this very release: the same ONNX file, judged on the same data and split with the same figures
# (metrics.json: its tags and model card show them), with the same verdict
SAME_RELEASE_TAGS = ("onnx_sha256", "data_hash", "splits_hash", "metrics_sha256", "promotion")


def already_registered(version, tags: dict[str, str]) -> bool:
    """Whether `version` (holding the alias this release would get) is this release already: a rerun of register on
    an unchanged model (its code or a setting that does not change the verdict changed) then creates no copy."""
    held = version.tags or {}
    return all(tags.get(key) not in (None, provenance.UNKNOWN) and held.get(key) == tags[key]
               for key in SAME_RELEASE_TAGS)


def still_intact(registry: ModelRegistry, version, release: Release, example: np.ndarray) -> bool:
    """Whether the version still holds this release's files and gives its outputs (registry.verify); when not (its
    artifacts were lost), a new version is registered instead of keeping an alias on a broken one."""
    try:
        registry.verify(str(version.version), release.onnx_path, release.onnx_sha256, release.checkpoint_path, example)
    except SliceWiseError as exc:
        log.warning("register: version %s holds this release but failed verification (%s); registering it again",
                    version.version, exc.reason)
        return False
    return True


def kept_version(settings: Settings, decision: GateDecision, version, alias: str, tracker: MlflowTracker,
                 release: Release) -> dict:
    """register.json for a release that a version already holds, with its alias: nothing logged, nothing created.
    `mlflow_run_id` is the run that registered it (its model, card and reports are there); this run is
    `reused_by_run_id`."""
    name, number = settings.registry.model_name, str(version.version)
    tracker.set_tags({"registered_version": number, "promotion": "promoted" if decision.promoted else "rejected",
                      "reused_version": "true"})
    log.info("register: %s version %s already holds this model (same ONNX file, data, split and figures, same "
             "verdict) as @%s; no new version", name, number, alias)
    return {"registered": True, "reused": True, "model_name": name, "version": number, "promoted": decision.promoted,
            "alias": alias, "reason": decision.reason, "gate": decision.as_dict()["criteria"],
            "mlflow_run_id": version.run_id, "reused_by_run_id": tracker.run_id,
            "model_uri": f"models:/{name}/{number}", "onnx_sha256": release.onnx_sha256,
            "tracking_uri": redact(tracking_uri())}


def decide(settings: Settings, release: Release, champion: ChampionScore | None) -> GateDecision:
    parity = release.export_report.get("parity", {})
    return PromotionGate.from_settings(settings.promotion).decide(
        release.metrics, bool(parity.get("passed")), parity_detail(parity), champion)

