"""The model being served: the ONNX predictor and what the API needs to preprocess inputs, decide and describe the
model (`ServedModel`), settled from the metadata the export step embedded in the file (`load_served_model`).
Where the file comes from, the registry or a path, is serve/model_source.py's."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.data.regions import REGIONS
from tasks.errors import SliceWiseError
from tasks.inference.predictor import LEGACY_SLICE_SCORE, OnnxPredictor, check_slice_score, evaluated_slice_score
from tasks.io import read_json

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
    examples: Path | None = None  # folder of the examples bundled with the model (index.json), None for an older one
    regions: tuple[str, ...] = ("wt",)  # what the segmentation head predicts (ONNX metadata `regions`)
    checkpoint_sha256: str | None = None  # of the checkpoint the ONNX model was exported from (its metadata)
    lone_slice_threshold: float | None = None  # for a slice that arrives alone (/v1/predict); None: `threshold`

    @property
    def photos(self) -> PhotoRecord | None:
        """How the model scored its test photos (None: it was not tested on any)."""
        return photo_record(self.card.get("metrics") or {})

    @property
    def slice_threshold(self) -> float:
        """The threshold for a slice scored alone: chosen on validation slices scored alone where the model was
        evaluated in volumes (after the clean-up, whose threshold would judge a lone slice too readily)."""
        return self.threshold if self.lone_slice_threshold is None else self.lone_slice_threshold


@dataclass(frozen=True)
class PhotoRecord:
    """How the model scored the test split's photos (metrics.json: classification_by_source.kaggle and its ci95)."""

    accuracy: float
    photos: int
    ci95: tuple[float, float] | None


def photo_record(metrics: dict) -> PhotoRecord | None:
    """The model's test figures on photos; None when none is known (its test split held no photo, or no metrics.json
    came with the model)."""
    found = (metrics.get("classification_by_source") or {}).get("kaggle") or {}
    accuracy = found.get("accuracy")
    if not found.get("n") or not _finite(accuracy):
        return None
    bounds = (metrics.get("ci95") or {}).get("classification_by_source.kaggle.accuracy")
    interval = (float(bounds[0]), float(bounds[1])) if isinstance(bounds, list) and len(bounds) == 2 and all(
        _finite(b) for b in bounds) else None
    return PhotoRecord(float(accuracy), int(found["n"]), interval)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def photo_refusal(record: PhotoRecord | None, min_accuracy: float | None) -> str | None:
    """Why a photo gets no tumour decision from this model, or None when it gets one (`serve.min_photo_accuracy`).
    On the synthetic data the quick model decides BraTS slices at about 0.97 and photos near 0.6: a yes or no at
    that accuracy reads as a finding it is not."""
    if min_accuracy is None:
        return None
    if record is None:
        return ("no decision for a photo: how this model fares on photos is not known (its test split held none, or "
                f"no metrics.json came with it), and serve.min_photo_accuracy asks for {min_accuracy:g}")
    if record.accuracy >= min_accuracy:
        return None
    interval = f" (95 % interval {record.ci95[0]:.2f}-{record.ci95[1]:.2f})" if record.ci95 else ""
    # three decimals: at two, 28 of 33 (0.848) read "0.85, below 0.85"
    return (f"no decision for a photo: this model's accuracy on its {record.photos} test photos is "
            f"{record.accuracy:.3f}{interval}, below serve.min_photo_accuracy {min_accuracy:g}. The probability and "
            "the mask are shown, not a yes or no; an MRI slice as NPY or 16-bit PNG, or the whole volume, is decided")


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
        mask_threshold=float(meta.get("mask_threshold", 0.5)), card=card, checkpoint=checkpoint,
        model_config=dict(meta.get("model_config") or {}), examples=examples, regions=served_regions(meta, predictor),
        checkpoint_sha256=(meta.get("checkpoint") or {}).get("sha256"),
        lone_slice_threshold=float(meta["lone_slice_threshold"]) if "lone_slice_threshold" in meta else None,
    )


def served_regions(meta: dict, predictor: OnnxPredictor) -> tuple[str, ...]:
    """The model's regions: its metadata `regions`; else three when seg_logits has 3 channels; else whole tumour."""
    if meta.get("regions"):
        return tuple(str(r) for r in meta["regions"])
    seg = next((o for o in predictor.session.get_outputs() if o.name == predictor.output_names[0]), None)
    channels = seg.shape[1] if seg is not None and len(seg.shape) > 1 else None
    return REGIONS if channels == len(REGIONS) else REGIONS[:1]
