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
same verdict under the same gate settings, its files verified: a rerun after a code change that left the model as it
was) creates no new version;
register.json says `reused`.
Retries are idempotent: a version is created only after asking whether this run already registered this ONNX
file (a retry after a lost response, or a rerun of an interrupted register, finds it), or any run left a version of
this release without an alias (a register killed before it moved one, rerun under a new parent run). A register
that fails or is interrupted removes the logged models it left in the run (and their local artifact folders), so
nothing half-registered stays behind; a store lost meanwhile gives one error line, not MLflow's tracebacks.
With tracking.enabled false nothing is registered; the gate still runs and reports/register.json says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from tasks import paths
from tasks.config import Settings
from tasks.data.splits import read_split
from tasks.errors import SliceWiseError
from tasks.inference.predictor import evaluated_slice_score
from tasks.io import sha256_file
from tasks.redaction import redact
from tasks.release.champion import champion_score
from tasks.release.examples import bundle_examples
from tasks.release.gate import QUALITY_CRITERIA, ChampionScore, Criterion, GateDecision, PromotionGate
from tasks.release.model_card import render_model_card, split_summary
from tasks.release.registry import CARD_FILE, SEEN_PATIENTS_FILE, ModelRegistry
from tasks.release.release_files import Release, parity_detail
from tasks.release.versions import (SAME_RELEASE_TAGS, create_verified_version, discard_logged_models,
                                    input_example, log_model, registered_model_ids, version_description)
from tasks.tracking import provenance
from tasks.tracking.mlflow_runs import MlflowTracker
from tasks.tracking.store import StoreUnreachable, fluent_store, portable_uri, retrying, tracking_uri

log = logging.getLogger(__name__)


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
    metrics_sha256 = sha256_file(paths.METRICS)  # the figures the tags and the card show
    if champion is not None and \
            (recorded := recorded_own_decision(champion, tracker, release, metrics_sha256)) is not None:
        # This pipeline run's own register, cut off after it moved the alias, run again: its verdict was judged
        # against the champion before it and is in its tags. Judging again would compare the version with itself
        # and rewrite its card to say so, while its tags still named the earlier champion.
        return kept_version(settings, recorded, champion, reg.alias, tracker, release, reused=False)
    score = champion_score(registry, champion, tags, processed, splits_dir, release,
                           settings.split.phash_max_distance) if champion is not None else None
    decision = decide(settings, release, score)
    version_tags = tags | {
        "promotion": "promoted" if decision.promoted else "rejected", "promotion_reason": decision.reason,
        "promotion_gate": json.dumps(decision.as_dict()["criteria"]),  # machine-readable: /model/info shows it
        "onnx_sha256": release.onnx_sha256, "mlflow_run_id": tracker.run_id,
        # the weights shipped (read_release checked metrics.json names them): lineage finds the training run that
        # tagged the same (this run may only re-register)
        provenance.CHECKPOINT_TAG: release.metrics["model"]["checkpoint_sha256"],
        "metrics_sha256": metrics_sha256,
        "gate_settings_sha256": gate_settings_digest(settings, release),  # the criteria and limits of the verdict
        # .get: a metric missing from metrics.json fails its gate criterion (above), it must not crash the tags
        "test_accuracy": str((release.metrics.get("classification") or {}).get("accuracy")),
        "test_sensitivity": str((release.metrics.get("classification") or {}).get("sensitivity")),
        "test_dice": str((release.metrics.get("segmentation") or {}).get("dice")),
        "test_volume_dice": str((release.metrics.get("segmentation_volume") or {}).get("dice")),
        "threshold": str((release.metrics.get("classification") or {}).get("threshold")),
        "slice_score": evaluated_slice_score(release.metrics),  # what the threshold applies to
    }
    splits = split_summary(processed, splits_dir)

    def card_of(verdict: GateDecision, card_tags: dict[str, str]) -> str:
        return render_model_card(model_name=name, version=None, profile=settings.profile,
                                 data_source=settings.data.source, image_size=settings.active.image_size,
                                 modalities=list(settings.slice.modalities), splits=splits, metrics=release.metrics,
                                 export_report=release.export_report, decision=verdict, tags=card_tags,
                                 seed=settings.seed)

    alias = reg.alias if decision.promoted else reg.challenger_alias
    holder = champion if alias == reg.alias else registry.by_alias(alias)
    example = input_example(processed, splits_dir)
    # not this run's own version (a register cut off after its alias moved, rerun): that one it completes below
    if holder is not None and holder.run_id != tracker.run_id and already_registered(holder, version_tags) \
            and still_intact(registry, holder, release, example):
        # the same verdict (already_registered compares it), in the words of its registration: judged again now, the
        # champion criterion would compare the version holding the alias with itself ("vs champion v6" on v6)
        kept = recorded_decision(holder) or decision
        rewrite_card(registry, holder, card_of(kept, holder.tags or {}))
        return kept_version(settings, kept, holder, alias, tracker, release)
    card = card_of(decision, version_tags)
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
    # The run's logged models that no version uses go: this attempt's when an earlier attempt's version was completed
    # instead, and any that an attempt killed outright (SIGKILL, out of memory) logged, as no handler of its own ran.
    # The store unable to say which models versions use (keep None): only a known unused model goes.
    unused = logged if registered.source != logged.model_uri else None
    discard_logged_models(tracker, unused, keep=registered_model_ids(registry))
    tracker.set_tags({"registered_version": version, "promotion": version_tags["promotion"]})
    log.info("register: %s version %s -> @%s (%s)", name, version, alias, decision.reason)
    return {"registered": True, "model_name": name, "version": version, "promoted": decision.promoted, "alias": alias,
            "reason": decision.reason, "gate": decision.as_dict()["criteria"], "mlflow_run_id": tracker.run_id,
            "model_uri": f"models:/{name}/{version}", "onnx_sha256": release.onnx_sha256,
            "tracking_uri": redact(portable_uri(tracking_uri()))}


def gate_settings_digest(settings: Settings, release: Release) -> str:
    """The digest of what the verdict is judged by: the promotion settings, the gate's criteria (one added in code is a
    new gate too) and the parity limits the reason shows (parity_detail: the export report's own)."""
    parity = release.export_report.get("parity", {})
    gate = {"promotion": settings.promotion.model_dump(mode="json"), "criteria": [c[0] for c in QUALITY_CRITERIA],
            "parity": [parity.get("atol"), parity.get("rtol"), parity.get("min_mask_dice")]}
    return hashlib.sha256(json.dumps(gate, sort_keys=True).encode()).hexdigest()[:16]


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
    except StoreUnreachable:  # no answer is no verdict: a second copy of an intact version would be registered
        raise
    except SliceWiseError as exc:
        log.warning("register: version %s holds this release but failed verification (%s); registering it again",
                    version.version, exc.reason)
        return False
    return True


def recorded_own_decision(version, tracker: MlflowTracker, release: Release,
                          metrics_sha256: str) -> GateDecision | None:
    """The gate's verdict recorded on `version` when it is this run's registration of this very release (same run,
    ONNX file and figures); None otherwise, or when its tags hold no readable verdict."""
    held = version.tags or {}
    if version.run_id != tracker.run_id or held.get("onnx_sha256") != release.onnx_sha256 \
            or held.get("metrics_sha256") != metrics_sha256:
        return None
    return recorded_decision(version)


def rewrite_card(registry: ModelRegistry, version, card: str) -> None:
    """A kept version's card in today's words: the same release (files, figures, tags, verdict) keeps its version,
    but a card that said something false (v9's "the model has seen no brain without a tumour", while its training
    split holds photos of tumour-free brains) was kept with it until another model was registered. Both places the
    card lives are rewritten: the version's description and the registering run's `model_card.md`, which serving
    shows whole."""
    described = version_description(card, registry.model_name, str(version.version))
    if (version.description or "") == described:
        return
    if version.run_id:
        retrying(registry.cfg, "log card", registry.client.log_text, version.run_id, card, CARD_FILE)
    retrying(registry.cfg, "update card", registry.client.update_model_version, registry.model_name,
             str(version.version), description=described)
    log.info("register: %s version %s keeps its files, figures and verdict; its model card is rewritten in this "
             "code's words", registry.model_name, version.version)


def recorded_decision(version) -> GateDecision | None:
    """The gate's verdict in `version`'s tags, as its registration judged it; None when they hold no readable one."""
    held = version.tags or {}
    try:
        criteria = json.loads(held.get("promotion_gate", ""))
        return GateDecision(tuple(Criterion(str(c["name"]), bool(c["passed"]), str(c["detail"])) for c in criteria))
    except (ValueError, TypeError, KeyError):
        return None


def kept_version(settings: Settings, decision: GateDecision, version, alias: str, tracker: MlflowTracker,
                 release: Release, reused: bool = True) -> dict:
    """register.json for a release that a version already holds, with its alias: nothing logged, nothing created.
    `mlflow_run_id` is the run that registered it (its model, card and reports are there); this run is
    `reused_by_run_id`. `reused=False`: the version is this run's own, registered by an attempt cut off after it moved
    the alias; this attempt completes it (a new version, not a reused one)."""
    name, number = settings.registry.model_name, str(version.version)
    tracker.set_tags({"registered_version": number, "promotion": "promoted" if decision.promoted else "rejected"}
                     | ({"reused_version": "true"} if reused else {}))
    if reused:
        log.info("register: %s version %s already holds this model (same ONNX file, data, split and figures, same gate "
                 "and verdict) as @%s; no new version", name, number, alias)
    else:
        log.info("register: %s version %s -> @%s, registered by this run's attempt that was cut off (%s)", name,
                 number, alias, decision.reason)
    result = {"registered": True, "model_name": name, "version": number, "promoted": decision.promoted,
              "alias": alias, "reason": decision.reason, "gate": decision.as_dict()["criteria"],
              "mlflow_run_id": version.run_id, "model_uri": f"models:/{name}/{number}",
              "onnx_sha256": release.onnx_sha256, "tracking_uri": redact(portable_uri(tracking_uri()))}
    return result | ({"reused": True, "reused_by_run_id": tracker.run_id} if reused else {})


def decide(settings: Settings, release: Release, champion: ChampionScore | None) -> GateDecision:
    parity = release.export_report.get("parity", {})
    return PromotionGate.from_settings(settings.promotion).decide(
        release.metrics, parity.get("passed") is True, parity_detail(parity), champion)  # "false" is no pass
