"""The production profile's real steps on a GPU: fetch, slice and split synthetic production data for a share of the
369 patients, then the three training stages for a few epochs each, timed per epoch, with the GPU's utilisation;
projected to the production profile's 369 patients and its epochs.

    .venv/bin/python -m bench.bench_gpu_stages [--patients 96] [--epochs 3,2,3] [--workdir DIR] [--device cuda]

Everything runs as `python -m tasks <step>` in a project folder of its own (params.yaml of this checkout with the
production profile, `synthetic_patients` and `synthetic_kaggle_images` scaled by the same share, the given epochs,
tracking off, one loader worker per spare core), so nothing of this checkout's data or checkpoints is touched.
The projection scales each stage's steady epoch (its epochs after the first, validation included) by 369 / patients
and the production epochs, and adds the first epoch's extra cost once; fetch and slice scale by the share too
(both are per patient). Without CUDA it says so and exits 0; `--device cpu` runs it anyway as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from bench.bench_gpu import UtilisationSampler

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_PATIENTS = 369
STEPS = ("fetch", "slice", "split", "train_seg", "train_cls", "train_joint")
STAGES = {"train_seg": "seg", "train_cls": "cls", "train_joint": "joint"}


def project_params(patients: int, epochs: dict[str, int], device: str, cores: int, smoke: bool = False) -> dict:
    """params.yaml of this checkout, turned to the production profile on `patients` of its 369 patients (`smoke`:
    with a tiny model on small, sparse slices, to check this script on a CPU in minutes)."""
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
    return params


def production_epochs() -> dict[str, int]:
    return yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["production"]["epochs"]


def run(patients: int = 96, epochs: dict[str, int] | None = None, workdir: Path | None = None,
        device: str = "cuda", smoke: bool = False) -> dict:
    import torch

    from tasks.io import usable_cores

    if device == "cuda" and not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    epochs = epochs or {"seg": 3, "cls": 2, "joint": 3}
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-stages-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(project_params(patients, epochs, device, cores, smoke)))
        report = {"measured": True, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "torch": torch.__version__, "cpu_cores": cores, "patients": patients,
                  "production_patients": PRODUCTION_PATIENTS, "epochs": epochs, "steps": {}}
        target = torch.device(device)
        for step in STEPS:
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
                return report
        report["data"] = data_counts(root)
        for step, stage in STAGES.items():
            report["steps"][step]["epoch_seconds"] = epoch_seconds(root / "reports" / "training" / f"{stage}.csv")
    report["projection"] = projection(report)
    return report


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
    return [float(s) for s in pd.read_csv(history)["seconds"]]


def projection(report: dict) -> dict:
    """Wall time of the production profile on 369 patients from these measured steps (see the module's text)."""
    scale = PRODUCTION_PATIENTS / report["patients"]
    epochs = production_epochs()
    minutes = {step: report["steps"][step]["seconds"] * scale / 60 for step in ("fetch", "slice")}
    minutes["split"] = report["steps"]["split"]["seconds"] / 60  # mostly start-up and hashing photos: not scaled
    for step, stage in STAGES.items():
        measured = report["steps"][step]
        per_epoch = measured["epoch_seconds"]
        steady = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
        fixed = measured["seconds"] - sum(per_epoch) + (per_epoch[0] - steady)  # start-up + first-epoch warm-up
        minutes[step] = (fixed + steady * scale * epochs[stage]) / 60
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
    args = parser.parse_args()
    seg, cls, joint = (int(n) for n in args.epochs.split(","))
    report = run(args.patients, {"seg": seg, "cls": cls, "joint": joint}, args.workdir, args.device, args.smoke)
    if not report["measured"]:
        print(f"GPU stages benchmark skipped: {report['reason']}")
    elif "projection" in report:
        print(f"projected production profile on {PRODUCTION_PATIENTS} patients ({report['device']}): "
              f"{report['projection']['total_minutes']} min ({report['projection']['minutes']})")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
