"""BraTS slices scored alone or in their volume (`evaluate.slices_in_volume`), decided on validation.

Usage: .venv/bin/python -m bench.bench_slices_in_volume --workdir DIR [--checkpoints CKPTS] [--seeds 42 1 2 3 4]
       .venv/bin/python -m bench.bench_slices_in_volume --project DIR [--seeds ...]

DIR is a validation sweep's folder (`bench.bench_val_sweep --workdir DIR`: one project per seed, its last recipe's
checkpoints/joint/best.pt, or CKPTS/seed-N.pt when given) or a project a seed sweep kept (each seed's experiment
applied in turn). Nothing is retrained: both rules score the same weights, with evaluation's own code
(`predict_split`), the mask threshold chosen on validation as evaluate chooses it.

  alone      each slice's fused score as the model gives it (the shipped rule)
  in_volume  a BraTS slice's fused score read after its patient's volume clean-up (`scores_in_volume`), as
             /v1/predict/volume answers it; photos as predicted

Chosen on VALIDATION: ROC-AUC (all slices, BraTS, photos) and `acc_cv`, the accuracy at a Youden threshold chosen on
one random half of the validation patients and scored on the other (40 halvings x 2). The test figures at the Youden
threshold of the whole validation split (one for every input; evaluate judges photos at the lone-slice threshold
since 2026-12-05) are printed beside them, not chosen on, with
the test split's WT slice and volume Dice at the chosen mask threshold (the same under both rules).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.bench_slice_score import (apply_experiment, halved_accuracy, kept_sweep_arguments, roc_aucs, split_of,
                                     test_figures)

RULES = ("alone", "in_volume")


def seed_report(checkpoint: Path, project: Path, seed: int) -> dict:
    """Each rule's validation and test figures for one checkpoint, from one prediction pass per split, as evaluate
    makes them: the validation pass fills the tally the mask threshold is chosen from and records every candidate
    cut's in-volume scores (`InVolumeCandidates`), and the test pass records them at the chosen cut."""
    from tasks.config import load_settings
    from tasks.evaluation.scoring import InVolumeCandidates, MaskThresholdTally, choose_mask_threshold, predict_split
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import TorchPredictor

    model, _ = load_model(checkpoint)
    predictor = TorchPredictor(model, slice_score=load_settings(project / "params.yaml").evaluate.slice_score)
    val_split, test_split = split_of(project, "val"), split_of(project, "test")
    tally = MaskThresholdTally()
    val_candidates = InVolumeCandidates(len(val_split[1]), tally.candidates)
    val_alone = predict_split(predictor, *val_split, segmentation=False, tally=tally, candidates=val_candidates,
                              description="validation")
    cut = choose_mask_threshold(tally.table())
    test_candidates = InVolumeCandidates(len(test_split[1]), (cut,))
    test_alone = predict_split(predictor, *test_split, segmentation=True, mask_threshold=cut,
                               candidates=test_candidates, description="test")
    val = {"alone": val_alone, "in_volume": val_candidates.at(val_alone, cut)}
    test = {"alone": test_alone, "in_volume": test_candidates.at(test_alone, cut)}
    report = {"mask_threshold": cut}
    for rule in RULES:
        report[rule] = {"validation": roc_aucs(val[rule].slices) | {"acc_cv": halved_accuracy(val[rule].slices, seed)},
                        "test": test_figures(val[rule].slices, test[rule].slices)}
    # the masks do not depend on the rule: the segmentation figures evaluate reports, for the record
    report["test_segmentation"] = {"slice_dice": float(test_alone.slice_scores["dice"].mean()),
                                   "volume_dice": float(test_alone.volume_scores["dice"].mean())}
    return report


def main() -> None:
    def options(parser):
        parser.add_argument("--checkpoints", type=Path, help="seed-N.pt per seed, instead of each project's own")

    args = kept_sweep_arguments(__doc__.splitlines()[0], options, or_workdir=True)
    from bench.bench_seeds import cpu_description

    per_seed = {}
    for seed in args.seeds:
        if args.project is not None:
            apply_experiment(args.project, seed)
        project = args.project or args.workdir / f"seed-{seed}"
        checkpoint = (args.checkpoints.resolve() / f"seed-{seed}.pt" if args.checkpoints
                      else project / "checkpoints" / "joint" / "best.pt")
        per_seed[str(seed)] = seed_report(checkpoint, project, seed)
        print(f"seed {seed}: " + json.dumps(per_seed[str(seed)]), flush=True)
    means = {rule: {part: {key: statistics.mean(s[rule][part][key] for s in per_seed.values())
                           for key in next(iter(per_seed.values()))[rule][part]}
                    for part in ("validation", "test")} for rule in RULES}
    means["test_segmentation"] = {key: statistics.mean(s["test_segmentation"][key] for s in per_seed.values())
                                  for key in ("slice_dice", "volume_dice")}
    print(json.dumps({"cpu": cpu_description(), "seeds": args.seeds, "per_seed": per_seed, "means": means}, indent=1))


if __name__ == "__main__":
    main()
