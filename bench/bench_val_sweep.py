"""Compare training recipes on the VALIDATION splits of several seeds, never on test.

Usage: .venv/bin/python -m bench.bench_val_sweep --name NAME [--stages train_seg ...] [--set KEY=VALUE ...]
       [--data-set KEY=VALUE ...] [--seeds 42 1 2 3 4] [--workdir DIR]

The seed sweep (`bench.bench_seeds`) reports test figures, so it must not be what a recipe is chosen on. This is
what one is chosen on: per seed, a copy of the project whose fetch, slice and split ran once (kept in --workdir and
reused by later calls), the given training stages rerun with the overrides, and the last stage's best checkpoint
scored on that seed's validation split with evaluation's own code (`predict_split`): mean WT Dice over the tumour
slices and over the re-stacked patient volumes, accuracy at 0.5, ROC-AUC, and the accuracy at a Youden threshold
chosen on one random half of the validation patients and scored on the other (`accuracy_youden_halves`, the same 40
halvings × 2 for every recipe of a seed: how well evaluate's threshold carries over to patients it was not chosen
on). Pooling five seeds' validation splits (7 BraTS patients each on the 48-patient quick profile) gives 35 patients
instead of 7. Each call appends one JSON line to DIR/results.jsonl and prints it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
STAGE_CHECKPOINT = {"train_seg": "seg", "train_cls": "cls", "train_joint": "joint"}
HALVING_SEED = 0  # the patient halvings of accuracy_youden_halves: the same for every recipe, seed and run


def prepared_project(workdir: Path, seed: int, data_overrides: dict) -> Path:
    """workdir/seed-N with the processed data and the split of seed N (built once, with `data_overrides` applied to
    its params.yaml first: a recipe that changes the data, such as the modalities, needs a workdir of its own)."""
    sys.path.insert(0, str(REPO))
    from tests.project_copy import copy_project, dvc

    project = workdir / f"seed-{seed}"
    if (project / "data" / "splits" / "val.txt").exists():
        return project
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    copy_project(project, tiny=False, seed=seed)  # tracking off
    if data_overrides:
        from tasks.params_edit import set_params

        set_params(data_overrides, project / "params.yaml")
    done = dvc(project, "repro", "split")
    if done.returncode != 0:
        raise SystemExit(f"dvc repro split for seed {seed} failed:\n{done.stderr[-3000:]}")
    return project


def validation_scores(checkpoint: Path, project: Path, patients: list[str] | None = None) -> dict[str, float]:
    """The checkpoint on the project's validation split (or on `patients` of it), scored as `evaluate` scores the
    test split."""
    from sklearn.metrics import roc_auc_score

    from bench.bench_slice_score import halved_accuracy
    from tasks.data.splits import read_split, split_rows
    from tasks.evaluation.scoring import predict_split
    from tasks.inference.checkpoints import load_model
    from tasks.config import load_settings
    from tasks.inference.predictor import TorchPredictor

    processed = project / "data" / "processed"
    model, _ = load_model(checkpoint)
    if patients is None:
        patients = read_split("val", project / "data" / "splits")
    rows = split_rows(processed, patients)
    rule = load_settings(project / "params.yaml").evaluate.slice_score  # slices scored as evaluate scores them
    val = predict_split(TorchPredictor(model, slice_score=rule), processed, rows, segmentation=True,
                        description="validation")
    labels, probability = val.slices["label"].to_numpy(), val.slices["probability"].to_numpy()
    photo = (val.slices["source"] == "kaggle").to_numpy()  # where the classifier errs most (docs/quality.md)
    return {"slice_dice": float(val.slice_scores["dice"].mean()), "volume_dice": float(val.volume_scores["dice"].mean()),
            "accuracy_at_0_5": float(((probability >= 0.5) == labels).mean()),
            "roc_auc": float(roc_auc_score(labels, probability)),
            "photo_accuracy_at_0_5": float(((probability[photo] >= 0.5) == labels[photo]).mean()),
            "photo_roc_auc": float(roc_auc_score(labels[photo], probability[photo])),
            "accuracy_youden_halves": halved_accuracy(val.slices, HALVING_SEED)}


def train(project: Path, stages: list[str], overrides: dict, name: str) -> float:
    """Run the stages in the project with params.yaml + overrides; wall seconds."""
    from tasks.params_edit import set_params

    params = project / f"params-{name}.yaml"
    shutil.copy(project / "params.yaml", params)
    if overrides:
        set_params(overrides, params)
    for stage in stages:  # a stage resumes from a matching last.pt, and runtime-only keys do not stop that match
        shutil.rmtree(project / "checkpoints" / STAGE_CHECKPOINT[stage], ignore_errors=True)
    started = time.perf_counter()
    for stage in stages:
        done = subprocess.run([str(PYTHON), "-m", "tasks", stage, "--params", str(params)], cwd=project,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{stage} failed in {project}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--stages", nargs="+", default=list(STAGE_CHECKPOINT), choices=list(STAGE_CHECKPOINT))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="applied before fetch/slice/split when a seed's project is first prepared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slicewise-val-sweep"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tasks.params_edit import parse_assignments

    overrides, data_overrides = parse_assignments(args.overrides), parse_assignments(args.data_overrides)

    per_seed = {}
    for seed in args.seeds:
        project = prepared_project(args.workdir, seed, data_overrides)
        seconds = train(project, args.stages, overrides, args.name)
        checkpoint = project / "checkpoints" / STAGE_CHECKPOINT[args.stages[-1]] / "best.pt"
        per_seed[seed] = validation_scores(checkpoint, project) | {"train_seconds": round(seconds, 1)}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items()), flush=True)
    summary = {key: {"mean": statistics.mean(v[key] for v in per_seed.values()),
                     "min": min(v[key] for v in per_seed.values())} for key in next(iter(per_seed.values()))}
    line = {"name": args.name, "stages": args.stages, "overrides": args.overrides,
            "data_overrides": args.data_overrides, "per_seed": per_seed,
            "summary": summary}
    args.workdir.mkdir(parents=True, exist_ok=True)
    with (args.workdir / "results.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\n")
    print(json.dumps(line["summary"], indent=2))


if __name__ == "__main__":
    main()
