"""Decoded uploads → model inputs → the JSON answers of the /v1 routes.

Preprocessing is tasks/data/preprocess.py's, the very functions the slice step uses (prepare_photo for PNG/JPEG,
prepare_array_slice for NPY, prepare_volume_slices for NIfTI), and prediction is tasks/inference/predictor.py's
OnnxPredictor, which evaluation also uses: served inputs and outputs match the evaluated ones.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve.explain import gradcam_for
from serve.images import gradcam_overlay, mask_pixels, png_base64, to_display
from serve.model_source import ServedModel
from serve.ood import OodResult, score_slice, score_volume
from serve.uploads import DecodedSlice, UploadError
from serve.volumes import VolumeImage, nifti_bytes
from tasks.data.preprocess import prepare_array_slice, prepare_photo, prepare_volume_slices
from tasks.inference.predictor import Prediction


# onnxruntime's workspace per input pixel of one batch element, per base channel of the U-Net: 64 MB for a batch of
# 8 slices of 128² at 8 base channels (the quick model), measured as the peak RSS of a fresh process.
WORKSPACE_BYTES_PER_PIXEL_CHANNEL = 64
DEFAULT_BASE_CHANNELS = 32  # for a model whose metadata does not say (the production width)


def inference_bytes(model: ServedModel, slices: int) -> int:
    """Memory one prediction of `slices` slices holds: onnxruntime's workspace for one batch of them (batches run
    one after another), the inputs and outputs, and the answer's PNGs."""
    batch = min(max(slices, 1), model.predictor.batch_size)
    base = int(model.model_config.get("base_channels") or DEFAULT_BASE_CHANNELS)
    pixels = model.in_channels * model.image_size ** 2
    return WORKSPACE_BYTES_PER_PIXEL_CHANNEL * base * batch * pixels + 32 * slices * pixels


@dataclass(frozen=True)
class PreparedSlice:
    name: str
    model_input: np.ndarray  # (C, S, S) float32, as the model's training data
    ood: OodResult


def prepare_slice(decoded: DecodedSlice, model: ServedModel, name: str, ood_threshold: float) -> PreparedSlice:
    """One decoded slice → model input, checked against what the served model expects, with its OOD score."""
    if decoded.kind == "photo":
        if model.in_channels != 1:
            raise UploadError(422, f"{name}: the served model takes {model.in_channels} channels ({', '.join(model.modalities)}); "
                                   "a PNG/JPEG has one, send an NPY array (C, H, W) instead")
        model_input = prepare_photo(decoded.photo, model.image_size)  # 8-bit: cannot overflow
        gray = np.asarray(decoded.photo.convert("L"), dtype=np.float32)
    else:
        if decoded.channels != model.in_channels:
            raise UploadError(422, f"{name}: {decoded.channels} channel(s), but the served model takes "
                                   f"{model.in_channels} ({', '.join(model.modalities)})")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow → the 422 below
            model_input = prepare_array_slice(decoded.array, model.image_size)
        gray = decoded.array[0]
    _check_finite(model_input, name)
    ood = score_slice(gray, model_input, decoded.rgb, decoded.array, ood_threshold)
    return PreparedSlice(name, np.ascontiguousarray(model_input, dtype=np.float32), ood)


def _check_finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        raise UploadError(422, f"{name}: intensities out of range (they overflow when normalised)")


def predict(model: ServedModel, inputs: np.ndarray, name: str) -> Prediction:
    prediction = model.predictor.predict(inputs)
    _check_finite(prediction.tumour_probability, name)
    _check_finite(prediction.mask_probability, name)
    return prediction


def decision(probability: float, threshold: float, ood: OodResult, ood_threshold: float) -> bool | None:
    """The tumour decision, withheld (None) for an input too far from the training data to trust it."""
    return None if ood.is_ood(ood_threshold) else bool(probability >= threshold)


def slice_results(model: ServedModel, prepared: list[PreparedSlice], ood_threshold: float,
                  gradcam: bool = False) -> list[dict]:
    """Predict several prepared slices in one batch; one answer per slice, in order."""
    inputs = np.stack([p.model_input for p in prepared])
    explainer = gradcam_for(model) if gradcam else None  # before predicting: a 409 should cost nothing
    prediction = predict(model, inputs, ", ".join(p.name for p in prepared[:3]))
    heatmaps = explainer.maps(inputs) if explainer else None
    results = []
    for i, item in enumerate(prepared):
        probability = float(prediction.tumour_probability[i])
        mask = prediction.mask_probability[i] >= model.mask_threshold
        display = to_display(item.model_input[0])
        result = {
            "filename": item.name,
            "tumor_probability": round(probability, 6),
            "has_tumor": decision(probability, model.threshold, item.ood, ood_threshold),
            "threshold": model.threshold,
            "tumor_area_px": int(mask.sum()),
            "mask_png": png_base64(mask_pixels(mask)),
            "image_png": png_base64(display),
            "ood_score": item.ood.score,
            "ood_checks": item.ood.checks,
            "warning": item.ood.warning(ood_threshold),
        }
        if heatmaps is not None:
            result["gradcam_png"] = png_base64(gradcam_overlay(display, heatmaps[i]))
        results.append(result)
    return results


def mask_to_volume_grid(mask_probability: np.ndarray, shape: tuple[int, int, int], threshold: float) -> np.ndarray:
    """(Z, S, S) probabilities on display-oriented slices → (X, Y, Z) uint8 mask on the input's voxel grid.

    Undoes tasks.data.preprocess.axial_slice (a 90° rotation) and the resize: probabilities are resized bilinearly,
    then thresholded, so the mask's edge is as smooth at the input's resolution as at the model's.
    """
    x, y, depth = shape
    out = np.zeros(shape, dtype=np.uint8)
    for z in range(depth):
        resized = np.asarray(Image.fromarray(mask_probability[z].astype(np.float32), mode="F").resize(
            (x, y), Image.BILINEAR))  # (Y, X), like axial_slice(volume, z)
        out[:, :, z] = np.rot90(resized >= threshold, k=-1)
    return out


def volume_result(volume: np.ndarray, image: VolumeImage, model: ServedModel, name: str, ood_threshold: float,
                  with_images: bool = False) -> dict:
    """Every axial slice of an (X, Y, Z) FLAIR volume: per-slice answers, the mask as NIfTI and its volume."""
    if model.in_channels != 1:
        raise UploadError(422, f"{name}: the served model takes {model.in_channels} modalities "
                               f"({', '.join(model.modalities)}); this route accepts one FLAIR volume")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow → the 422 below
        inputs = prepare_volume_slices([volume], model.image_size)
    _check_finite(inputs, name)
    ood = score_volume(volume, inputs, ood_threshold)
    prediction = predict(model, inputs, name)
    mask = mask_to_volume_grid(prediction.mask_probability, volume.shape, model.mask_threshold)
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    pixel_mm2, voxel_mm3 = spacing[0] * spacing[1], spacing[0] * spacing[1] * spacing[2]
    area_px = mask.sum(axis=(0, 1))
    display = to_display(inputs[:, 0]) if with_images else None
    slices = []
    for z, probability in enumerate(prediction.tumour_probability.tolist()):
        item = {"slice": z, "tumor_probability": round(probability, 6),
                "has_tumor": decision(probability, model.threshold, ood, ood_threshold),
                "tumor_area_px": int(area_px[z]), "tumor_area_mm2": round(float(area_px[z]) * pixel_mm2, 3)}
        if display is not None:
            item["image_png"] = png_base64(display[z])
            item["mask_png"] = png_base64(mask_pixels(prediction.mask_probability[z] >= model.mask_threshold))
        slices.append(item)
    probabilities = prediction.tumour_probability
    return {
        "filename": name,
        "shape": list(volume.shape),
        "voxel_spacing_mm": spacing,
        "threshold": model.threshold,
        "max_tumor_probability": round(float(probabilities.max()), 6),
        "has_tumor": decision(float(probabilities.max()), model.threshold, ood, ood_threshold),
        "tumor_slices": [s["slice"] for s in slices if s["has_tumor"]],
        "tumor_volume_cm3": round(float(mask.sum()) * voxel_mm3 / 1000.0, 4),
        "ood_score": ood.score,
        "ood_checks": ood.checks,
        "warning": ood.warning(ood_threshold),
        "slices": slices,
        "mask_nifti": nifti_b64(mask, image),
        "mask_nifti_filename": mask_filename(name),
    }


def nifti_b64(mask: np.ndarray, like: VolumeImage) -> str:
    return base64.b64encode(nifti_bytes(mask, like)).decode("ascii")


def mask_filename(name: str) -> str:
    stem = name.rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii", ".gz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem or 'volume'}_mask.nii.gz"
