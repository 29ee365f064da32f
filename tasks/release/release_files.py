"""What `register` ships, read from the files the earlier steps wrote, and the checks that they are one model.

tasks/release/registration.py gates and registers a `Release`; tasks/release/champion.py scores the champion
against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import SliceWiseError
from tasks.inference.predictor import (LEGACY_SLICE_SCORE, evaluated_in_volume, evaluated_photos_alone,
                                      evaluated_slice_score)
from tasks.io import read_json, sha256_file


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


def check_evaluated_weights(metrics: dict, checkpoint_path: Path, metrics_path: Path) -> str:
    """The checkpoint's sha256, once metrics.json shows it evaluated these very weights. Evaluate and export always
    record the weights they saw; a file without the record (hand-made, or written before it existed) cannot show it
    is about these weights, so it is refused like one about others. Export asks it too: an evaluate killed after
    train_joint ran again leaves the previous model's metrics.json, whose thresholds export shipped with the new
    weights (register refused the pair, but `serve --model-file` served it)."""
    weights = sha256_file(checkpoint_path)
    evaluated = (metrics.get("model") or {}).get("checkpoint_sha256")
    if evaluated != weights:
        said = "names no evaluated weights" if evaluated is None else "evaluated other weights than"
        raise SliceWiseError(f"metrics.json {said} {checkpoint_path}; rerun the evaluate step (then export)",
                             metrics_path)
    return weights


def check_one_model(release: Release, metrics_path: Path) -> None:
    """The gate judges metrics.json and the registry ships model.onnx and best.pt: all three must be one model.
    A step run by hand out of order (evaluate again after export, or train again after evaluate) would otherwise
    promote one model on another's numbers."""
    weights = check_evaluated_weights(release.metrics, release.checkpoint_path, metrics_path)
    exported = (release.metadata.get("checkpoint") or {}).get("sha256")
    if exported != weights:
        said = "names no source weights" if exported is None else "was exported from other weights than"
        raise SliceWiseError(f"model.onnx {said} {release.checkpoint_path}; rerun the export step",
                             release.metadata_path)
    pairs = {"decision threshold": ((release.metrics.get("classification") or {}).get("threshold"),
                                    release.metadata.get("threshold")),
             "mask threshold": ((release.metrics.get("segmentation_threshold") or {}).get("value"),
                                release.metadata.get("mask_threshold")),
             # the photos' figures are at it, and /v1/predict decides at it
             "lone slice threshold": ((release.metrics.get("classification_threshold") or {}).get("lone_slice_value"),
                                      release.metadata.get("lone_slice_threshold"))}
    for name, (judged, shipped) in pairs.items():
        a, b = finite_number(judged), finite_number(shipped)
        if a is not None and b is not None and not math.isclose(a, b):
            raise SliceWiseError(f"the {name} in metrics.json ({judged}) is not the exported model's ({shipped}): "
                                 "rerun the export step", release.metadata_path)
    judged = (evaluated_slice_score(release.metrics), evaluated_in_volume(release.metrics),
              evaluated_photos_alone(release.metrics))
    shipped = (release.metadata.get("slice_score", LEGACY_SLICE_SCORE), bool(release.metadata.get("slices_in_volume")),
               bool(release.metadata.get("photos_judged_alone")))
    if judged != shipped:
        raise SliceWiseError(f"metrics.json scored slices by {judged[0]!r} (in volume: {judged[1]}; photos at the "
                             f"lone slice threshold: {judged[2]}), the exported model by {shipped[0]!r} (in volume: "
                             f"{shipped[1]}; photos at the lone slice threshold: {shipped[2]}): rerun the export step",
                             release.metadata_path)


def ties_note(parity: dict) -> str:
    """The parity line's note on decision ties (tasks/release/onnx_checks.py); empty when there were none."""
    ties = parity.get("decision_ties", 0)
    return f" ({ties} more within rounding of the cut)" if ties else ""


def parity_detail(parity: dict) -> str:
    """The numbers behind the parity verdict, with their limits."""
    if "max_abs_diff" not in parity:
        return "no parity result in the export report"
    limit = f"atol {parity['atol']:.0e}" + (f" + rtol {parity['rtol']:.0e} x |logit|, {parity['tolerance_used']:.2f} "
                                            "of it used" if "tolerance_used" in parity else "")
    return (f"max |logit diff| {parity['max_abs_diff']:.1e} (limit {limit}), "
            f"{parity['decision_mismatches']} decision mismatches{ties_note(parity)}, "
            f"mask Dice {parity['mask_dice']:.4f} "
            f"(min {parity['min_mask_dice']})")



def finite_number(tag) -> float | None:
    """A number from a registry tag or a JSON field; None when it is missing or not a finite number (a hand-set
    or foreign version, a damaged file)."""
    try:
        value = float(tag)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
