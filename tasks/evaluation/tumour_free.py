"""The test patients without their tumour: what the model paints on a brain that has none (synthetic data only).

BraTS holds no brain without a tumour, and the synthetic set copies it, so no split shows what a volume answer says
of a healthy brain. The generator draws each patient from its own seed and renders the same person without the
tumour and its mass effect, every other draw kept (tasks/data/synthetic.py, `synthesize_patient(with_tumour=False)`):
the test patients' twins, which no training step saw, as it saw none of the patients. Each goes through the volume
route's own inference and clean-up (tasks/inference/volume.py), as the test patients do.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from tasks.evaluation.metrics import wilson_interval
from tasks.inference.volume import NO_TTA, SlicePredictor, predict_volume

# The synthetic patients' names (tasks/data/synthetic.py, PATIENT_ID): patient N is drawn from the seed [seed, N].
SYNTHETIC_PATIENT = re.compile(r"BraTS20_Training_(\d{3,})$")


def tumour_free_twins(predictor: SlicePredictor, patients: Sequence[str], data_seed: int, modalities: Sequence[str],
                      image_size: int, mask_threshold: float, threshold: float,
                      slices_in_volume: bool = True) -> dict | None:
    """metrics.json's `tumour_free_volumes`: of the `patients` (synthetic test patients of data set `data_seed`),
    rendered without their tumour, how many the model leaves with a predicted whole tumour after the clean-up, and how
    many the volume decision (a slice's tumour probability at `threshold`, as /v1/predict/volume decides) calls
    tumour; `slices_in_volume` as evaluation scored the slices (evaluate.slices_in_volume). None when no patient is a
    synthetic one."""
    numbers = [int(found.group(1)) for patient in patients if (found := SYNTHETIC_PATIENT.match(patient))]
    if not numbers:
        return None
    findings = tumour_free_findings(predictor, numbers, data_seed, modalities, image_size, mask_threshold, threshold,
                                    slices_in_volume)
    voxels = [v for v, _ in findings]
    painted = int(sum(v > 0 for v in voxels))
    return {"n": len(numbers), "with_predicted_tumour": painted,
            # a share from a few brains: 2 of 7 is anything from 8 % to 64 %
            "with_predicted_tumour_ci95": wilson_interval(painted / len(numbers), len(numbers)),
            "called_tumour": (called_tumour := int(sum(called for _, called in findings))),
            "called_tumour_ci95": wilson_interval(called_tumour / len(numbers), len(numbers)),
            "predicted_voxels_max": int(max(voxels)),
            "predicted_voxels_median": float(np.median(voxels)),
            "what": "the test patients rendered again without their tumour (synthetic data), after the clean-up"}


def tumour_free_findings(predictor: SlicePredictor, numbers: Sequence[int], data_seed: int, modalities: Sequence[str],
                         image_size: int, mask_threshold: float, threshold: float,
                         slices_in_volume: bool = True) -> list[tuple[int, bool]]:
    """Per synthetic patient `numbers` of data set `data_seed`, rendered without its tumour: the whole-tumour voxels
    the volume route's inference and clean-up leave (1 mm voxels, BraTS's grid), and whether the volume decision at
    `threshold` calls it tumour."""
    from tasks.data.orientation import BRATS_AFFINE, Orientation
    from tasks.data.synthetic import synthesize_patient

    findings = []
    for number in numbers:
        volumes, _ = synthesize_patient(data_seed, number, with_tumour=False)
        result = predict_volume(predictor, [volumes[m] for m in modalities], image_size, NO_TTA, mask_threshold,
                                orientation=Orientation.of(BRATS_AFFINE), slices_in_volume=slices_in_volume)
        findings.append((int(result.masks[0].sum()), bool(result.tumour_probability.max() >= threshold)))
    return findings
