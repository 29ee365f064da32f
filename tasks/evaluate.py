"""`evaluate`: the joint model on the TEST split, with a decision threshold chosen on the VALIDATION split.

    classification  every test slice (BraTS slices and Kaggle images) at the validation threshold
    segmentation    Dice, IoU, HD95 (mm) per BraTS test slice whose ground truth has tumour
    volume          Dice, HD95 (mm) per BraTS test patient, slices re-stacked by slice_index
    regions         WT, TC, ET Dice and HD95 per BraTS test patient, raw volume at native resolution (BraTS rules)
    ci95            BCa bootstrap resampling patients, widened for few (a Kaggle image is its own patient)
Writes reports/metrics.json (the contract's shape, DVC metrics) and the figures with their DVC plot files in
reports/plots/; logs both to the step's tracker run. The work is tasks/evaluation/'s.
"""

from __future__ import annotations

from tasks import paths
from tasks.config import Settings
from tasks.evaluation.report import EvaluationPaths, VolumeInputs, evaluate_checkpoint, headline
from tasks.tracking.tracker import tracked_step

EVALUATED_STAGE = "joint"  # the last training stage: the model that export and register ship


def main(settings: Settings) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tracked_step(settings, "evaluate") as tracker:
        report = evaluate_checkpoint(paths.best_checkpoint(EVALUATED_STAGE), EvaluationPaths.of_project(),
                                     settings.evaluate, settings.seed, tracker, device,
                                     VolumeInputs(tuple(settings.slice.modalities), settings.active.image_size,
                                                  settings.seed if settings.data.source == "synthetic" else None),
                                     settings.split.phash_max_distance)
    return {"metrics": str(paths.METRICS), "threshold": report["classification"]["threshold"],
            "calibration_ece": round(report["calibration_ece"], 4), "headline": headline(report)}
