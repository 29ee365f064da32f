"""The model being served: the ONNX predictor and what the API needs to preprocess inputs, decide and describe the
model (`ServedModel`), settled from the metadata the export step embedded in the file (`load_served_model`).
Where the file comes from, the registry or a path, is serve/model_source.py's."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.data.regions import REGIONS
from tasks.errors import SliceWiseError
from tasks.inference.photo_decisions import PhotoRecord, photo_record
from tasks.inference.predictor import (LEGACY_SLICE_SCORE, OnnxPredictor, check_slice_score, evaluated_in_volume,
                                      evaluated_slice_score)
from tasks.inference.recorded_figures import finite
from tasks.io import read_json

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
# Slices per onnxruntime run: a volume's slices go through in batches of this many. Smaller than evaluation's 32:
# onnxruntime's workspace grows with the batch (about 140 MB for 32 slices of 128² on the quick model) and stays
# reserved, and the memory budget must cover it for every volume in flight.
SERVE_BATCH = 8


@dataclass
class ServedModel:
    """The ONNX predictor plus what the API needs to preprocess inputs and to describe the model."""

    predictor: OnnxPredictor
    image_size: int
    in_channels: int
    modalities: tuple[str, ...]
    threshold: float  # for slices judged in their volume (/v1/predict/volume), as evaluation scored BraTS slices
    mask_threshold: float
    card: dict  # /model/info: name, version, alias, metrics, tags, source
    checkpoint: Path | None = None  # torch checkpoint (or bare state dict) for Grad-CAM
    model_config: dict = field(default_factory=dict)  # UNetConfig fields, for a bare state dict
    gradcam: Any = field(default=None, repr=False)  # serve.explain.GradCam, built on first use
    gradcam_error: str | None = None  # why Grad-CAM could not be built, so it is not retried per request
    checkpoint_checked: bool = False  # the checkpoint's sha256 was compared with checkpoint_sha256 (serve.explain)
    examples: Path | None = None  # folder of the examples bundled with the model (index.json), None for an older one
    regions: tuple[str, ...] = ("wt",)  # what the segmentation head predicts (ONNX metadata `regions`)
    checkpoint_sha256: str | None = None  # of the checkpoint the ONNX model was exported from (its metadata)
    lone_slice_threshold: float | None = None  # for a slice that arrives alone (/v1/predict); None: `threshold`
    # a volume's slices are scored after its clean-up, as evaluation scored the BraTS slices the threshold was chosen on
    # (evaluate.slices_in_volume); False: each slice's own score (a model evaluated on slices alone, or before the key)
    slices_in_volume: bool = False

    @property
    def photos(self) -> PhotoRecord | None:
        """How the model scored its test photos (None: not known, tasks/inference/photo_decisions.py)."""
        return photo_record(self.card.get("metrics") or {})

    @property
    def slice_threshold(self) -> float:
        """The threshold for a slice scored alone: chosen on validation slices scored alone where the model was
        evaluated in volumes (after the clean-up, whose threshold would judge a lone slice too readily)."""
        return self.threshold if self.lone_slice_threshold is None else self.lone_slice_threshold


def embedded_metadata(predictor: OnnxPredictor) -> dict:
    """The JSON the export step embeds in the ONNX file (`slicewise` metadata property); {} when absent."""
    raw = predictor.session.get_modelmeta().custom_metadata_map.get("slicewise")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def read_optional_json(path: Path | None) -> dict:
    """A sidecar file's JSON, {} when there is no such file or it is unreadable (the model still serves)."""
    return {} if path is None else read_json(path, default={})


def load_served_model(onnx_path: Path, card: dict, checkpoint: Path | None = None, metrics: dict | None = None,
                      sidecar_metadata: dict | None = None, examples: Path | None = None) -> ServedModel:
    """Open the ONNX model and settle its input size, modalities and decision threshold.

    The metadata the export step embeds in the ONNX file wins; then a model.json beside it; then what the
    graph itself says (input shape) and the evaluated threshold in metrics.json.
    """
    try:
        predictor = OnnxPredictor(onnx_path, batch_size=SERVE_BATCH)
    except Exception as exc:  # onnxruntime raises its own types for a broken or foreign file
        raise SliceWiseError(f"cannot load the ONNX model ({type(exc).__name__}: {exc})", onnx_path) from exc
    meta = embedded_metadata(predictor) or sidecar_metadata or {}
    metrics = metrics_of_this_model(metrics, meta, onnx_path)
    shape = predictor.session.get_inputs()[0].shape
    image_size = meta.get("image_size") or (shape[-1] if isinstance(shape[-1], int) else None)
    if not image_size:
        raise SliceWiseError("the model states no image size (no metadata and a dynamic input shape)", onnx_path)
    in_channels = shape[1] if isinstance(shape[1], int) else len(meta.get("modalities", ["flair"]))
    threshold = meta.get("threshold", (metrics or {}).get("classification", {}).get("threshold", DEFAULT_THRESHOLD))
    # What the threshold applies to, from where the threshold came (a model exported before the rule was recorded:
    # the classifier alone).
    rule = meta.get("slice_score", LEGACY_SLICE_SCORE) if "threshold" in meta else evaluated_slice_score(metrics)
    try:
        predictor.slice_score = check_slice_score(rule)
    except ValueError as exc:
        raise SliceWiseError(f"the model's slice score: {exc}", onnx_path) from exc
    tags = dict(card.get("tags") or {})
    if meta.get("data_source"):  # a file's own word for it (the registry tags it too): "on synthetic test data"
        tags.setdefault("data_source", str(meta["data_source"]))
    card = {**card, "tags": tags, "metrics": metrics or card.get("metrics") or {},
            "model": {k: meta[k] for k in ("name", "opset", "image_size", "modalities", "regions", "model_config",
                                               "versions")
                      if k in meta}}
    return ServedModel(
        predictor=predictor, image_size=int(image_size), in_channels=int(in_channels),
        modalities=tuple(meta.get("modalities", ["flair"] * int(in_channels))), threshold=float(threshold),
        mask_threshold=float(meta.get("mask_threshold", recorded_cut(metrics, meta))), card=card, checkpoint=checkpoint,
        model_config=dict(meta.get("model_config") or {}), examples=examples, regions=served_regions(meta, predictor),
        checkpoint_sha256=(meta.get("checkpoint") or {}).get("sha256"),
        lone_slice_threshold=lone_threshold(metrics, meta),
        slices_in_volume=bool(meta.get("slices_in_volume")) if "threshold" in meta else evaluated_in_volume(metrics),
    )


def metrics_of_this_model(metrics: dict | None, meta: dict, onnx_path: Path) -> dict | None:
    """`metrics` when they are this export's evaluation, else None. metrics.json names the checkpoint it scored
    (`model.checkpoint_sha256`), the export the one it was made from (`checkpoint.sha256`). `--model-file` with the
    default `--metrics reports/metrics.json` paired an export with a later evaluation of another model: the card, the
    photo decision and the volume route's tumour-free reference then spoke for that one."""
    scored = ((metrics or {}).get("model") or {}).get("checkpoint_sha256")
    exported = (meta.get("checkpoint") or {}).get("sha256")
    if scored and exported and scored != exported:
        log.warning("%s: the metrics given scored checkpoint %s, this model was exported from %s: its figures are not "
                    "served", onnx_path.name, str(scored)[:12], str(exported)[:12])
        return None
    return metrics


def recorded_cut(metrics: dict | None, meta: dict) -> float:
    """The mask threshold of a model whose metadata gives none: for an export without metadata (its decision
    threshold comes from metrics.json too), the cut its evaluation chose; else 0.5, what exports before the cut was
    recorded were evaluated with."""
    value = ((metrics or {}).get("segmentation_threshold") or {}).get("value")
    return float(value) if "threshold" not in meta and finite(value) and 0 < value < 1 else 0.5


def lone_threshold(metrics: dict | None, meta: dict) -> float | None:
    """The threshold for a slice that arrives alone: the metadata's, or, for an export without metadata, its
    evaluation's (`classification_threshold.lone_slice_value`); None: the one threshold for every input."""
    if "lone_slice_threshold" in meta:
        return float(meta["lone_slice_threshold"])
    value = ((metrics or {}).get("classification_threshold") or {}).get("lone_slice_value")
    return float(value) if "threshold" not in meta and finite(value) else None


def served_regions(meta: dict, predictor: OnnxPredictor) -> tuple[str, ...]:
    """The model's regions: its metadata `regions`; else three when seg_logits has 3 channels; else whole tumour."""
    if meta.get("regions"):
        return tuple(str(r) for r in meta["regions"])
    seg = next((o for o in predictor.session.get_outputs() if o.name == predictor.output_names[0]), None)
    channels = seg.shape[1] if seg is not None and len(seg.shape) > 1 else None
    return REGIONS if channels == len(REGIONS) else REGIONS[:1]
