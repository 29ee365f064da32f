"""Why this model: the champion's gate verdict and lineage, and the champion beside the latest challenger (GET
/model/compare), as MLflow's compare view shows runs: metrics with their 95 % intervals, and the same bundled
example slices predicted by both models through the same predictor.
"""

from __future__ import annotations

import json
import logging

from serve.examples import entries, prepared_example, public, truth_mask_png
from serve.inference import slice_results
from serve.served_model import ServedModel
from serve.uploads import UploadError
from tasks.config import ServeSettings
from tasks.errors import SliceWiseError
from tasks.redaction import redact
from tasks.release.registry import SAME_DATA_TAGS  # the Model tab compares figures on the test data the gate would

log = logging.getLogger(__name__)

# As the model card lists them (tasks/release/model_card.py), which serving must not import.
LINEAGE_TAGS = ("git_commit", "git_dirty", "data_hash", "data_raw_hash", "splits_hash", "params_hash", "onnx_sha256",
                "mlflow_run_id", "prefect_flow_run_id")
SHOWN = ("tumor_probability", "has_tumor", "withheld", "tumor_area_px", "mask_png", "warning")


def gate_verdict(tags: dict) -> dict | None:
    """The promotion gate's verdict on each criterion (accuracy, sensitivity, slice and volume Dice, parity, ...),
    from the version's tags; None for a model that did not come through the registry."""
    if "promotion" not in tags:
        return None
    try:
        criteria = json.loads(tags.get("promotion_gate", "[]"))
    except ValueError:
        criteria = []
    return {"verdict": tags["promotion"], "reason": tags.get("promotion_reason", ""), "criteria": criteria}


def model_summary(model: ServedModel, role: str, aliases: list[str] | None = None) -> dict:
    card = model.card
    tags = card.get("tags", {})
    return {"role": role, "source": card.get("source"), "name": card.get("name"), "version": card.get("version"),
            "aliases": aliases if aliases is not None else [a for a in (card.get("alias"),) if a],
            "registered_at_ms": card.get("registered_at_ms"), "metrics": card.get("metrics", {}),
            "gate": gate_verdict(tags), "lineage": {k: tags[k] for k in LINEAGE_TAGS if k in tags},
            "test_data": {k: tags.get(k) for k in SAME_DATA_TAGS},
            "served": {"image_size": model.image_size, "modalities": list(model.modalities),
                       "threshold": model.threshold, "lone_slice_threshold": model.slice_threshold,
                       "slice_score": model.predictor.slice_score, "slices_in_volume": model.slices_in_volume}}


def find_challenger(source, served: str | None = None) -> tuple[tuple | None, str | None]:
    """((registry version, model) or None, why there is none); `served`: the served model's version, which is not
    its own challenger."""
    challenger = getattr(source, "challenger", None)
    if challenger is None:
        return None, "the model is served from a file, not from the registry: there is no challenger to compare"
    try:
        found = challenger(served)
    except (SliceWiseError, OSError) as exc:
        return None, f"the challenger could not be loaded: {redact(str(exc))}"
    except Exception as exc:  # the store's own errors: the comparison is optional, the page must still answer
        log.warning("GET /model/compare: loading the challenger failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        return None, f"the challenger could not be loaded ({type(exc).__name__})"
    if found is None:
        return None, "the registry holds no version besides the champion yet"
    return found, None


def predicted_by(model: ServedModel, entry: dict, folder, cfg: ServeSettings) -> dict:
    try:
        item = prepared_example(model, entry, folder, cfg.ood_threshold, cfg.max_slice_mb, cfg.max_image_side)
        result = slice_results(model, [item], cfg.ood_threshold, cfg.min_photo_accuracy)[0]
    except UploadError as exc:  # e.g. a challenger that takes other channels than the examples have
        return {"error": exc.detail}
    return {key: result[key] for key in SHOWN} | {"image_png": result["image_png"]}


def comparison(champion: ServedModel, found: tuple | None, detail: str | None, cfg: ServeSettings) -> dict:
    """The champion and the challenger `find_challenger` found (None: `detail` says why) side by side, and the
    champion's slice examples predicted by both."""
    challenger = found[1] if found else None
    rows = []
    for entry in entries(champion):
        if entry["kind"] != "slice":
            continue
        row = public(entry) | {"truth_png": truth_mask_png(champion.examples, entry, champion.image_size)}
        for role, model in (("champion", champion), ("challenger", challenger)):
            if model is not None:
                row[role] = predicted_by(model, entry, champion.examples, cfg)
        rows.append(row)
    return {"champion": model_summary(champion, "champion"),
            "challenger": model_summary(challenger, "challenger", list(found[0].aliases or [])) if found else None,
            "detail": detail, "examples": rows}
