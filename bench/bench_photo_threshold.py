"""Should the Kaggle-style photos get a decision threshold of their own? Scored on kept seed sweeps.

Usage: .venv/bin/python -m bench.bench_photo_threshold --project DIR [--project DIR ...] [--out results.json]

A project is a copy kept by `python -m bench --only seeds --keep-seeds DIR`; each of its DVC experiments is one
trained quick model. Per model, the photos of the validation and the test split are scored with the slice score its
evaluate used, and three thresholds are compared:
    evaluate   `classification_threshold.value` of its metrics.json: chosen on the validation slices with the BraTS
               slices scored in their volume (what evaluate judged the test photos at before `photos_at` existed)
    lone       `classification_threshold.lone_slice_value`: chosen on the validation slices each scored alone;
               serving's slice route (/v1/predict) applies it to every upload, photos included, and evaluation judges
               the test photos at it since 2026-12-05 (`classification_threshold.photos_at`)
    own        Youden's threshold on the validation photos alone
The choice is made on VALIDATION: on each of bench_slice_score's HALVINGS halvings of the validation photos (each
photo its own unit), `own` chosen on one half and `lone` chosen again by evaluate's rule on the validation MRI
slices with that same half of the photos, both scored on the other half; and `lone` against `evaluate` on all of
them. The test accuracies are reported beside. (Until 2026-12-06 the halves were scored at the recorded `lone`,
which evaluate had chosen on every validation photo, the scored half included: a comparison tilted towards it.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def photo_scores(project: Path) -> dict:
    """The applied experiment's photos of both splits: labels and fused probabilities, and its two thresholds."""
    from bench.bench_slice_score import split_probabilities
    from tasks.config import load_settings
    from tasks.inference.checkpoints import load_model

    decision = json.loads((project / "reports" / "metrics.json").read_text())["classification_threshold"]
    if "lone_slice_value" not in decision:
        raise SystemExit(f"{project}: its metrics.json has no lone_slice_value (an evaluate from before it existed)")
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    cfg = load_settings(project / "params.yaml").evaluate
    out = {"evaluate": decision["value"], "lone": decision["lone_slice_value"],
           "rule": {"rule": cfg.threshold_rule, "target_sensitivity": cfg.target_sensitivity,
                    "fixed": cfg.fixed_threshold}}
    for split in ("val", "test"):
        slices = split_probabilities(model, project, split, cfg.slice_score)  # each alone, as evaluate's lone rule
        photos = slices[slices["source"] == "kaggle"]
        out[split] = {"labels": photos["label"].astype(int).tolist(), "p": photos["probability"].tolist()}
        if split == "val":  # the MRI slices the lone threshold is chosen on with the photos
            mri = slices[slices["source"] != "kaggle"]
            out["val_mri"] = {"labels": mri["label"].astype(int).tolist(), "p": mri["probability"].tolist()}
    return out


def compare(scores: dict) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from bench.bench_slice_score import patient_halvings
    from tasks.evaluation.metrics import choose_threshold

    def accuracy(p, labels, threshold) -> float:
        return float(((p >= threshold) == labels.astype(bool)).mean())

    val_labels, val_p = np.array(scores["val"]["labels"]), np.array(scores["val"]["p"])
    test_labels, test_p = np.array(scores["test"]["labels"]), np.array(scores["test"]["p"])
    mri_labels, mri_p = np.array(scores["val_mri"]["labels"]), np.array(scores["val_mri"]["p"])
    rule = scores["rule"]
    units = pd.DataFrame({"patient": [f"photo-{i}" for i in range(len(val_labels))]})
    own, lone = [], []
    for tune, score in patient_halvings(units, 0):
        if len(np.unique(val_labels[tune])) < 2:
            continue
        own.append(accuracy(val_p[score], val_labels[score], choose_threshold(val_labels[tune], val_p[tune], "youden")))
        # chosen as evaluate chooses it, on what it would have seen: the MRI slices and the tuning half's photos
        lone_here = choose_threshold(np.concatenate([mri_labels, val_labels[tune]]),
                                     np.concatenate([mri_p, val_p[tune]]), rule["rule"],
                                     rule["target_sensitivity"], rule["fixed"])
        lone.append(accuracy(val_p[score], val_labels[score], lone_here))
    if not own:
        raise ValueError("no halving of the validation photos has both classes in its tuning half")
    own_threshold = choose_threshold(val_labels, val_p, "youden")
    return {"val_photos": len(val_labels), "test_photos": len(test_labels),
            "val_roc_auc": float(roc_auc_score(val_labels, val_p)),
            "test_roc_auc": float(roc_auc_score(test_labels, test_p)),
            "val_accuracy_evaluate": accuracy(val_p, val_labels, scores["evaluate"]),
            "val_accuracy_lone": accuracy(val_p, val_labels, scores["lone"]),
            "val_halves_accuracy_own": statistics.mean(own), "val_halves_accuracy_lone": statistics.mean(lone),
            "test_accuracy_evaluate": accuracy(test_p, test_labels, scores["evaluate"]),
            "test_accuracy_lone": accuracy(test_p, test_labels, scores["lone"]),
            "test_accuracy_own": accuracy(test_p, test_labels, own_threshold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/slicewise-photo-threshold.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    per_model = {}
    from bench.bench_slice_score import apply_experiment, experiments

    for project in (p.resolve() for p in args.project):
        for name in experiments(project):
            apply_experiment(project, name)
            per_model[f"{project.name}/{name}"] = compare(photo_scores(project))
            print(project.name, name, {k: round(v, 3) for k, v in per_model[f"{project.name}/{name}"].items()},
                  flush=True)
    keys = next(iter(per_model.values())).keys()
    summary = {key: statistics.mean(row[key] for row in per_model.values()) for key in keys}
    summary["val_roc_auc_range"] = [min(r["val_roc_auc"] for r in per_model.values()),
                                    max(r["val_roc_auc"] for r in per_model.values())]
    summary["own_beats_lone_on_validation"] = sum(row["val_halves_accuracy_own"] > row["val_halves_accuracy_lone"]
                                                  for row in per_model.values())
    summary["lone_beats_evaluate_on_validation"] = sum(row["val_accuracy_lone"] > row["val_accuracy_evaluate"]
                                                       for row in per_model.values())
    summary["lone_below_evaluate_on_validation"] = sum(row["val_accuracy_lone"] < row["val_accuracy_evaluate"]
                                                       for row in per_model.values())
    summary["models"] = len(per_model)
    args.out.write_text(json.dumps({"summary": summary, "per_model": per_model}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
