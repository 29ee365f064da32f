"""Which rule should choose the slice classifier's decision threshold on validation: compared on VALIDATION only.

Usage: .venv/bin/python -m bench.bench_threshold_rule (--project DIR | --workdir DIR) [--seeds 42 1 2 3 4]

--project: a project a seed sweep kept (`python -m bench --only seeds --keep-seeds DIR`); --workdir: the folder of a
validation sweep (`bench.bench_val_sweep --workdir DIR`), one project per seed, each holding its last recipe's
checkpoints (how `threshold_rule_bagged_val_amx` was measured on the `dice_over: both` models). Each seed's checkpoint
scores its validation and test slices once (the shipped `evaluate.slice_score`); then each rule of RULES (shipped
`evaluate.threshold_rule` choices and candidates) is judged as `bench.bench_slice_score` judges slice scores: its
threshold chosen on one random half of the validation patients and scored on the other half (a photo is its own
patient), over many halvings, each half holding both classes. A threshold fitted to a handful of validation
patients is noisy; this measures how well each rule's choice carries over to patients it did not see, without
looking at test. The test figures at the threshold each rule picks on the whole validation split are printed
beside, not chosen on.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from bench.bench_slice_score import apply_experiment, kept_sweep_arguments, patient_halvings, split_probabilities

DEFAULT_CUT = 0.5
BOOTSTRAPS = 200


def shipped(rule: str):
    """An `evaluate.threshold_rule` as evaluate applies it (fixed: its default cut, 0.5)."""
    def choose(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None) -> float:
        from tasks.evaluation.metrics import choose_threshold

        return choose_threshold(labels, probabilities, rule, fixed=DEFAULT_CUT)
    return choose


def bootstrap_median(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray) -> float:
    """The median of Youden's thresholds over BOOTSTRAPS resamples of the patients, drawn with replacement (bagging:
    the argmax of a J curve measured on a handful of patients jumps with which patients happen to be there)."""
    from tasks.evaluation.metrics import choose_threshold

    rng = np.random.default_rng(0)
    rows = {patient: np.flatnonzero(patients == patient) for patient in np.unique(patients)}
    cuts = []
    for _ in range(BOOTSTRAPS):
        drawn = np.concatenate([rows[p] for p in rng.choice(list(rows), len(rows), replace=True)])
        if len(np.unique(labels[drawn])) == 2:
            cuts.append(choose_threshold(labels[drawn], probabilities[drawn], "youden"))
    return float(np.median(cuts))


def midpoint(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None) -> float:
    """Halfway between Youden's threshold and the untuned 0.5 (a shrinkage towards the default)."""
    return (shipped("youden")(labels, probabilities) + DEFAULT_CUT) / 2


def best_accuracy(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None) -> float:
    """The threshold of the highest accuracy at the validation split's own class balance (highest among ties)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    positives = int(labels.sum())
    return float(min(thresholds[int(np.argmax(tpr * positives + (1 - fpr) * (len(labels) - positives)))], 1.0))


def youden_one_error(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None) -> float:
    """Of the thresholds whose Youden J is within one binomial standard error of the best, the one nearest 0.5: a
    flat J curve measured on a few patients should not move the cut far from the untuned default."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    j = tpr - fpr
    top = int(np.argmax(j))
    positives = int(labels.sum())
    error = np.sqrt(tpr[top] * (1 - tpr[top]) / positives + fpr[top] * (1 - fpr[top]) / (len(labels) - positives))
    near = np.flatnonzero(j >= j[top] - error - 1e-12)
    cuts = np.minimum(thresholds[near], 1.0)
    return float(cuts[np.argmin(np.abs(cuts - DEFAULT_CUT))])


RULES = {"fixed": shipped("fixed"), "youden": shipped("youden"), "accuracy": best_accuracy,
         "youden_1se": youden_one_error, "bootstrap_median": bootstrap_median, "midpoint": midpoint}


def halved_figures(slices, seed: int, rule: str) -> dict[str, float]:
    """Mean accuracy, sensitivity and specificity over random patient halvings: `rule`'s threshold from one half,
    scored on the other."""
    from tasks.evaluation.metrics import classification_metrics

    labels, probability = slices["label"].to_numpy(), slices["probability"].to_numpy()
    patients = slices["patient"].to_numpy()
    figures: dict[str, list[float]] = {"accuracy": [], "sensitivity": [], "specificity": []}
    for tune, score in patient_halvings(slices, seed):
        if len(np.unique(labels[tune])) < 2 or len(np.unique(labels[score])) < 2:
            continue
        threshold = RULES[rule](labels[tune], probability[tune], patients[tune])
        scored = classification_metrics(labels[score], probability[score], threshold)
        for key, values in figures.items():
            values.append(scored[key])
    return {key: statistics.mean(values) for key, values in figures.items()}


def test_figures(val, test, rule: str) -> dict[str, float]:
    """The test figures at the rule's threshold, one for every input (photos included)."""
    from tasks.evaluation.metrics import classification_metrics

    threshold = RULES[rule](val["label"].to_numpy(), val["probability"].to_numpy(), val["patient"].to_numpy())
    figures = classification_metrics(test["label"].to_numpy(), test["probability"].to_numpy(), threshold)
    return {"threshold": threshold, "accuracy": figures["accuracy"], "sensitivity": figures["sensitivity"],
            "specificity": figures["specificity"]}


def seed_report(project: Path, seed: int, slice_score: str, kept_sweep: bool) -> dict:
    """`project`: a kept seed sweep (seed N's experiment is applied first), or a validation sweep's seed-N folder."""
    from tasks.inference.checkpoints import load_model

    if kept_sweep:
        apply_experiment(project, seed)
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    val, test = (split_probabilities(model, project, split, slice_score) for split in ("val", "test"))
    return {rule: {"validation_halves": halved_figures(val, seed, rule), "test": test_figures(val, test, rule)}
            for rule in RULES}


def main() -> None:
    args = kept_sweep_arguments(__doc__.splitlines()[0], or_workdir=True)
    from bench.bench_seeds import cpu_description
    from tasks.config import load_settings

    def project_of(seed: int) -> Path:
        return args.project if args.project is not None else args.workdir / f"seed-{seed}"

    slice_score = load_settings(project_of(args.seeds[0]) / "params.yaml").evaluate.slice_score
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = seed_report(project_of(seed), seed, slice_score, kept_sweep=args.project is not None)
        print(f"seed {seed}: " + json.dumps(per_seed[str(seed)]), flush=True)
    rules = next(iter(per_seed.values()))
    summary = {rule: {part: {key: {"mean": statistics.mean(s[rule][part][key] for s in per_seed.values()),
                                   "min": min(s[rule][part][key] for s in per_seed.values())}
                             for key in rules[rule][part]}
                      for part in ("validation_halves", "test")} for rule in rules}
    print(json.dumps({"cpu": cpu_description(), "seeds": args.seeds, "slice_score": slice_score,
                      "per_seed": per_seed, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
