"""What a slice's tumour probability should be made of: the classifier alone or fused with the segmentation head.

Usage: .venv/bin/python -m bench.bench_slice_score --project DIR [--seeds 42 1 2 3 4]

DIR is a project a seed sweep kept (`bench.bench_seeds --keep DIR`): each seed's experiment is applied in turn
(`dvc exp apply seed-N`: its data, split and checkpoints), and its shipped checkpoint (`checkpoints/joint/best.pt`)
scores the validation and the test split under each rule of `evaluate.slice_score`, with evaluation's own code.
Nothing is retrained, so both rules see the same weights.

The choice is made on VALIDATION: ROC-AUC (all slices, BraTS slices, photos) and the accuracy at a Youden threshold
chosen on one random half of the validation patients and scored on the other (HALVINGS halvings; a photo is its own
patient). The test figures (accuracy, sensitivity at the Youden threshold of the whole validation split, as
evaluate chooses it) are reported beside them, not chosen on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv" / "bin" / "dvc"
HALVINGS = 40


def split_probabilities(model, project: Path, split: str, rule: str):
    """One row per slice of `split` (manifest columns + probability) under `rule`."""
    from tasks.data.splits import read_split, split_rows
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import TorchPredictor

    processed = project / "data" / "processed"
    rows = split_rows(processed, read_split(split, project / "data" / "splits"))
    return predict_split(TorchPredictor(model, slice_score=rule), processed, rows, segmentation=False,
                         description=f"{split} ({rule})").slices


def roc_aucs(slices) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, part in (("auc", slices), ("auc_brats", slices[slices["source"] == "brats"]),
                       ("auc_photo", slices[slices["source"] == "kaggle"])):
        labels = part["label"].to_numpy()
        out[name] = float(roc_auc_score(labels, part["probability"])) if len(np.unique(labels)) == 2 else float("nan")
    return out


def patient_halvings(slices, seed: int):
    """(tune, score) row masks: HALVINGS random splits of the patients into two halves, each half once each way."""
    rng = np.random.default_rng(seed)
    patients = slices["patient"].unique()
    for _ in range(HALVINGS):
        first = set(rng.permutation(patients)[: len(patients) // 2])
        chosen = slices["patient"].isin(first).to_numpy()
        yield from ((chosen, ~chosen), (~chosen, chosen))


def halved_accuracy(slices, seed: int) -> float:
    """Mean accuracy over random patient halvings: Youden's threshold from one half, scored on the other."""
    from tasks.evaluation.metrics import choose_threshold

    labels, probability = slices["label"].to_numpy(), slices["probability"].to_numpy()
    scores = []
    for tune, score in patient_halvings(slices, seed):
        if len(np.unique(labels[tune])) < 2:
            continue
        threshold = choose_threshold(labels[tune], probability[tune], "youden")
        scores.append(float(((probability[score] >= threshold) == labels[score].astype(bool)).mean()))
    return statistics.mean(scores)


def kept_sweep_arguments(description: str) -> argparse.Namespace:
    """--project (a kept seed sweep) and --seeds, the arguments of every study run on a kept sweep."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--project", type=Path, required=True,
                        help="a project kept by a seed sweep (python -m bench --only seeds --keep-seeds DIR)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    args = parser.parse_args()
    args.project = args.project.resolve()
    sys.path.insert(0, str(REPO))
    return args


def test_figures(val, test) -> dict[str, float]:
    """Accuracy and sensitivity on test at the threshold evaluate would choose (Youden on the whole validation)."""
    from tasks.evaluation.metrics import choose_threshold, classification_metrics

    threshold = choose_threshold(val["label"].to_numpy(), val["probability"].to_numpy(), "youden")
    figures = classification_metrics(test["label"].to_numpy(), test["probability"].to_numpy(), threshold)
    photo = test[test["source"] == "kaggle"]
    brats = test[test["source"] == "brats"]
    return {"threshold": threshold, "accuracy": figures["accuracy"], "sensitivity": figures["sensitivity"],
            "roc_auc": figures["roc_auc"],
            "brats_accuracy": float(((brats["probability"] >= threshold) == brats["label"].astype(bool)).mean()),
            "photo_accuracy": float(((photo["probability"] >= threshold) == photo["label"].astype(bool)).mean())}


def apply_experiment(project: Path, seed: int) -> None:
    """Bring seed N's experiment (data, split, checkpoints) into `project`'s workspace."""
    done = subprocess.run([str(DVC), "exp", "apply", f"seed-{seed}"], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dvc exp apply seed-{seed} failed in {project}:\n{done.stderr[-2000:]}")


def seed_report(project: Path, seed: int, rules: tuple[str, ...]) -> dict:
    from tasks.inference.checkpoints import load_model

    apply_experiment(project, seed)
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    report = {}
    for rule in rules:
        val, test = (split_probabilities(model, project, split, rule) for split in ("val", "test"))
        report[rule] = {"validation": roc_aucs(val) | {"acc_cv": halved_accuracy(val, seed)},
                        "test": test_figures(val, test)}
    return report


def main() -> None:
    args = kept_sweep_arguments(__doc__.splitlines()[0])
    from bench.bench_seeds import cpu_description
    from tasks.inference.predictor import SLICE_SCORES

    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = seed_report(args.project, seed, SLICE_SCORES)
        print(f"seed {seed}: " + json.dumps(per_seed[str(seed)]), flush=True)
    means = {rule: {part: {key: statistics.mean(s[rule][part][key] for s in per_seed.values())
                           for key in next(iter(per_seed.values()))[rule][part]}
                    for part in ("validation", "test")} for rule in SLICE_SCORES}
    lowest_test_accuracy = {rule: min(s[rule]["test"]["accuracy"] for s in per_seed.values()) for rule in SLICE_SCORES}
    print(json.dumps({"cpu": cpu_description(), "seeds": args.seeds, "per_seed": per_seed, "means": means,
                      "lowest_test_accuracy": lowest_test_accuracy}, indent=1))


if __name__ == "__main__":
    main()
