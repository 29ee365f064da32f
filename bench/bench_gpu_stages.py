"""The production profile's real steps on a GPU: fetch, slice and split synthetic production data for a share of the
369 patients, the three training stages for a few epochs each, timed per epoch, with the GPU's utilisation, then
evaluate, export and register; projected to the production profile's 369 patients and its epochs.

    .venv/bin/python -m bench.bench_gpu_stages [--patients 96] [--epochs 3,2,3] [--workdir DIR] [--device cuda]
                                               [--set train.batch_size=32 ...] [--training-only]

Everything runs as `python -m tasks <step>` in a project folder of its own (params.yaml of this checkout with the
production profile, `synthetic_patients` and `synthetic_kaggle_images` scaled by the same share, the given epochs,
tracking off, one loader worker per spare core), so nothing of this checkout's data or checkpoints is touched.
The projection scales each stage's steady epoch (its epochs after the first, validation included) by 369 / patients
and the production epochs, and adds the first epoch's extra cost once; fetch, slice, evaluate and export scale by
the share too (their work is per patient), split and register do not. Without CUDA it says so and exits 0;
`--device cpu` runs it anyway as a smoke test.
`--set key=value` changes a params.yaml key of that project (dotted, as `python -m tasks set` takes it: a variant
such as batch 32 compiled); `--training-only` with a `--workdir` that already holds the data (an earlier run's)
times the three training stages alone, so a second variant in the same call does not fetch and slice again, and
projects with the earlier run's other steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from bench.bench_gpu import UtilisationSampler
from tasks import paths
from tasks.errors import SliceWiseError
from tasks.io import write_text_atomic
from tasks.params_edit import parse_assignments

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_PATIENTS = 369
STEPS = ("fetch", "slice", "split", "train_seg", "train_cls", "train_joint", "evaluate", "export", "register")
STAGES = {"train_seg": "seg", "train_cls": "cls", "train_joint": "joint"}
# Steps whose work grows with the patients (the evaluated and exported test and validation splits are shares of
# them): projected by 369 / patients, start-up included, so a little high. split and register are start-up, hashing
# and bookkeeping: taken as measured.
PER_PATIENT = ("fetch", "slice", "evaluate", "export")
TRAINING_SECTIONS = ("train", *STAGES)  # params.yaml sections only the training stages read
# Variants `make bench` times after the default run, on its data: the fastest step measured (bench.bench_gpu: 2,400
# images/s on resident batches against 1,529 at batch 16, H200, 2026-12-04). The learning rates stay as they are: a
# time, not a recipe.
VARIANTS = {"batch_32_compiled": {"train.batch_size": 32, "train.compile": True}}


def project_params(patients: int, epochs: dict[str, int], device: str, cores: int, smoke: bool = False,
                   overrides: dict[str, object] | None = None) -> dict:
    """params.yaml of this checkout, turned to the production profile on `patients` of its 369 patients (`smoke`:
    with a tiny model on small, sparse slices, to check this script on a CPU in minutes), then `overrides`
    ({"train.batch_size": 32, ...}) applied."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "production"
    production = params["profiles"]["production"]
    share = patients / PRODUCTION_PATIENTS
    production.update(synthetic_patients=patients, epochs=epochs,
                      synthetic_kaggle_images=max(10, round(production["synthetic_kaggle_images"] * share)))
    if smoke:
        production.update(image_size=64, slice_stride=8, model={"base_channels": 4, "depth": 2, "norm": "batch"})
    params["slice"]["workers"] = cores
    params["train"].update(device=device, min_epochs=1, num_workers=max(1, cores - 1))
    params["tracking"]["enabled"] = False
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        section = params
        for name in parents:
            if not isinstance(section.get(name), dict):
                raise SystemExit(f"--set {key}: params.yaml has no section {name!r} there")
            section = section[name]
        if leaf not in section:
            raise SystemExit(f"--set {key}: params.yaml has no key {leaf!r} there")
        section[leaf] = value
    return params


def production_epochs() -> dict[str, int]:
    return yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["production"]["epochs"]


def run(patients: int = 96, epochs: dict[str, int] | None = None, workdir: Path | None = None,
        device: str = "cuda", smoke: bool = False, overrides: dict[str, object] | None = None,
        training_only: bool = False) -> dict:
    import torch

    from tasks.io import usable_cores

    if device == "cuda" and not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    epochs = epochs or {"seg": 3, "cls": 2, "joint": 3}
    cores = usable_cores()
    earlier = _earlier_steps(workdir, overrides or {}) if training_only else None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-stages-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        params = project_params(patients, epochs, device, cores, smoke, overrides)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        report = {"measured": True, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "torch": torch.__version__, "cpu_cores": cores, "patients": patients,
                  "production_patients": PRODUCTION_PATIENTS, "epochs": epochs, "overrides": overrides or {},
                  "batch_size": params["train"]["batch_size"], "steps": dict(earlier or {})}
        target = torch.device(device)
        if earlier:  # the earlier run's weights and histories would be resumed, not trained again
            for folder in ("checkpoints", "reports/training"):
                shutil.rmtree(root / folder, ignore_errors=True)
        for step in STAGES if earlier else STEPS:
            started = time.perf_counter()
            with UtilisationSampler(target, interval=0.5) as busy:
                done = subprocess.run([sys.executable, "-m", "tasks", step], cwd=root, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": _python_path()})
            seconds = time.perf_counter() - started
            report["steps"][step] = {"seconds": round(seconds, 1), "gpu_utilisation_pct": busy.mean}
            print(f"{step:>12}: {seconds:7.1f} s   GPU busy {busy.mean} %", flush=True)
            if done.returncode != 0:
                report["failed"] = {"step": step, "stderr": done.stderr[-3000:]}
                print(done.stderr[-3000:], flush=True)
                if STEPS.index(step) <= STEPS.index("train_joint"):
                    _save(report, workdir)
                    return report
                del report["steps"][step]  # evaluate, export or register: the training's projection still stands
                break
            if step in STAGES:
                history = root / "reports" / "training" / f"{STAGES[step]}.csv"
                report["steps"][step]["epoch_seconds"] = epoch_seconds(history)
            _save(report, workdir)  # a run stopped at its time limit keeps what it measured, and its data stays usable
        report["data"] = data_counts(root)
    report["projection"] = projection(report)
    _save(report, workdir)
    return report


def _save(report: dict, workdir: Path | None) -> None:
    if workdir is not None:  # atomic: the run may be stopped at any moment, this one included
        write_text_atomic(json.dumps(report, indent=2), workdir / "bench_gpu_stages.json")


def _earlier_steps(workdir: Path | None, overrides: dict[str, object]) -> dict:
    """The timings of every step but the training stages from the run that left its data in `workdir`
    (`--training-only`), whose data only training keys may change."""
    report = workdir / "bench_gpu_stages.json" if workdir else None
    if report is None or not report.exists() or not (workdir / "data" / "splits").exists():
        raise SystemExit("--training-only needs --workdir of an earlier run of this benchmark (its data and report)")
    if other := [key for key in overrides if key.split(".")[0] not in TRAINING_SECTIONS]:
        raise SystemExit(f"--training-only reuses the earlier run's data: --set only training keys, not {other}")
    steps = json.loads(report.read_text())["steps"]
    return {step: {**steps[step], "from_earlier_run": True} for step in STEPS if step not in STAGES and step in steps}


def _python_path() -> str:
    """This checkout first, then whatever PYTHONPATH already holds (packages carried to a GPU machine, say)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def data_counts(root: Path) -> dict:
    """Slices of the sliced set (BraTS and Kaggle) and the training patients, as the split wrote them."""
    manifest = pd.read_csv(root / "data" / "processed" / "manifest.csv")
    train = set((root / "data" / "splits" / "train.txt").read_text().split())  # patients and photos
    brats = manifest[manifest["source"] == "brats"]
    return {"slices": len(manifest), "brats_slices": len(brats),
            "train_patients": int(brats["patient"].drop_duplicates().isin(train).sum()),
            "brats_train_slices": int(brats["patient"].isin(train).sum()),
            "brats_slices_per_patient": round(len(brats) / max(1, brats["patient"].nunique()), 1)}


def epoch_seconds(history: Path) -> list[float]:
    """The seconds of each epoch of the stage whose history is `history` (its timings file beside it)."""
    return [float(s) for s in pd.read_csv(paths.timings_beside(history))["seconds"]]


def projection(report: dict) -> dict:
    """Wall time of the production profile on 369 patients from these measured steps (see the module's text)."""
    scale = PRODUCTION_PATIENTS / report["patients"]
    epochs = production_epochs()
    minutes = {step: report["steps"][step]["seconds"] * (scale if step in PER_PATIENT else 1) / 60
               for step in STEPS if step not in STAGES and step in report["steps"]}  # a report from before a step
    for step, stage in STAGES.items():
        measured = report["steps"][step]
        per_epoch = measured["epoch_seconds"]
        steady = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
        fixed = measured["seconds"] - sum(per_epoch) + (per_epoch[0] - steady)  # start-up + first-epoch warm-up
        minutes[step] = (fixed + steady * scale * epochs[stage]) / 60
    minutes = {step: minutes[step] for step in STEPS if step in minutes}  # in pipeline order
    return {"scale": round(scale, 2), "production_epochs": epochs,
            "minutes": {k: round(v, 1) for k, v in minutes.items()}, "total_minutes": round(sum(minutes.values()), 1)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=96, help=f"of the production profile's {PRODUCTION_PATIENTS}")
    parser.add_argument("--epochs", default="3,2,3", help="seg,cls,joint epochs to time")
    parser.add_argument("--workdir", type=Path, default=None, help="project folder to keep (default: a temporary one)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test of this script")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on small slices: checks the script, "
                        "measures nothing worth keeping")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml key of the benchmark's project, dotted (repeatable): a variant to time")
    parser.add_argument("--training-only", action="store_true",
                        help="with --workdir of an earlier run: time the training stages on its data")
    args = parser.parse_args()
    seg, cls, joint = (int(n) for n in args.epochs.split(","))
    try:
        overrides = parse_assignments(args.set)  # as `python -m tasks set` and `dvc exp run -S` read them
    except SliceWiseError as exc:
        parser.error(str(exc))
    report = run(args.patients, {"seg": seg, "cls": cls, "joint": joint}, args.workdir, args.device, args.smoke,
                 overrides, args.training_only)
    if not report["measured"]:
        print(f"GPU stages benchmark skipped: {report['reason']}")
    elif "projection" in report:
        print(f"projected production profile on {PRODUCTION_PATIENTS} patients ({report['device']}): "
              f"{report['projection']['total_minutes']} min ({report['projection']['minutes']})")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
