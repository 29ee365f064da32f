"""A release as MLflow objects: the logged ONNX model and the registry version made from it, created once per
run and file, verified, and removed again when anything fails on the way (tasks/release/registration.py drives it)."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from tasks import paths
from tasks.data.splits import iter_test_slices
from tasks.errors import SliceWiseError
from tasks.release.registry import CARD_FILE, ModelRegistry, versioned_title
from tasks.release.release_files import Release
from tasks.tracking.mlflow_runs import MlflowTracker
from tasks.tracking.store import check_store_present, retrying

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged model; its extra_files/ hold best.pt and model.json


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


# MLflow keeps a version's description in a column of 5,000 characters: VARCHAR(5000) on PostgreSQL and MySQL, which
# refused a longer card and with it the registration (SQLite does not enforce it; the quick model's card had 6,100).
DESCRIPTION_LIMIT = 5000


def version_description(card: str, model_name: str, version: str) -> str:
    """The card as version `version`'s description: titled with its version and, when longer than MLflow keeps, cut
    after its last whole section that fits, or within the next one after its last whole paragraph that fits (its
    table before its notes), with a line naming what is left out and the file that has it. Cut at whole sections
    only, one line added to Test metrics left the description without any test figure (version 10's first card)."""
    titled = versioned_title(card, model_name, version)
    if len(titled) <= DESCRIPTION_LIMIT:
        return titled
    sections = re.split(r"\n(?=## )", titled)
    kept, left_out = [sections[0][:DESCRIPTION_LIMIT // 2]], []
    for section in sections[1:]:
        name = section.splitlines()[0].removeprefix("## ")
        room = DESCRIPTION_LIMIT - 400 - len("\n".join(kept)) - 1  # 400 characters for the closing line
        if not left_out and len(section) <= room:
            kept.append(section)
        elif not left_out and (head := _leading_paragraphs(section, room)):
            kept.append(head)
            left_out.append(f"the rest of {name}")
        else:
            left_out.append(name)
    names = ", ".join(left_out)
    described = ("\n".join(kept).rstrip() + f"\n\n*Cut to the {DESCRIPTION_LIMIT:,} characters MLflow keeps. The "
                 f"whole card, with {names}, is `{CARD_FILE}` in this version's MLflow run; the web UI's Model tab "
                 "shows it.*\n")
    return described[:DESCRIPTION_LIMIT]  # a first section longer than half the limit could still overrun it


def _leading_paragraphs(section: str, room: int) -> str:
    """The section's heading and as many of its first paragraphs as fit in `room` characters; "" when not one does."""
    paragraphs = section.split("\n\n")
    kept = 1
    while kept < len(paragraphs) and len("\n\n".join(paragraphs[:kept + 1])) <= room:
        kept += 1
    return "\n\n".join(paragraphs[:kept]) if kept > 1 else ""


def log_model(release: Release, example: np.ndarray, tracker: MlflowTracker, card: str,
              examples: Path | None = None, seen_patients: Path | None = None) -> LoggedModel:
    """Log the ONNX flavour (+ best.pt, model.json, the bundled examples, the patients it has seen) and the reports
    into the parent run."""
    import mlflow
    import mlflow.onnx
    import onnx

    _, channels, size, _ = example.shape
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / CARD_FILE
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


# What makes a version this very release: the same ONNX file, judged on the same data and split with the same figures
# (metrics.json: its tags and model card show them), with the same verdict under the same gate (a new criterion or
# limit is another judgement: its reason and card must say it, so it is a new version)
SAME_RELEASE_TAGS = ("onnx_sha256", "data_hash", "splits_hash", "metrics_sha256", "promotion", "gate_settings_sha256")


def find_or_create_version(registry: ModelRegistry, model_uri: str, tags: dict, run_id: str) -> str:
    """The version of this release when an earlier attempt created one (its answer lost, or the attempt interrupted
    before verifying it), else a new one: so a retry never registers the model twice. The verdict is part of the
    release: a retry judged otherwise (the champion changed between the attempts) gets a version of its own, so no
    alias lands on a version whose tags and card say the opposite.

    First this run's own versions; then, from any run, a version of this release that holds no alias: a register
    killed (SIGKILL, power) between creating its version and moving the alias, rerun under a new parent run (a code
    or params change, or the other front door). It was left tagged with its verdict but never verified, and a new
    version beside it made two of one release; it is completed instead, and takes this attempt's tags."""
    import mlflow

    def same_release(version) -> bool:
        return all((version.tags or {}).get(key) == tags.get(key) for key in SAME_RELEASE_TAGS)

    versions = registry.client.search_model_versions(f"name = '{registry.model_name}' and run_id = '{run_id}'")
    if mine := [v for v in versions if same_release(v)]:
        version = max(mine, key=lambda v: int(v.version))
        log.warning("register: version %s of this run already holds this model (an earlier attempt created it); "
                    "completing it instead of creating another", version.version)
        return str(version.version)
    everyone = registry.client.search_model_versions(f"name = '{registry.model_name}'")
    # search_model_versions leaves `aliases` empty: get_model_version fills it (_holds_alias: True when unsure)
    if left := [v for v in everyone if same_release(v) and not _holds_alias(registry, str(v.version))]:
        version = max(left, key=lambda v: int(v.version))
        log.warning("register: version %s (run %s) holds this release without an alias (a register stopped before "
                    "it moved one); completing it instead of creating another", version.version, version.run_id)
        for key, value in tags.items():  # the judgement and lineage of this attempt, which completes it
            registry.client.set_model_version_tag(registry.model_name, version.version, key, value)
        return str(version.version)
    _remove_abandoned_versions(registry, everyone)
    return str(mlflow.register_model(model_uri, registry.model_name, tags=tags).version)


def _remove_abandoned_versions(registry: ModelRegistry, versions) -> None:
    """Versions a register killed outright left half-made, of another release than this one: created and tagged
    with their verdict ("promoted"), but never described, verified nor given an alias, by a run that ended killed or
    failed. Only the same release completed such a version; another one left it for good, a "promoted" version that
    nothing serves, which /model/compare could take for the challenger. A register still running (its run RUNNING)
    or a version any other tool made (no onnx_sha256 tag, or a description) is left alone."""
    for version in versions:
        if version.description or not (version.tags or {}).get("onnx_sha256") or not version.run_id:
            continue
        try:
            status = registry.client.get_run(version.run_id).info.status
        except Exception:  # noqa: BLE001 - unknown: kept
            continue
        if status in ("KILLED", "FAILED") and not _holds_alias(registry, str(version.version)):
            log.warning("register: removing version %s, left half-registered by run %s (%s): never described, "
                        "verified nor given an alias", version.version, version.run_id, status.lower())
            try:  # best effort, as every clean-up here: the registration itself comes next
                registry.client.delete_model_version(registry.model_name, str(version.version))
            except Exception as exc:  # noqa: BLE001 - the store's own errors
                log.warning("register: could not remove version %s (%s)", version.version, type(exc).__name__)


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
    client, cfg, model_name = registry.client, registry.cfg, registry.model_name
    version = retrying(cfg, "register model", find_or_create_version, registry, model_uri, tags, tags["mlflow_run_id"])
    try:
        retrying(cfg, "describe version", client.update_model_version, model_name, version,
                 description=version_description(card, model_name, version))
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
