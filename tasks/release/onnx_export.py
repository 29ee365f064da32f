"""A model to ONNX, checked for parity with torch on the test slices (at most `export.parity_max_slices`, evenly
spaced), with latency figures (`export`).

    exports/model.onnx   input "image" (batch, C, H, W) float32 → "seg_logits" (batch, R, H, W: WT, TC, ET),
                         "cls_logits" (batch,)
    exports/model.json   what serving needs to use it: names, shapes, modalities, regions, preprocessing, threshold,
                         versions (also embedded in model.onnx's metadata as "slicewise")
    reports/export.json  parity (max |logit difference|, decision mismatches, mask Dice per region) and latency (p50/p95 per
                         slice at batch 1 and 8, onnxruntime and torch eager, measured interleaved in one run)
The model is written to a temporary file and renamed only after `onnx.checker` and the parity check pass, and a
previous export is removed first, so a failed export never leaves an exports/model.onnx that looks valid. The parity
and latency checks are tasks/release/onnx_checks.py's.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.config import ExportSettings
from tasks.data.regions import REGIONS
from tasks.data.splits import evenly_spaced, iter_slices, read_split, split_rows
from tasks.errors import SliceWiseError
from tasks.inference.predictor import (LEGACY_SLICE_SCORE, MASK_THRESHOLD, ONNX_CLS_OUTPUT, ONNX_INPUT,
                                       ONNX_SEG_OUTPUT, SLICE_SCORES, evaluated_in_volume, evaluated_photos_alone,
                                       evaluated_slice_score)
from tasks.io import atomic_write, read_json, sha256_file, usable_cores, write_json_atomic
from tasks.release.onnx_checks import check_parity, measure_latency, ort_session
from tasks.release.release_files import check_evaluated_weights

log = logging.getLogger(__name__)

# Embedded in model.onnx and model.json: an edit changes the exported file's sha256, and with it the identity of
# every version registered after it (the 3-region head changed it anyway).
PREPROCESSING = (
    "One input channel per MRI modality, in the order of `modalities`, float32 NCHW of image_size x image_size; "
    "a modality not available is an all-zero channel (the model is trained with modality dropout), and a "
    "single-channel image (PNG/JPEG/NPY slice, FLAIR-only volume) is channel 0. "
    "MRI volumes: turned to LAS from the affine (tasks/data/orientation.py), z-score over the brain (non-zero) "
    "voxels of each volume, axial slice np.rot90(volume[:, :, z]) (anterior up, the patient's right on the "
    "left), bilinear resize. 2D slices are taken as shown (anterior up). 2D images (PNG/JPEG): grayscale, zero-padded to a square, bilinear resize, z-score over "
    "pixels above 5 % of the maximum. Implemented in tasks/data/preprocess.py (prepare_volume_slices, "
    "prepare_photo, prepare_array_slice). Outputs are logits: apply a sigmoid; whether a slice has a tumour: "
    "`decision_rule`; seg_logits has one channel per region in `regions` (wt: labels 1, 2, 4; tc: 1, 4; "
    "et: 4), a pixel is in a region when its probability >= mask_threshold; tasks/data/regions.py "
    "labels_from_regions turns the regions into BraTS labels 0/1/2/4."
)
def decision_rule(slice_score: str, slices_in_volume: bool) -> str:
    """How a slice's tumour probability is made and which threshold it must reach, in words (model.json)."""
    made = ("tumour_probability = (sigmoid(cls_logits) + the largest sigmoid(seg_logits[:, 0]) over the slice's "
            "pixels) / 2, the classifier's and the whole-tumour map's evidence together" if slice_score == "fused"
            else "tumour_probability = sigmoid(cls_logits)")
    if slices_in_volume and slice_score == "fused":
        where = ("a slice judged alone has a tumour when tumour_probability >= lone_slice_threshold; a slice of a "
                 "volume, when it is >= threshold, its whole-tumour map read after the volume's clean-up "
                 "(components without support dropped: tasks/inference/postprocess.py)")
    else:
        where = ("a slice has a tumour when tumour_probability >= threshold (lone_slice_threshold for a slice "
                 "judged alone)")
    return f"{made}; {where}. Implemented in tasks/inference/predictor.py (slice_probability)."


REGION_MEANING = {"wt": "whole tumour (labels 1, 2, 4)", "tc": "tumour core (labels 1, 4)",
                  "et": "enhancing tumour (label 4)"}


def export_onnx(model: torch.nn.Module, path: Path, in_channels: int, image_size: int, opset: int) -> None:
    """Trace both heads to ONNX with a dynamic batch axis and fixed input/output names."""
    from models.unet import TwoHeadOutputs, with_export_norms

    # Numerically stable instance norms for onnxruntime (see TwoStageInstanceNorm); parity checks the result.
    wrapper = TwoHeadOutputs(with_export_norms(model.eval())).eval()
    dummy = torch.zeros(1, in_channels, image_size, image_size)
    with warnings.catch_warnings():
        # Benign for this graph: the shape checks inside instance norm are constant, and instance norm always
        # normalises with the statistics of its input (no running statistics), which is what "train=True" means.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True")
        torch.onnx.export(
            wrapper, (dummy,), str(path), opset_version=opset, dynamo=False, do_constant_folding=True,
            input_names=[ONNX_INPUT], output_names=[ONNX_SEG_OUTPUT, ONNX_CLS_OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, ONNX_SEG_OUTPUT, ONNX_CLS_OUTPUT)},
        )


def check_onnx(path: Path, metadata: dict) -> None:
    """onnx.checker on the file, then embed the metadata so the .onnx alone says how to use it."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise SliceWiseError(f"exported model fails onnx.checker: {exc}", path) from exc
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"slicewise": json.dumps(metadata, sort_keys=True)})
    proto.doc_string = "SliceWise multitask U-Net: tumour segmentation + slice classification logits"
    onnx.save(proto, str(path))


def model_metadata(checkpoint: dict, modalities: list[str], image_size: int, threshold: float, opset: int,
                   mask_threshold: float = MASK_THRESHOLD, slice_score: str = LEGACY_SLICE_SCORE,
                   slices_in_volume: bool = False, lone_slice_threshold: float | None = None,
                   photos_judged_alone: bool = False) -> dict:
    """The model card's machine-readable half (MONAI bundle metadata.json idea): everything serving needs."""
    from importlib.metadata import version  # not `import monai`: it loads every MONAI subpackage, 4 s for a string

    import onnx
    import onnxruntime

    channels = checkpoint["model_config"]["in_channels"]
    regions = list(REGIONS[: checkpoint["model_config"].get("seg_channels", 1)])  # the seg_logits channels, in order
    return {
        "name": "slicewise-multitask-unet",
        "format": "onnx",
        "opset": opset,
        "input": {"name": ONNX_INPUT, "shape": ["batch", channels, image_size, image_size], "dtype": "float32"},
        "outputs": [
            {"name": ONNX_SEG_OUTPUT, "shape": ["batch", len(regions), image_size, image_size], "activation": "sigmoid",
             "meaning": "logit per pixel of each region: " + "; ".join(f"{r}: {REGION_MEANING[r]}" for r in regions)},
            {"name": ONNX_CLS_OUTPUT, "shape": ["batch"], "activation": "sigmoid",
             "meaning": "the classification head's tumour logit per slice (what `decision_rule` thresholds is made "
                        "from it and, with a fused slice score, from seg_logits too)"},
        ],
        "image_size": image_size,
        "modalities": list(modalities),
        "regions": regions,
        "preprocessing": PREPROCESSING,
        "threshold": threshold,
        "slice_score": slice_score,  # what `threshold` applies to (tasks/inference/predictor.py, SLICE_SCORES)
        # the same in words, for whoever scores the file without SliceWise's code: a user reading "sigmoid(cls_logits)
        # >= threshold" from the outputs alone disagreed with the reported figures on 38 of 445 test slices
        "decision_rule": decision_rule(slice_score, slices_in_volume),
        "slices_in_volume": slices_in_volume,  # BraTS slices were judged as the volume route answers (after clean-up)
        # for a slice that arrives alone (/v1/predict): the same rule on validation slices scored alone
        "lone_slice_threshold": threshold if lone_slice_threshold is None else lone_slice_threshold,
        # the photos were judged at lone_slice_threshold, as the slice route decides them (a champion is re-scored so)
        "photos_judged_alone": photos_judged_alone,
        "mask_threshold": mask_threshold,
        "model_config": checkpoint["model_config"],
        "checkpoint": {"stage": checkpoint.get("stage"), "epoch": checkpoint.get("epoch"),
                       "metric": checkpoint.get("metric_name"), "best_metric": checkpoint.get("best_metric")},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "monai": version("monai"), "python": platform.python_version()},
    }


@dataclass(frozen=True)
class Decisions:
    """How evaluation turned the model's outputs into answers, and serving must too."""

    threshold: float  # on each slice's tumour probability
    mask_threshold: float  # on each pixel's region probability
    slice_score: str  # what a slice's tumour probability is (SLICE_SCORES)
    slices_in_volume: bool = False  # BraTS slices were scored after their volume's clean-up (evaluate.slices_in_volume)
    lone_slice_threshold: float | None = None  # for a slice scored alone; None: metrics from before it was recorded
    photos_alone: bool = False  # the photos were judged at lone_slice_threshold (classification_threshold.photos_at)


def read_decisions(metrics_path: Path) -> Decisions:
    """The decisions of metrics.json at `metrics_path` (`decisions_of`)."""
    return decisions_of(read_json(metrics_path, "evaluate"), metrics_path)


def decisions_of(metrics: dict, metrics_path: Path) -> Decisions:
    """The decision threshold, the mask threshold and the slice score evaluation used (0.5 for metrics written
    before the mask threshold was recorded, the classifier alone for those written before the slice score was);
    `metrics_path` names the file in errors."""
    try:
        threshold = float(metrics["classification"]["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SliceWiseError(f"no classification.threshold in the metrics ({exc})", metrics_path) from exc
    try:
        mask_threshold = float(metrics.get("segmentation_threshold", {}).get("value", MASK_THRESHOLD))
    except (ValueError, TypeError, AttributeError) as exc:
        raise SliceWiseError(f"unreadable segmentation_threshold.value in the metrics ({exc})", metrics_path) from exc
    if not 0 < mask_threshold < 1:
        raise SliceWiseError(f"segmentation_threshold.value {mask_threshold} is not in (0, 1)", metrics_path)
    slice_score = evaluated_slice_score(metrics)
    if slice_score not in SLICE_SCORES:
        raise SliceWiseError(f"classification_threshold.slice_score {slice_score!r} is not one of "
                             f"{', '.join(SLICE_SCORES)}", metrics_path)
    lone = (metrics.get("classification_threshold") or {}).get("lone_slice_value")
    try:
        lone = None if lone is None else float(lone)
    except (ValueError, TypeError) as exc:
        raise SliceWiseError(f"unreadable classification_threshold.lone_slice_value ({exc})", metrics_path) from exc
    return Decisions(threshold, mask_threshold, slice_score, evaluated_in_volume(metrics), lone,
                     evaluated_photos_alone(metrics))


def export_model(checkpoint_path: Path, processed: Path, splits_dir: Path, metrics_path: Path, onnx_path: Path,
                 metadata_path: Path, report_path: Path, cfg: ExportSettings, modalities: list[str],
                 image_size: int, data_source: str | None = None) -> dict:
    """Export, check, verify parity, measure latency; returns the content of reports/export.json. Torch's thread
    count is given back as it was: a Prefect flow runs every step in one process, and the next flow run of a long-lived
    `flows serve` evaluated on the one thread the latency figures took. `data_source` (data.source) goes into the
    metadata: what the model was trained and tested on, which the file alone then says."""
    threads = torch.get_num_threads()
    try:
        return _export_model(checkpoint_path, processed, splits_dir, metrics_path, onnx_path, metadata_path,
                             report_path, cfg, modalities, image_size, data_source)
    finally:
        torch.set_num_threads(threads)


def _export_model(checkpoint_path: Path, processed: Path, splits_dir: Path, metrics_path: Path, onnx_path: Path,
                  metadata_path: Path, report_path: Path, cfg: ExportSettings, modalities: list[str],
                  image_size: int, data_source: str | None) -> dict:
    from tasks.inference.checkpoints import load_model

    metrics = read_json(metrics_path, "evaluate")
    decisions = decisions_of(metrics, metrics_path)
    weights = check_evaluated_weights(metrics, checkpoint_path, metrics_path)
    model, checkpoint = load_model(checkpoint_path)
    # Parity runs the test slices through both engines on every core; only the latency figures are timed on
    # `latency_threads` (on one thread the parity pass took 17 s of this step's 34 s on 2 cores, quick profile).
    # At most `parity_max_slices` of them, evenly spaced: the quick profile's 444 are all checked; a production test
    # split (about 55 patients, 7,700 slices) would cost minutes in two CPU engines for no more certainty.
    cores = usable_cores()
    latency_threads = cfg.latency_threads or cores
    torch.set_num_threads(cores)
    for stale in (onnx_path, metadata_path):  # a failed export must not leave the previous model looking current
        stale.unlink(missing_ok=True)
    metadata = model_metadata(checkpoint, modalities, image_size, decisions.threshold, cfg.opset,
                              decisions.mask_threshold, decisions.slice_score, decisions.slices_in_volume,
                              decisions.lone_slice_threshold, decisions.photos_alone)
    metadata["checkpoint"]["sha256"] = weights  # register checks it against best.pt
    if data_source is not None:  # a served file's figures are then said to be synthetic ones, as a registry tag says
        metadata["data_source"] = data_source
    test_rows = split_rows(processed, read_split("test", splits_dir))
    test_slices = iter_slices(processed, evenly_spaced(test_rows, cfg.parity_max_slices))
    sample = next(test_slices)  # the first shard: checked here, then the first of the parity run
    expected_shape = (checkpoint["model_config"]["in_channels"], image_size, image_size)
    if sample.shape[1:] != expected_shape:
        raise SliceWiseError(f"test slices have shape {sample.shape[1:]} but the model expects {expected_shape}; "
                             "rerun the slice step and training after changing image size or modalities", processed)
    with atomic_write(onnx_path) as tmp:  # renamed last: a model.onnx in place means everything below passed
        export_onnx(model, tmp, checkpoint["model_config"]["in_channels"], image_size, cfg.opset)
        check_onnx(tmp, metadata)
        session = ort_session(tmp, cores)
        parity = check_parity(model, session, itertools.chain([sample], test_slices), decisions.threshold, cfg,
                              decisions.mask_threshold, decisions.slice_score, decisions.lone_slice_threshold)
        parity["test_slices"] = len(test_rows)  # n_slices of them
        report = {"onnx": {"path": str(onnx_path), "opset": cfg.opset, "size_bytes": tmp.stat().st_size,
                           "sha256": sha256_file(tmp), "checker": "passed"},
                  "parity": parity}
        if not parity["passed"]:
            write_json_atomic(report, report_path)
            raise SliceWiseError(
                f"ONNX parity failed on {parity['n_slices']} test slices: max |logit difference| "
                f"{parity['max_abs_diff']:.2e}, {parity['tolerance_used']:.2f}x what atol {cfg.parity_atol:.0e} + "
                f"rtol {cfg.parity_rtol:.0e} x |logit| allows (at most 1), {parity['decision_mismatches']} "
                f"tumour decisions differ beyond rounding at the cut, mask Dice {parity['mask_dice']:.5f} (needs >= "
                f"{cfg.parity_min_dice}); no model exported", checkpoint_path)
        if latency_threads != cores:
            torch.set_num_threads(latency_threads)
            session = ort_session(tmp, latency_threads)
        report |= measure_latency(model, session, sample, cfg.latency_runs)
        report["latency_setup"] = {"device": "cpu", "threads": latency_threads, "runs": cfg.latency_runs,
                                   "unit": "milliseconds per slice",
                                   "processor": platform.processor() or platform.machine()}
        write_json_atomic(metadata | {"onnx_sha256": report["onnx"]["sha256"]}, metadata_path)
        write_json_atomic(report, report_path)
    log.info("export: parity passed (max |diff| %.1e, Dice %.5f); batch-1 speedup of onnxruntime over torch %.2fx",
             parity["max_abs_diff"], parity["mask_dice"], report["speedup_p50"]["batch_1"])
    return report

