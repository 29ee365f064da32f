"""Does a volume answer's tumour-free reference hold on brains it was not measured on?

Usage: .venv/bin/python -m bench.bench_tumour_free [--brains 20] [--first N] [--record KEY]

evaluate measures what the model paints on its test patients rendered again without their tumour (metrics.json's
`tumour_free_volumes`: 7 brains on the quick profile), and every /v1/predict/volume answer sets its tumour beside the
largest of those (`tumour_free_reference`). This renders `--brains` more tumour-free people of the project's synthetic
data seed, patient numbers from `--first` on (default: the first past the data set, which holds 1 to its patient
count: no split or training step saw them), runs each through evaluate's inference and clean-up
(`tasks/evaluation/tumour_free.py`) with the committed joint checkpoint, its mask cut and decision threshold from
reports/metrics.json, and counts the brains left with a false tumour, those the volume decision calls tumour (with
the specificity's Wilson interval), and the false tumours the reference calls no larger than one.
`--record KEY` also writes the result into reports/bench.json under KEY.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run(brains: int, first: int | None = None) -> dict:
    from bench.bench_seeds import cpu_description
    from tasks import paths
    from tasks.config import load_settings
    from tasks.evaluation.metrics import wilson_interval
    from tasks.evaluation.tumour_free import tumour_free_findings
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import TorchPredictor, evaluated_in_volume, evaluated_slice_score
    from tasks.inference.tumour_free_reference import TWIN_VOXEL_CM3, tumour_free_reference
    from tasks.io import sha256_file

    settings = load_settings()
    if settings.data.source != "synthetic":
        raise SystemExit("bench_tumour_free renders synthetic brains: data.source must be synthetic")
    in_data_set = settings.active.synthetic_patients + settings.active.synthetic_tumour_free_patients
    first = in_data_set + 1 if first is None else first
    if first <= in_data_set:
        raise SystemExit(f"--first {first}: the data set holds patients 1 to {in_data_set}; take brains past them")
    metrics = json.loads(paths.METRICS.read_text())
    if (metrics.get("model") or {}).get("checkpoint_sha256") != sha256_file(paths.best_checkpoint("joint")):
        raise SystemExit(f"{paths.METRICS} is about other weights than {paths.best_checkpoint('joint')}: "
                         "run `make run` first")
    threshold = metrics["classification_threshold"]["value"]
    model, _ = load_model(paths.best_checkpoint("joint"))
    predictor = TorchPredictor(model, slice_score=evaluated_slice_score(metrics))  # both rules as metrics.json's
    started = time.perf_counter()
    findings = tumour_free_findings(predictor, range(first, first + brains), settings.seed,
                                    settings.slice.modalities, settings.active.image_size,
                                    metrics["segmentation_threshold"]["value"], threshold,
                                    evaluated_in_volume(metrics))  # as metrics.json's threshold was chosen
    seconds = time.perf_counter() - started
    found_cm3 = [round(voxels * TWIN_VOXEL_CM3, 4) for voxels, _ in findings]
    references = [tumour_free_reference(metrics, cm3, called) for cm3, (_, called) in zip(found_cm3, findings)]
    false_tumours = [cm3 for cm3 in found_cm3 if cm3 > 0]
    called_tumour = int(sum(called for _, called in findings))
    specificity = 1 - called_tumour / brains
    return {
        "what": "tumour-free synthetic brains no split holds, through evaluate's volume inference and clean-up; "
                "how many the model leaves with a false tumour, how many it calls tumour, and how many of the false "
                "tumours its tumour_free_reference (from metrics.json) calls no larger than a false one",
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
        "data_seed": settings.seed, "patients": [first, first + brains - 1],
        "checkpoint_sha256": (metrics.get("model") or {}).get("checkpoint_sha256"),
        "reference": metrics.get("tumour_free_volumes"),
        "brains": brains, "with_predicted_tumour": len(false_tumours),
        "called_tumour": called_tumour,
        # the volume decision's specificity on these brains, with its Wilson interval over them
        "specificity": specificity, "specificity_ci95": wilson_interval(specificity, brains),
        "false_tumour_cm3": sorted(false_tumours),
        "false_tumour_cm3_median": float(np.median(false_tumours)) if false_tumours else 0.0,
        "within_reference": int(sum(bool(r and r["finding_within"]) for r in references)),
        "seconds_per_brain": round(seconds / max(brains, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brains", type=int, default=20, help="tumour-free brains to render")
    parser.add_argument("--first", type=int, help="the first patient number (default: the first past the data set)")
    parser.add_argument("--record", help="also write the result into reports/bench.json under this key")
    args = parser.parse_args()
    result = run(args.brains, args.first)
    print(json.dumps(result, indent=2))
    if args.record:
        report_path = REPO / "reports" / "bench.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        report_path.write_text(json.dumps(report | {args.record: result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
