"""Decoded uploads → model inputs → the JSON answers of the /v1 routes.

Preprocessing is tasks/data/preprocess.py's, the very functions the slice step uses (prepare_photo for PNG/JPEG,
prepare_array_slice for NPY, prepare_volume_slices for NIfTI), and prediction is tasks/inference/predictor.py's
OnnxPredictor, which evaluation also uses: served inputs and outputs match the evaluated ones. A whole volume goes
through tasks/inference/volume.py, as in evaluation (every slice, optional batched flip TTA, the uncertainty map).
A model with several input channels (modalities) gets a single-channel image or a FLAIR-only volume in its FLAIR
channel (channel 0) and zeros in the others, as modality dropout trained it to take them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serve.explain import gradcam_for
from serve.images import gradcam_overlay, label_overlay, mask_pixels, png_base64, to_display, uncertainty_overlay
from serve.ood import OodResult, score_slice, score_volume
from serve.served_model import ServedModel
from serve.uploads import DecodedSlice, UploadError
from serve.volumes import VolumeImage, nifti_bytes
from tasks.data.orientation import Orientation
from tasks.data.preprocess import photo_gray, prepare_array_slice, prepare_photo
from tasks.data.regions import REGIONS, labels_from_regions
from tasks.data.volumes import spacing_mm
from tasks.inference.photo_decisions import photo_refusal
from tasks.inference.postprocess import MIN_COMPONENT_SHARE, MIN_SLICE_EVIDENCE, Component
from tasks.inference.predictor import Prediction
from tasks.inference.tumour_free_reference import tumour_free_reference
from tasks.inference.volume import (NO_TTA, binary_entropy, in_display_orientation, predict_volume, prepare_channels,
                                   quiet_outside_brain, voxel_volume_cm3)


# onnxruntime's workspace per input pixel of one batch element, per base channel of the U-Net: 64 MB for a batch of
# 8 slices of 128² at 8 base channels (the quick model), measured as the peak RSS of a fresh process.
WORKSPACE_BYTES_PER_PIXEL_CHANNEL = 64
DEFAULT_BASE_CHANNELS = 32  # for a model whose metadata does not say (the production width)
# Per voxel of the input grid, beyond the one-byte mask serve/volumes.py's BYTES_PER_VOXEL already counts: the R
# region masks (bool) and the float32 uncertainty. With these, the estimate of a whole request was 1.8x (one FLAIR
# volume, 1-channel 1-region model) and 1.7x (four modalities, 4-channel 3-region model, TTA) the measured peak RSS
# growth of a fresh process (240x240x155 int16 volumes, 192² U-Net of 16 base channels: 412 and 646 MB measured).
VOLUME_OUTPUT_BYTES_PER_VOXEL = 4


def inference_bytes(model: ServedModel, slices: int) -> int:
    """Memory one prediction of `slices` slices holds: onnxruntime's workspace for one batch of them (batches run
    one after another; it grows with the U-Net's width, not with its input channels), the inputs and outputs (4
    bytes per further input channel and per further region), and the answer's PNGs."""
    batch = min(max(slices, 1), model.predictor.batch_size)
    base = int(model.model_config.get("base_channels") or DEFAULT_BASE_CHANNELS)
    pixels = model.image_size ** 2
    per_slice_pixel = 32 + 4 * (model.in_channels - 1) + 4 * (len(model.regions) - 1)
    return WORKSPACE_BYTES_PER_PIXEL_CHANNEL * base * batch * pixels + per_slice_pixel * slices * pixels


@dataclass(frozen=True)
class PreparedSlice:
    name: str
    model_input: np.ndarray  # (C, S, S) float32, as the model's training data
    ood: OodResult
    side: int  # the upload's longer side: zero-padded to side x side, then resized to S x S
    channels_sent: int = 1  # 1 (FLAIR's channel; the others zero) or every modality the model takes
    photo: bool = False  # an 8-bit PNG/JPEG, prepared as the Kaggle-style photos were (serve.min_photo_accuracy)


def prepare_slice(decoded: DecodedSlice, model: ServedModel, name: str, ood_threshold: float) -> PreparedSlice:
    """One decoded slice → model input, checked against what the served model expects, with its OOD score."""
    if decoded.kind == "photo":
        model_input = prepare_photo(decoded.photo, model.image_size)  # 8-bit: cannot overflow
        gray = photo_gray(decoded.photo)
    else:
        if decoded.channels not in (1, model.in_channels):
            raise UploadError(422, f"{name}: {decoded.channels} channel(s), but the served model takes "
                                   f"{model.in_channels} ({', '.join(model.modalities)}), or 1 (FLAIR alone)")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow → the 422 below
            model_input = prepare_array_slice(decoded.array, model.image_size)
        gray = decoded.array[0]
    _check_finite(model_input, name)
    ood = score_slice(gray, model_input, decoded.rgb, decoded.array, ood_threshold)
    return PreparedSlice(name, np.ascontiguousarray(in_flair_channel(model_input, model.in_channels)), ood,
                         max(gray.shape[-2:]), len(model_input), photo=decoded.kind == "photo")


def in_flair_channel(model_input: np.ndarray, channels: int) -> np.ndarray:
    """A (1, S, S) input for a model of `channels` modalities: FLAIR (channel 0) holds it, the others are zero."""
    if len(model_input) == channels:
        return model_input.astype(np.float32, copy=False)
    out = np.zeros((channels, *model_input.shape[1:]), dtype=np.float32)
    out[0] = model_input[0]
    return out


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
                  min_photo_accuracy: float | None, gradcam: bool = False) -> list[dict]:
    """Predict several prepared slices in one batch; one answer per slice, in order. A decision is withheld (null,
    `withheld` and `warning` say why) for an input out of distribution, and for a photo when the model's accuracy on
    its test photos is below `min_photo_accuracy` (tasks/inference/photo_decisions.py)."""
    photo_refusal_reason = photo_refusal(model.photos, min_photo_accuracy)
    inputs = np.stack([p.model_input for p in prepared])
    explainer = gradcam_for(model) if gradcam else None  # before predicting: a 409 should cost nothing
    prediction = predict(model, inputs, ", ".join(p.name for p in prepared[:3]))
    heatmaps = explainer.maps(inputs) if explainer else None
    results = []
    for i, item in enumerate(prepared):
        probability = float(prediction.tumour_probability[i])
        mask = prediction.mask_probability[i] >= model.mask_threshold
        display = to_display(item.model_input[0])
        out_of_distribution = item.ood.is_ood(ood_threshold)
        refused = photo_refusal_reason if item.photo and not out_of_distribution else None
        result = {
            "filename": item.name,
            "tumor_probability": round(probability, 6),
            "has_tumor": None if refused else decision(probability, model.slice_threshold, item.ood, ood_threshold),
            "withheld": "out_of_distribution" if out_of_distribution else "photo_accuracy" if refused else None,
            "threshold": model.slice_threshold,
            # in the upload's pixels, as the volume route counts them: a model pixel covers (side / S)² of them
            "tumor_area_px": int(round(float(mask.sum()) * (item.side / mask.shape[-1]) ** 2)),
            "mask_png": png_base64(mask_pixels(mask)),
            "image_png": png_base64(display),
            "ood_score": item.ood.score,
            "ood_checks": item.ood.checks,
            "warning": item.ood.warning(ood_threshold) or refused,
            # as the volume route says it: a modality not sent was an all-zero channel (FLAIR alone, for an image)
            "modalities": {"sent": list(model.modalities[:item.channels_sent]),
                           "missing": list(model.modalities[item.channels_sent:])},
        }
        if heatmaps is not None:
            result["gradcam_png"] = png_base64(gradcam_overlay(display, heatmaps[i]))
        results.append(result)
    return results


def display_aspect(shown: Orientation, shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Height over width, in mm, of an axial slice as shown (tasks/data/preprocess.axial_slice: display axis 1 runs
    down the image, display axis 0 across it)."""
    size, mm = shown.display_shape(shape[:3]), shown.display_spacing(spacing[:3])
    return round(size[1] * mm[1] / (size[0] * mm[0]), 6)


def volume_output_bytes(model: ServedModel, voxels: int) -> int:
    """Memory the answer's maps hold on the input's grid beyond what the decoded volume's estimate counts: the
    region masks and the uncertainty map."""
    return (len(model.regions) + VOLUME_OUTPUT_BYTES_PER_VOXEL) * voxels


def model_channels(model: ServedModel, uploads: dict[str, np.ndarray], name: str) -> list[np.ndarray | None]:
    """The uploaded modality volumes in the model's channel order, None for a modality not sent (a zero channel).
    `uploads` maps a modality (flair, t1, t1ce, t2) to its (X, Y, Z) volume; FLAIR is required."""
    if "flair" not in uploads:
        raise UploadError(422, f"{name}: no FLAIR volume; send `file` (FLAIR, or a 4D volume of the model's "
                               f"{len(model.modalities)} modalities) or the field `flair` with any of t1, t1ce, t2")
    unused = sorted(set(uploads) - set(model.modalities))
    if unused:
        raise UploadError(422, f"{name}: the served model takes {', '.join(model.modalities)}; it has no channel "
                               f"for {', '.join(unused)}")
    shapes = {m: v.shape for m, v in uploads.items()}
    if len(set(shapes.values())) > 1:
        raise UploadError(422, f"{name}: the modality volumes differ in shape ({shapes}); they must be co-registered "
                               "on one grid")
    # preprocessing takes the voxels above 0 as the brain: a modality without one (all zero, as a 4D file's missing
    # channel is; all negative; all NaN, read as 0) is an all-zero channel, which is how the model reads one not sent
    return [volume if (volume := uploads.get(modality)) is not None and (modality == "flair" or (volume > 0).any())
            else None for modality in model.modalities]


def volume_result(uploads: dict[str, np.ndarray], image: VolumeImage, model: ServedModel, name: str,
                  ood_threshold: float, with_images: bool = False,
                  flips: Sequence[Sequence[int]] = NO_TTA) -> dict:
    """Every axial slice of an (X, Y, Z) volume set (FLAIR, and any of the model's other modalities): per-slice
    answers, the whole-tumour mask, the label map and the uncertainty map as NIfTI, cm³ per region. `flips`: the
    TTA flips (NO_TTA = none), run batched by tasks/inference/volume.py."""
    volumes = model_channels(model, uploads, name)
    # Sliced in display orientation (anterior up, whichever way the file stores its voxels), as the training slices
    # were cut; the slice answers are numbered in that orientation, the NIfTI answers are on the file's own grid.
    shown = Orientation.of(image.affine)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow → the 422 below
        inputs = prepare_channels(in_display_orientation(volumes, shown), model.image_size)
    _check_finite(inputs, name)
    # sent with no voxel above 0, so read as missing (model_channels); the guard judges what the model reads. A blank
    # FLAIR stays in (the answer's grid is its), and the guard calls it a blank image; it is listed as empty too
    unread = [m for m, volume in zip(model.modalities, volumes) if volume is None and m in uploads]
    judged = {modality: shown.display(volume) for modality, volume in uploads.items() if modality not in unread}
    empty = [m for m, volume in zip(model.modalities, volumes)
             if m in unread or m == "flair" and volume is not None and not (volume > 0).any()]
    ood = score_volume(judged, inputs[:, :1], ood_threshold)
    result = predict_volume(model.predictor, volumes, model.image_size, flips, model.mask_threshold, inputs,
                            orientation=shown, slices_in_volume=model.slices_in_volume)
    _check_finite(result.tumour_probability, name)
    _check_finite(result.slice_probability, name)
    spacing = list(spacing_mm(image.header))
    pixel_mm2 = float(np.prod(shown.display_spacing(spacing)[:2]))
    area_px = result.slice_areas_px()
    display = to_display(inputs[:, 0]) if with_images else None
    slices = []
    for z, probability in enumerate(result.tumour_probability.tolist()):
        item = {"slice": z, "tumor_probability": round(probability, 6),
                "has_tumor": decision(probability, model.threshold, ood, ood_threshold),
                "tumor_area_px": int(area_px[z]), "tumor_area_mm2": round(float(area_px[z]) * pixel_mm2, 3)}
        if display is not None:
            item |= slice_images(display[z], result.slice_probability[z], result.slice_masks[z],
                                 brain=np.any(inputs[z] != 0, axis=0))
            if result.slice_dropped is not None and result.slice_dropped[z].any():
                # where the clean-up removed a lesion: only on the slices that had one (most have none)
                item["dropped_png"] = png_base64(mask_pixels(result.slice_dropped[z]))
        slices.append(item)
    probabilities = result.tumour_probability
    region_cm3 = result.region_volumes_cm3(spacing)
    has_tumor = decision(float(probabilities.max()), model.threshold, ood, ood_threshold)
    whole_tumour_cm3 = round(region_cm3[result.regions[0]], 4)
    return {
        "filename": name,
        "shape": list(uploads["flair"].shape),
        "orientation": "".join(shown.stored_axes),
        "voxel_spacing_mm": spacing,
        # height / width in mm of a displayed axial slice: the slice images are square (each axis resized from its
        # own length, as the slice step cuts training slices), so a viewer restores the proportions with this
        "display_aspect": display_aspect(shown, uploads["flair"].shape, spacing),
        "threshold": model.threshold,
        # which score the threshold judged: read after the clean-up (a slice is then never "tumour" on a dropped
        # component's pixels), or each slice's own, as the model was evaluated (ServedModel.slices_in_volume)
        "scores_after_cleanup": model.slices_in_volume,
        "max_tumor_probability": round(float(probabilities.max()), 6),
        "has_tumor": has_tumor,
        # withheld with the decision: "no slice with tumour" would read as a clean scan
        "tumor_slices": None if has_tumor is None else [s["slice"] for s in slices if s["has_tumor"]],
        "tumor_volume_cm3": whole_tumour_cm3,
        # BraTS has no healthy brain: what this model paints on brains without a tumour, beside what it found here
        "tumour_free_reference": tumour_free_reference(model.card.get("metrics") or {}, whole_tumour_cm3, has_tumor),
        "ood_score": ood.score,
        "ood_checks": ood.checks,
        "warning": ood.warning(ood_threshold),
        "slices": slices,
        "mask_nifti": nifti_b64(result.whole_tumour.astype(np.uint8), image),
        "mask_nifti_filename": output_filename(name, "mask"),
        # Which channels were real and which were zero-filled: the model reads a missing modality as all-zero, and
        # FLAIR alone costs most on the tumour core and the enhancing tumour (docs/model.md, "Modalities and regions").
        "modalities": {"sent": [m for m, v in zip(model.modalities, volumes) if v is not None and m not in empty],
                       "missing": [m for m, v in zip(model.modalities, volumes) if v is None or m in empty],
                       "empty": empty},  # sent, but with no voxel above 0: read as missing (listed there too)
        "regions": list(model.regions),
        "region_volumes_cm3": {region: (round(region_cm3[region], 4) if region in region_cm3 else None)
                               for region in REGIONS},
        "label_map_nifti": nifti_b64(result.label_map, image),
        "label_map_nifti_filename": output_filename(name, "labels"),
        "uncertainty_nifti": nifti_b64(result.uncertainty, image),
        "uncertainty_nifti_filename": output_filename(name, "uncertainty"),
        "uncertainty": result.uncertainty_summary(),
        "cleanup": cleanup_summary(result.components, spacing),
    }


# The components listed one by one in an answer, largest first; the rest are counted (a noisy volume has hundreds of
# one-voxel specks, and what a reader checks is the large ones).
LISTED_COMPONENTS = 20


def cleanup_summary(components: Sequence[Component], spacing: Sequence[float]) -> dict:
    """What the volume clean-up did (tasks/inference/postprocess.py): its rule, and each whole-tumour component with
    its size, slices, classifier evidence and why it was kept or dropped. A dropped lesion is then visible in the
    answer, not only by its absence from the mask."""
    voxel_cm3 = voxel_volume_cm3(spacing)
    dropped = [c for c in components if not c.kept]
    return {"min_component_share": MIN_COMPONENT_SHARE, "min_slice_evidence": MIN_SLICE_EVIDENCE,
            "kept": len(components) - len(dropped), "dropped": len(dropped),
            "dropped_cm3": round(sum(c.voxels for c in dropped) * voxel_cm3, 4),
            "components": [c.as_dict() | {"volume_cm3": round(c.voxels * voxel_cm3, 4)}
                           for c in components[:LISTED_COMPONENTS]],
            "components_not_listed": max(0, len(components) - LISTED_COMPONENTS)}


def slice_images(display: np.ndarray, region_probability: np.ndarray, masks: np.ndarray,
                 brain: np.ndarray) -> dict[str, str]:
    """One slice's PNGs on the model's grid: the FLAIR channel, the whole-tumour mask and the label overlay (from
    the volume's cleaned masks, as the NIfTI), the uncertainty overlay (from the probabilities; 0 outside the
    `brain` (any input channel non-zero) where no tumour is predicted, as the uncertainty NIfTI is)."""
    uncertainty = quiet_outside_brain(binary_entropy(region_probability).max(axis=0), brain, masks)
    return {"image_png": png_base64(display), "mask_png": png_base64(mask_pixels(masks[0])),
            "labels_png": png_base64(label_overlay(labels_from_regions(masks))),
            "uncertainty_png": png_base64(uncertainty_overlay(uncertainty))}


def nifti_b64(mask: np.ndarray, like: VolumeImage) -> str:
    return base64.b64encode(nifti_bytes(mask, like)).decode("ascii")


def output_filename(name: str, kind: str) -> str:
    """`<stem>_<kind>.nii.gz` for an upload named `<stem>.nii(.gz)`."""
    stem = name.rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii", ".gz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem or 'volume'}_{kind}.nii.gz"
