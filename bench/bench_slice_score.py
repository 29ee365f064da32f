"""What a slice's tumour probability should be made of: the classifier alone or fused with the segmentation head.

Usage: .venv/bin/python -m bench.bench_slice_score --project DIR [--seeds 42 1 2 3 4] [--pixel-ranks K ...]
       [--flips]

DIR is a project a seed sweep kept (`bench.bench_seeds --keep DIR`): each seed's experiment is applied in turn
(`dvc exp apply seed-N`: its data, split and checkpoints), and its shipped checkpoint (`checkpoints/joint/best.pt`)
scores the validation and the test split under each rule of `evaluate.slice_score`, with evaluation's own code.
Nothing is retrained, so both rules see the same weights.

The choice is made on VALIDATION: ROC-AUC (all slices, BraTS slices, photos) and the accuracy at a Youden threshold
chosen on one random half of the validation patients and scored on the other (HALVINGS halvings; a photo is its own
patient). The test figures (accuracy, sensitivity at the Youden threshold of the whole validation split, as
evaluate chooses it) are reported beside them, not chosen on.

Two more questions, on the same predictions (`--pixel-ranks`, `--flips`):
  --pixel-ranks 1 5 20   the fused score with the k-th largest whole-tumour pixel probability instead of the largest
                         (k = 1 is `fused`): is one stray pixel what makes a tumour-free slice look positive?
  --flips                everything again with left-right flip TTA (the slices and their mirror images averaged, as
                         `tasks/inference/volume.py` does for volumes), with the WT Dice per tumour slice and per
                         re-stacked volume at the 0.5 cut beside the classification figures.
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


def split_of(project: Path, split: str):
    """The project's processed folder and the manifest rows of `split`."""
    from tasks.data.splits import read_split, split_rows

    processed = project / "data" / "processed"
    return processed, split_rows(processed, read_split(split, project / "data" / "splits"))


def split_probabilities(model, project: Path, split: str, rule: str):
    """One row per slice of `split` (manifest columns + probability) under `rule`."""
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import TorchPredictor

    processed, rows = split_of(project, split)
    return predict_split(TorchPredictor(model, slice_score=rule), processed, rows, segmentation=False,
                         description=f"{split} ({rule})").slices


class RecordingPredictor:
    """A predictor for `predict_split` that runs `flips` TTA (tasks/inference/volume.py) and keeps, call by call, each
    slice's classifier probability and its largest WT pixel probabilities (the `ranks` needed)."""

    def __init__(self, inner, flips, largest: int):
        self.inner, self.flips, self.largest, self.batch_size = inner, flips, largest, inner.batch_size
        self.classifier: list[np.ndarray] = []
        self.top_pixels: list[np.ndarray] = []

    def predict(self, images):
        from tasks.inference.volume import predict_slices_tta

        prediction = predict_slices_tta(self.inner, images, self.flips)
        pixels = prediction.mask_probability.reshape(len(prediction), -1)
        self.classifier.append(prediction.classifier_probability)
        self.top_pixels.append(-np.sort(-pixels, axis=1)[:, : self.largest])
        return prediction


def split_predictions(model, project: Path, split: str, flips, largest: int):
    """`split`'s `SplitPredictions` (masks cut at 0.5) and, in its rows' order, the classifier probabilities and the
    `largest` largest WT pixel probabilities of each slice."""
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.predictor import TorchPredictor

    processed, rows = split_of(project, split)
    recorder = RecordingPredictor(TorchPredictor(model, slice_score="fused"), flips, largest)
    predicted = predict_split(recorder, processed, rows, segmentation=True, description=f"{split} {flips}")
    # the recorder saw the rows shard by shard, in predict_split's order (groupby shard, sort=False): put them back
    order = np.concatenate([group.index.to_numpy() for _, group in rows.groupby("shard", sort=False)])
    classifier, top = np.empty(len(rows), np.float32), np.empty((len(rows), largest), np.float32)
    classifier[order], top[order] = np.concatenate(recorder.classifier), np.concatenate(recorder.top_pixels)
    return predicted, classifier, top


def slice_scores(classifier: np.ndarray, top: np.ndarray, ranks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Each candidate slice score: the classifier alone, and its mean with the k-th largest WT pixel probability (in
    float32, as `slice_probability` makes `fused`: the same thresholds to the last bit)."""
    return {"classifier": classifier} | {("fused" if k == 1 else f"fused_pixel_{k}"): (classifier + top[:, k - 1]) / 2
                                         for k in ranks}


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


def kept_sweep_arguments(description: str, more=None, or_workdir: bool = False) -> argparse.Namespace:
    """--project (a kept seed sweep) and --seeds, the arguments of every study run on a kept sweep; `more(parser)`
    adds a study's own. `or_workdir`: a validation sweep's folder (--workdir, one project per seed) instead."""
    parser = argparse.ArgumentParser(description=description)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--project", type=Path,
                       help="a project kept by a seed sweep (python -m bench --only seeds --keep-seeds DIR)")
    if or_workdir:
        where.add_argument("--workdir", type=Path, help="a validation sweep's folder (bench.bench_val_sweep --workdir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    if more is not None:
        more(parser)
    args = parser.parse_args()
    args.project = args.project.resolve() if args.project is not None else None
    if or_workdir and args.workdir is not None:
        args.workdir = args.workdir.resolve()
    sys.path.insert(0, str(REPO))
    return args


def test_figures(val, test) -> dict[str, float]:
    """Accuracy and sensitivity on test at Youden's threshold on the whole validation, one threshold for every input
    (evaluate, since 2026-12-05, judges the photos at the lone-slice threshold instead)."""
    from tasks.evaluation.metrics import choose_threshold, classification_metrics

    threshold = choose_threshold(val["label"].to_numpy(), val["probability"].to_numpy(), "youden")
    figures = classification_metrics(test["label"].to_numpy(), test["probability"].to_numpy(), threshold)
    photo = test[test["source"] == "kaggle"]
    brats = test[test["source"] == "brats"]
    return {"threshold": threshold, "accuracy": figures["accuracy"], "sensitivity": figures["sensitivity"],
            "roc_auc": figures["roc_auc"],
            "brats_accuracy": float(((brats["probability"] >= threshold) == brats["label"].astype(bool)).mean()),
            "photo_accuracy": float(((photo["probability"] >= threshold) == photo["label"].astype(bool)).mean())}


def apply_experiment(project: Path, seed: int | str) -> None:
    """Bring seed N's experiment, or the one named so (data, split, checkpoints), into `project`'s workspace."""
    name = seed if isinstance(seed, str) else f"seed-{seed}"
    done = subprocess.run([str(DVC), "exp", "apply", name], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dvc exp apply {name} failed in {project}:\n{done.stderr[-2000:]}")


def experiments(project: Path) -> list[str]:
    """The names of a kept sweep's DVC experiments (seed-N), as `dvc exp list` gives them."""
    listed = subprocess.run([str(DVC), "exp", "list"], cwd=project, capture_output=True, text=True, check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in listed.splitlines() if "[" in line]


def seed_report(project: Path, seed: int, ranks: tuple[int, ...] = (1,), flip_sets=None) -> dict:
    """Every slice score of `ranks` under each of `flip_sets` ((name suffix, flips); default: the slices as they are)."""
    from tasks.inference.checkpoints import load_model
    from tasks.inference.volume import NO_TTA

    apply_experiment(project, seed)
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    report = {}
    for suffix, flips in flip_sets or (("", NO_TTA),):
        parts = {split: split_predictions(model, project, split, flips, max(ranks)) for split in ("val", "test")}
        scores = {split: slice_scores(classifier, top, ranks) for split, (_, classifier, top) in parts.items()}
        for rule in scores["val"]:
            val, test = (parts[split][0].slices.assign(probability=scores[split][rule]) for split in ("val", "test"))
            report[rule + suffix] = {"validation": roc_aucs(val) | {"acc_cv": halved_accuracy(val, seed)},
                                     "test": test_figures(val, test)}
        report[f"masks at 0.5{suffix}"] = {
            part: {"slice_dice": float(parts[split][0].slice_scores["dice"].mean()),
                   "volume_dice": float(parts[split][0].volume_scores["dice"].mean())}
            for part, split in (("validation", "val"), ("test", "test"))}
    return report


def main() -> None:
    args = kept_sweep_arguments(__doc__.splitlines()[0], study_options)
    from bench.bench_seeds import cpu_description

    ranks = tuple(sorted(set(args.pixel_ranks) | {1}))
    from tasks.inference.volume import NO_TTA

    flip_sets = (("", NO_TTA),) + (((" + left-right flip TTA", ((), (3,))),) if args.flips else ())
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = seed_report(args.project, seed, ranks, flip_sets)
        print(f"seed {seed}: " + json.dumps(per_seed[str(seed)]), flush=True)
    first = next(iter(per_seed.values()))
    means = {rule: {part: {key: statistics.mean(s[rule][part][key] for s in per_seed.values())
                           for key in first[rule][part]}
                    for part in ("validation", "test")} for rule in first}
    lowest_test_accuracy = {rule: min(s[rule]["test"]["accuracy"] for s in per_seed.values())
                            for rule in first if "accuracy" in first[rule]["test"]}
    print(json.dumps({"cpu": cpu_description(), "seeds": args.seeds, "per_seed": per_seed, "means": means,
                      "lowest_test_accuracy": lowest_test_accuracy}, indent=1))


def study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pixel-ranks", type=int, nargs="+", default=[1], metavar="K",
                        help="fused scores with the K-th largest WT pixel probability (1: the shipped `fused`)")
    parser.add_argument("--flips", action="store_true", help="also with left-right flip TTA")


if __name__ == "__main__":
    main()
