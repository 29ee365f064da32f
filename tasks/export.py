"""`export`: the joint model to ONNX, checked for parity with torch on the test slices (at most
`export.parity_max_slices`, evenly spaced), with latency figures.

    exports/model.onnx   input "image" (batch, C, H, W) float32 → "seg_logits" (batch, R, H, W), one map per region
                         (WT, TC, ET), "cls_logits" (batch,)
    exports/model.json   what serving needs to use it: names, shapes, modalities, preprocessing, threshold, versions
    reports/export.json  parity (max |logit difference|, decision mismatches, mask Dice) and latency (p50/p95 per
                         slice at batch 1 and 8, onnxruntime and torch eager, measured interleaved in one run)
A failed export (onnx.checker, parity) leaves no exports/model.onnx. The work is tasks/release/onnx_export.py's.
"""

from __future__ import annotations

from tasks import paths
from tasks.config import ExportSettings, Settings
from tasks.release.onnx_export import export_model
from tasks.tracking.tracker import Tracker, tracked_step

EXPORTED_STAGE = "joint"


def main(settings: Settings) -> dict:
    with tracked_step(settings, "export") as tracker:
        report = export_model(
            paths.best_checkpoint(EXPORTED_STAGE), paths.PROCESSED, paths.SPLITS, paths.METRICS, paths.ONNX_MODEL,
            paths.EXPORT_METADATA, paths.EXPORT_REPORT, settings.export, list(settings.modalities),
            settings.active.image_size, data_source=settings.data.source,
        )
        log_export(tracker, settings.export, report)
    return {"onnx": str(paths.ONNX_MODEL), "sha256": report["onnx"]["sha256"],
            "parity": {k: report["parity"][k] for k in ("passed", "max_abs_diff", "decision_mismatches", "mask_dice")},
            "speedup_p50": report["speedup_p50"]}


def log_export(tracker: Tracker, cfg: ExportSettings, report: dict) -> None:
    tracker.log_params({f"export.{k}": v for k, v in cfg.model_dump().items()})
    parity = report["parity"]
    metrics = {f"parity.{k}": float(parity[k]) for k in ("max_abs_diff", "decision_mismatches", "mask_dice")}
    for engine, batches in report["latency"].items():
        for batch, values in batches.items():
            metrics |= {f"latency.{engine}.{batch}.{k}": v for k, v in values.items()}
    metrics |= {f"speedup_p50.{k}": v for k, v in report["speedup_p50"].items()}
    tracker.log_metrics(metrics)
    tracker.log_artifact(paths.EXPORT_REPORT)
    tracker.log_artifact(paths.EXPORT_METADATA)
