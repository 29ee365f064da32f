"""Which rule should cut the segmentation masks (`evaluate.mask_threshold`): compared on VALIDATION only.

Usage: .venv/bin/python -m bench.bench_mask_rule --project DIR [--seeds 42 1 2 3 4]

DIR is a project a seed sweep kept (`python -m bench --only seeds --keep-seeds DIR`). Each seed's shipped checkpoint
predicts its validation patients once, and every candidate cut of `MaskThresholdTally` is scored per patient (WT
Dice per tumour slice, and per re-stacked, cleaned-up volume, as evaluate scores them). Then each rule picks a cut
on one random half of the validation patients and is scored on the other half, over many halvings (as
`bench.bench_slice_score` judges slice scores): the validation curve is flat and the cut evaluate chooses moves
from 0.3 to 0.8 between seeds, so the question is whether choosing it on a few patients beats the untuned 0.5.
The score of a half is the objective evaluate maximises: the mean of its slice Dice and its volume Dice.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from bench.bench_slice_score import apply_experiment, kept_sweep_arguments, patient_halvings


class PerPatientTally:
    """A `MaskThresholdTally` per validation patient (predict_split feeds one patient per call)."""

    def __init__(self):
        from tasks.evaluation.scoring import MaskThresholdTally

        self.new_tally = MaskThresholdTally
        self.patients: list = []

    def add(self, *args, **kwargs) -> dict:
        tally = self.new_tally()
        self.patients.append(tally)
        return tally.add(*args, **kwargs)


def pooled_table(tallies: list) -> pd.DataFrame:
    """The `MaskThresholdTally.table()` of these patients together: slice Dice pooled over their tumour slices,
    volume Dice over the patients."""
    candidates = tallies[0].candidates
    return pd.DataFrame({
        "threshold": list(candidates),
        "slice_dice": [np.mean([d for t in tallies for d in t.slice_dice[c]] or [np.nan]) for c in candidates],
        "volume_dice": [np.mean([d for t in tallies for d in t.volume_dice[c]]) for c in candidates],
    })


def objective(table: pd.DataFrame) -> pd.Series:
    """What evaluate's choice maximises (tasks/evaluation/scoring.py, choose_mask_threshold)."""
    return (table["slice_dice"] + table["volume_dice"]) / 2


def one_error_nearest_default(table: pd.DataFrame, per_patient: list[pd.DataFrame]) -> float:
    """Of the cuts whose objective is within one standard error (over the patients) of the best, the one nearest
    0.5."""
    from tasks.evaluation.metrics import MASK_THRESHOLD

    pooled = objective(table)
    best = int(pooled.idxmax())
    at_best = [objective(p).iloc[best] for p in per_patient]
    error = float(np.nanstd(at_best, ddof=1) / np.sqrt(len(at_best))) if len(at_best) > 1 else 0.0
    near = table.loc[pooled >= pooled.iloc[best] - error - 1e-12, "threshold"].to_numpy()
    return float(near[np.argmin(np.abs(near - MASK_THRESHOLD))])


def rules() -> dict:
    """Rule name → cut from (the pooled table of the patients it may look at, their tables one by one)."""
    from tasks.evaluation.metrics import MASK_THRESHOLD
    from tasks.evaluation.scoring import choose_mask_threshold

    return {"validation": lambda table, per_patient: choose_mask_threshold(table),
            "fixed": lambda table, per_patient: MASK_THRESHOLD,
            "validation_1se": one_error_nearest_default}


def halved_scores(tallies: list, per_patient: list[pd.DataFrame], seed: int) -> dict[str, dict[str, float]]:
    """Per rule: mean slice Dice, volume Dice and their mean on the held-out halves, and the cuts it picked.
    `per_patient`: `pooled_table([tally])` of each tally, made once."""
    candidates = rules()
    patients = pd.DataFrame({"patient": range(len(tallies))})
    found: dict[str, dict[str, list[float]]] = {name: {"slice_dice": [], "volume_dice": [], "objective": [],
                                                       "cut": []} for name in candidates}
    for tune, score in patient_halvings(patients, seed):
        score_table = pooled_table([t for t, chosen in zip(tallies, score) if chosen]).set_index("threshold")
        table = pooled_table([t for t, chosen in zip(tallies, tune) if chosen])
        tune_tables = [p for p, chosen in zip(per_patient, tune) if chosen]
        for name, rule in candidates.items():
            cut = rule(table, tune_tables)
            row = score_table.loc[cut]
            if np.isnan(row["slice_dice"]):
                continue  # a half without a tumour slice scores nothing
            for key, value in (("slice_dice", row["slice_dice"]), ("volume_dice", row["volume_dice"]),
                               ("objective", (row["slice_dice"] + row["volume_dice"]) / 2), ("cut", cut)):
                found[name][key].append(float(value))
    return {name: {key: statistics.mean(values) for key, values in figures.items()} for name, figures in found.items()}


def seed_report(project: Path, seed: int) -> dict:
    from tasks.config import load_settings
    from tasks.data.splits import read_split, split_rows
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import TorchPredictor

    apply_experiment(project, seed)
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    slice_score = load_settings(project / "params.yaml").evaluate.slice_score
    processed = project / "data" / "processed"
    tally = PerPatientTally()
    predict_split(TorchPredictor(model, slice_score=slice_score), processed,
                  split_rows(processed, read_split("val", project / "data" / "splits")), segmentation=False,
                  description="validation (mask cuts)", tally=tally)
    whole = pooled_table(tally.patients)
    per_patient = [pooled_table([t]) for t in tally.patients]
    return {"patients": len(tally.patients), "halves": halved_scores(tally.patients, per_patient, seed),
            "whole_validation_cut": {name: rule(whole, per_patient) for name, rule in rules().items()}}


def main() -> None:
    args = kept_sweep_arguments(__doc__.splitlines()[0])
    from bench.bench_seeds import cpu_description

    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = seed_report(args.project, seed)
        print(f"seed {seed}: " + json.dumps(per_seed[str(seed)]), flush=True)
    names = list(rules())
    summary = {name: {key: statistics.mean(s["halves"][name][key] for s in per_seed.values())
                      for key in ("slice_dice", "volume_dice", "objective")} for name in names}
    print(json.dumps({"cpu": cpu_description(), "seeds": args.seeds, "per_seed": per_seed, "summary": summary},
                     indent=1))


if __name__ == "__main__":
    main()
