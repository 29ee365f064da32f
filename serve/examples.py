"""The example inputs bundled with the served model (tasks/release/examples.py packs them at register time, serving
unpacks them with the model): their listing with thumbnails, a prediction on one, and the truth to overlay.

A slice example is the test-split slice exactly as the model was evaluated on it (the processed (C, S, S) array),
so its answer is the evaluated one; the out-of-distribution photo goes through the upload path as a PNG would.
A volume example is predicted by the /v1/predict/volume handler itself (serve/api.py passes its file of every modality
the model reads as the uploads), and its segmentation adds the truth overlay per slice and the true per-region volumes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from serve.images import label_overlay, png_base64, to_display
from serve.inference import PreparedSlice, prepare_slice, slice_results
from serve.ood import score_slice
from serve.served_model import ServedModel
from serve.uploads import UploadError, decode_slice
from tasks.config import ServeSettings
from tasks.data.orientation import Orientation
from tasks.data.preprocess import axial_slice, prepare_array_slice
from tasks.data.regions import REGION_LABELS, UnknownLabels, to_brats2020_labels
from tasks.data.volumes import spacing_mm
from tasks.inference.volume import voxel_volume_cm3

INDEX_FILE = "index.json"  # written by tasks/release/examples.py
THUMBNAIL = 96
NO_EXAMPLES = ("this model was registered before examples were bundled with models, so it carries none; upload a "
               "file of your own, or register a new version (make run) to get them")
# A model served from a file (`python -m serve --model-file`) has no registry version to carry them: saying it was
# registered too early was false, and asked for a make run that changes nothing.
NO_EXAMPLES_FROM_FILE = ("a model served from a file (--model-file) carries no examples: they are bundled with the "
                         "registry's versions; upload a file of your own, or serve the registry's champion (make "
                         "serve) to get them")


def no_examples(model: ServedModel) -> str:
    """Why `model` offers no examples, by where it was served from."""
    return NO_EXAMPLES_FROM_FILE if model.card.get("source") == "file" else NO_EXAMPLES


@functools.lru_cache(maxsize=8)
def read_index(folder: Path) -> tuple[dict, ...]:
    try:
        return tuple(json.loads((folder / INDEX_FILE).read_text()).get("examples", []))
    except (OSError, ValueError):
        return ()


def entries(model: ServedModel) -> tuple[dict, ...]:
    return () if model.examples is None else read_index(model.examples)


def find_example(model: ServedModel, example_id: str) -> dict:
    for entry in entries(model):
        if entry["id"] == example_id:
            return entry
    known = ", ".join(e["id"] for e in entries(model)) or "none: " + no_examples(model)
    raise UploadError(404, f"no example {example_id!r} with the served model (examples: {known})")


def public(entry: dict) -> dict:
    """What the UI shows of an example (no file names of the bundle)."""
    return {"id": entry["id"], "kind": entry["kind"], "title": entry["title"], "truth": bool(entry.get("truth")),
            "patient": entry.get("patient"), "expected": entry.get("expected")}


def listing(model: ServedModel) -> dict:
    """GET /v1/examples: each example with a thumbnail; `detail` says why there are none."""
    found = entries(model)
    items = [public(e) | {"thumbnail_png": thumbnail(model.examples, e["id"])} for e in found]
    return {"version": model.card.get("version"), "examples": items, "detail": None if items else no_examples(model)}


@functools.lru_cache(maxsize=64)
def thumbnail(folder: Path, example_id: str) -> str:
    """A small PNG of the example: the slice as the model sees it, the photo, or a volume's slice with the most
    tumour (the most brain without a truth)."""
    entry = next(e for e in read_index(folder) if e["id"] == example_id)
    if entry["kind"] == "volume":
        image = nib.load(folder / entry["files"]["flair"])
        shown = Orientation.of(image.affine)  # anterior up, as the volume's slice answers are
        volume = shown.display(np.asarray(image.dataobj, dtype=np.float32))
        where = shown.display(np.asarray(nib.load(folder / entry["truth"]).dataobj)) if entry.get("truth") else volume
        pixels = to_display(axial_slice(volume, int(np.argmax((where > 0).sum(axis=(0, 1))))))
    elif entry["file"].endswith(".npy"):
        pixels = to_display(np.load(folder / entry["file"])[0])
    else:
        pixels = np.asarray(Image.open(folder / entry["file"]).convert("RGB"))
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return png_base64(np.asarray(image))


def prepared_example(model: ServedModel, entry: dict, folder: Path, ood_threshold: float, max_slice_mb: float,
                     max_side: int) -> PreparedSlice:
    """A slice example as model input: the processed array as it is (resized for a model of another size)."""
    path = folder / entry["file"]
    if path.suffix != ".npy":
        decoded = decode_slice(path.read_bytes(), path.name, max_slice_mb, max_side)
        return prepare_slice(decoded, model, entry["id"], ood_threshold)
    array = np.load(path).astype(np.float32)
    if array.shape[0] != model.in_channels:
        raise UploadError(422, f"example {entry['id']}: {array.shape[0]} channel(s), but the served model takes "
                               f"{model.in_channels} ({', '.join(model.modalities)})")
    side = max(array.shape[1:])
    if array.shape[1:] != (model.image_size, model.image_size):
        array = prepare_array_slice(array, model.image_size)
    # judged as an uploaded NPY of the same values is (serve/inference.py): at the model's size, the same bytes get
    # the same verdict (resized, the array is z-scored again per slice). to_display keeps the zero background.
    ood = score_slice(to_display(array[0]).astype(np.float32), array, None, array, ood_threshold)
    return PreparedSlice(entry["id"], np.ascontiguousarray(array), ood, side, model.in_channels)


def truth_mask_png(folder: Path, entry: dict, size: int) -> str | None:
    """The slice's true whole-tumour mask (0/255 PNG) at the model's size, or None when unknown."""
    if not entry.get("truth"):
        return None
    mask = Image.open(folder / entry["truth"]).convert("L")
    return png_base64(np.asarray(mask.resize((size, size), Image.NEAREST)))


def predict_slice_example(model: ServedModel, entry: dict, cfg: ServeSettings, gradcam: bool = False) -> dict:
    """The /v1/predict answer for a slice example (with its Grad-CAM overlay on request), with `truth_png` (when
    known) and `example`."""
    item = prepared_example(model, entry, model.examples, cfg.ood_threshold, cfg.max_slice_mb, cfg.max_image_side)
    result = slice_results(model, [item], cfg.ood_threshold, cfg.min_photo_accuracy, gradcam)[0]
    return result | {"truth_png": truth_mask_png(model.examples, entry, model.image_size), "example": public(entry)}


def with_volume_truth(result: dict, model: ServedModel, entry: dict) -> dict:
    """The /v1/predict/volume answer for a volume example, with per-slice `truth_png` (labels RGBA at the model's
    size, in the orientation of `image_png`), `truth_region_volumes_cm3` and `example`."""
    result["example"] = public(entry)
    if not entry.get("truth"):
        return result
    image = nib.load(model.examples / entry["truth"])
    try:  # in the 2020 convention (ET 4) whichever release the example came from, as the predictions are
        seg = Orientation.of(image.affine).display(to_brats2020_labels(np.asarray(image.dataobj)))
    except UnknownLabels:
        return result
    voxel_cm3 = voxel_volume_cm3(spacing_mm(image.header))
    result["truth_region_volumes_cm3"] = {
        region: round(float(np.isin(seg, labels).sum()) * voxel_cm3, 4)
        for region, labels in REGION_LABELS.items()}
    size = model.image_size
    for item in result.get("slices", []):
        z = item["slice"]
        if 0 <= z < seg.shape[2] and "image_png" in item:
            labels = np.asarray(Image.fromarray(np.ascontiguousarray(axial_slice(seg, z))).resize((size, size),
                                                                                                 Image.NEAREST))
            item["truth_png"] = png_base64(label_overlay(labels)) if labels.any() else None
    return result


def volume_uploads(entry: dict, folder: Path, modalities: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """The example's files for the served model's modalities, FLAIR first, as the volume route's form fields
    would carry them: (field, file name, path). A model trained on four modalities gets all four (the bundle holds
    those of the model it was registered with); FLAIR alone when the bundle lacks the others."""
    files = entry["files"]
    wanted = ["flair", *(m for m in modalities if m != "flair" and m in files)]
    return [(m, (folder / files[m]).name, folder / files[m]) for m in wanted]
