"""How often evaluate's 95 % intervals hold the true mean, by number of test patients: the BCa interval with the
small-sample widening evaluate uses against the plain percentile interval it used before, side by side in one run.

Usage: .venv/bin/python -m bench.bench_intervals [--patients 7 12 20 55] [--trials 400] [--resamples 1000]

Each trial draws that many patients' scores from a known population, and both intervals come from
`tasks.evaluation.metrics.bootstrap_ci` (patients resampled, as evaluate resamples them) on the same draw; coverage
is the share of trials whose interval holds the population's mean. Two populations of per-patient Dice:

    skewed    most patients near 0.9 (Beta(12, 1.5)), one in ten a failure anywhere in 0-0.6: the shape of the
              quick model's test volumes, where a seed loses one patient's tumour to the clean-up (docs/quality.md)
    smooth    Beta(20, 3): no failures, a mild skew

A failure that no test patient shows cannot widen any interval drawn from them (7 patients show none 48 % of the
time at one in ten), so no bootstrap reaches 95 % there; the bench says how far each gets.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tasks.evaluation.metrics import bootstrap_ci, weighted_mean_statistic

METHODS = ("percentile", "bca")


def skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    dice = rng.beta(12, 1.5, n)
    failed = rng.random(n) < 0.1
    dice[failed] = rng.uniform(0, 0.6, int(failed.sum()))
    return dice


def smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.beta(20, 3, n)


POPULATIONS = {"skewed": skewed, "smooth": smooth}


def coverage(population, n_patients: int, trials: int, resamples: int, seed: int) -> dict:
    """Per method: the share of trials whose interval holds the population mean, and the intervals' mean width."""
    rng = np.random.default_rng(seed)
    true_mean = float(population(np.random.default_rng(seed + 1), 2_000_000).mean())
    held = {method: 0 for method in METHODS}
    widths: dict[str, list[float]] = {method: [] for method in METHODS}
    for trial in range(trials):
        dice = population(rng, n_patients)
        statistic = weighted_mean_statistic({"dice": dice})
        for method in METHODS:
            low, high = bootstrap_ci(np.arange(n_patients), statistic, resamples, trial, method=method)["dice"]
            held[method] += low <= true_mean <= high
            widths[method].append(high - low)
    return {method: {"coverage": round(held[method] / trials, 3),
                     "mean_width": round(float(np.mean(widths[method])), 4)}
            for method in METHODS} | {"true_mean": round(true_mean, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[7, 12, 20, 55])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {"trials": args.trials, "resamples": args.resamples, "level": 0.95, "populations": {}}
    for name, population in POPULATIONS.items():
        rows = {}
        for n in args.patients:
            row = coverage(population, n, args.trials, args.resamples, args.seed)
            row["coverage_ratio_bca_over_percentile"] = round(row["bca"]["coverage"] / row["percentile"]["coverage"], 3)
            rows[str(n)] = row
            print(f"{name:8s} {n:3d} patients: coverage percentile {row['percentile']['coverage']:.3f} "
                  f"(width {row['percentile']['mean_width']:.3f}), BCa widened {row['bca']['coverage']:.3f} "
                  f"(width {row['bca']['mean_width']:.3f}), ratio {row['coverage_ratio_bca_over_percentile']:.2f}",
                  flush=True)
        report["populations"][name] = rows
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
