"""The one predictor: used by evaluation and by serving, so both see exactly the same numbers.

`TorchPredictor` runs a `MultitaskUNet` (evaluation, Grad-CAM); `OnnxPredictor` runs the exported model
(serving). Both take preprocessed slices (N, C, H, W) float32 — see tasks/data/preprocess.py — and return
probabilities. No torch import at module level, so a slim serving image without torch can use
`OnnxPredictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# Output names given by the ONNX export helper; fallback is the order of outputs (seg first, then cls).
ONNX_INPUT = "image"  # (batch, C, H, W) float32
ONNX_SEG_OUTPUT = "seg_logits"
ONNX_CLS_OUTPUT = "cls_logits"
# A pixel is tumour when its probability is >= this (evaluation, export's parity check and serving alike).
MASK_THRESHOLD = 0.5
# What a slice's tumour probability is made of (`evaluate.slice_score`; README, "Evaluation"):
#   classifier  the classification head's probability alone;
#   fused       the mean of it and the segmentation head's largest whole-tumour pixel probability in the slice: both
#               heads' evidence, which ranked validation slices better than the classifier alone on every seed.
SLICE_SCORES = ("classifier", "fused")
# What a model whose metadata names no rule was evaluated with (every model exported before the rule was recorded).
LEGACY_SLICE_SCORE = "classifier"


def evaluated_slice_score(metrics: dict | None) -> str:
    """The slice score a metrics.json was evaluated with (`classification_threshold.slice_score`; the classifier's
    for metrics written before it was recorded). Not checked: callers say which file was wrong."""
    return ((metrics or {}).get("classification_threshold") or {}).get("slice_score", LEGACY_SLICE_SCORE)


def evaluated_in_volume(metrics: dict | None) -> bool:
    """Whether a metrics.json scored its BraTS slices in their volume (`classification_threshold.slices_in_volume`,
    `evaluate.slices_in_volume`; False for metrics written before it was recorded)."""
    return bool(((metrics or {}).get("classification_threshold") or {}).get("slices_in_volume", False))


# The photos (Kaggle-style images) reach serving one at a time, through the slice route, which judges every upload at
# the lone slice threshold; BraTS slices come in volumes, judged at the volume rule's threshold.
ALONE_SOURCES = ("kaggle",)


def decision_thresholds(sources, threshold: float, lone_threshold: float | None) -> np.ndarray:
    """Per input, the threshold serving decides it at: `lone_threshold` for a source that always arrives alone
    (ALONE_SOURCES), `threshold` for the others; `threshold` for all when there is no lone threshold."""
    sources = np.asarray(sources)
    if lone_threshold is None:
        return np.full(len(sources), float(threshold))
    return np.where(np.isin(sources, ALONE_SOURCES), float(lone_threshold), float(threshold))


def evaluated_photos_alone(metrics: dict | None) -> bool:
    """Whether a metrics.json judged its photos at the lone slice threshold, as serving decides them
    (`classification_threshold.photos_at`; False for metrics written before, which judged every input at `value`)."""
    return ((metrics or {}).get("classification_threshold") or {}).get("photos_at") == "lone_slice_value"


def check_slice_score(rule: str) -> str:
    if rule not in SLICE_SCORES:
        raise ValueError(f"unknown slice score {rule!r}: expected one of {', '.join(SLICE_SCORES)}")
    return rule


def slice_probability(classifier_probability: np.ndarray, region_probability: np.ndarray, rule: str) -> np.ndarray:
    """(N,) tumour probability of each slice by `rule` (SLICE_SCORES), from the classifier's (N,) probabilities and
    the (N, R, H, W) region probabilities."""
    if check_slice_score(rule) == "classifier" or len(classifier_probability) == 0:
        return classifier_probability
    largest_pixel = region_probability[:, 0].reshape(len(region_probability), -1).max(axis=1)
    return ((classifier_probability + largest_pixel) / 2).astype(np.float32)


@dataclass(frozen=True)
class Prediction:
    classifier_probability: np.ndarray  # (N,) the classification head's probability that each slice shows a tumour
    region_probability: np.ndarray  # (N, R, H, W) per-pixel probability of each region: WT (, TC, ET)
    slice_score: str = LEGACY_SLICE_SCORE  # how tumour_probability is made (SLICE_SCORES)

    @cached_property
    def tumour_probability(self) -> np.ndarray:
        """(N,) probability that each slice shows a tumour: what the decision threshold is applied to."""
        return slice_probability(self.classifier_probability, self.region_probability, self.slice_score)

    @property
    def mask_probability(self) -> np.ndarray:
        """(N, H, W) per-pixel whole-tumour probability (the first region)."""
        return self.region_probability[:, 0]

    def __len__(self) -> int:
        return len(self.classifier_probability)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow warnings for large negative logits)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp_x = np.exp(x[~positive])
    out[~positive] = exp_x / (1.0 + exp_x)
    return out


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {images.shape}")
    return images


def _predict_in_batches(images: np.ndarray, batch_size: int, run_batch: Callable[[np.ndarray], tuple],
                        slice_score: str) -> Prediction:
    """Split into batches (bounded memory: float16 shards are converted one batch at a time), run, join, sigmoid."""
    images = _check_images(images)
    n, _, h, w = images.shape
    seg_logits: np.ndarray | None = None  # (N, R, H, W) once the first batch says R
    cls_logits = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        seg, cls = run_batch(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
        seg = np.asarray(seg, dtype=np.float32)
        if seg_logits is None:
            seg_logits = np.empty((n, seg.shape[1], h, w), dtype=np.float32)
        stop = start + len(cls)
        seg_logits[start:stop] = seg
        cls_logits[start:stop] = np.asarray(cls, dtype=np.float32).reshape(-1)
    if seg_logits is None:  # no images
        seg_logits = np.empty((0, 1, h, w), dtype=np.float32)
    return Prediction(classifier_probability=sigmoid(cls_logits), region_probability=sigmoid(seg_logits),
                      slice_score=slice_score)


class TorchPredictor:
    """Runs a MultitaskUNet-like module: forward(x) -> {"seg": (N,R,H,W), "cls": (N,)} logits.

    In float32 (as the exported model serves), with weights and inputs in NHWC (channels_last): the same numbers to
    about 1e-7, and 1.6x faster convolutions on CPU than NCHW (evaluation predicts about 2,000 slices per run).
    Module.to converts in place: the caller's model is NHWC afterwards (Grad-CAM on it works the same)."""

    def __init__(self, model: Any, device: str = "cpu", batch_size: int = 32, slice_score: str = LEGACY_SLICE_SCORE):
        import torch  # lazily: serving with ONNX only must not need torch

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.batch_size = batch_size
        self.slice_score = check_slice_score(slice_score)

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device, memory_format=torch.channels_last))
        return out["seg"].float().cpu().numpy(), out["cls"].float().cpu().numpy()

    def predict(self, images: np.ndarray) -> Prediction:
        return _predict_in_batches(images, self.batch_size, self._run_batch, self.slice_score)


class OnnxPredictor:
    """Runs the exported ONNX model (input "image" → outputs "seg_logits", "cls_logits") with onnxruntime."""

    def __init__(self, onnx_model: Path | str | bytes, providers: Sequence[str] | None = None, batch_size: int = 32,
                 slice_score: str = LEGACY_SLICE_SCORE):
        import onnxruntime as ort

        source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        self.session = ort.InferenceSession(source, providers=list(providers or ort.get_available_providers()))
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        if ONNX_SEG_OUTPUT in names and ONNX_CLS_OUTPUT in names:
            self.output_names = [ONNX_SEG_OUTPUT, ONNX_CLS_OUTPUT]
        else:  # an export without names: the export wrapper returns (seg, cls) in this order
            self.output_names = names[:2]
        self.batch_size = batch_size
        self.slice_score = check_slice_score(slice_score)  # the model's own rule: model.json's `slice_score`

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg, cls = self.session.run(self.output_names, {self.input_name: batch})
        return seg, cls

    def predict(self, images: np.ndarray) -> Prediction:
        return _predict_in_batches(images, self.batch_size, self._run_batch, self.slice_score)
