"""Compare volume clean-up rules (tasks/inference/postprocess.py) on the VALIDATION patients of kept seed sweeps.

Usage: .venv/bin/python -m bench.bench_cleanup_rule --project DIR [--project DIR ...] [--experiments seed-42 ...]
       [--split val] [--out results.jsonl]

A project is a copy kept by `python -m bench --only seeds --keep-seeds DIR`; each of its DVC experiments
(`dvc exp apply seed-N` brings back its data and checkpoints) is one trained quick model. For every BraTS patient of
the chosen split, the joint model predicts the raw volume once, as /v1/predict/volume does (every axial slice, the
mask cut evaluate chose on validation, native grid), with no clean-up; each rule below then cleans the whole-tumour
mask and is scored by the whole-tumour Dice against the truth (BraTS's rule for empty masks). Every component of
100+ voxels is listed too: its size, its classifier evidence (median, 75th percentile and maximum over its slices),
and whether it touches the truth (a false lesion does not). `--split test` is for a check after a rule was chosen,
never for choosing one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv" / "bin" / "dvc"
LISTED_VOXELS = 100  # components at least this large are listed with their evidence


def rules() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Rule name → (whole-tumour mask (X, Y, Z), classifier probability per axial plane (Z,)) → cleaned mask."""
    from scipy import ndimage

    from tasks.inference import postprocess

    def shipped(mask, evidence):
        return postprocess.drop_stray_components(mask, slice_probability=evidence, slice_axis=2)

    def veto_alone(mask, evidence):  # the rule until 2026-12-05: no fallback when nothing is confirmed
        return postprocess.drop_stray_components(mask, slice_probability=evidence, slice_axis=2, fallback_evidence=0)

    def size_only(mask, evidence):
        return postprocess.drop_stray_components(mask, slice_probability=None)

    def with_fallback(floor: float):
        return lambda mask, evidence: postprocess.drop_stray_components(mask, slice_probability=evidence,
                                                                        slice_axis=2, fallback_evidence=floor)

    def veto_at(threshold: float):
        return lambda mask, evidence: postprocess.drop_stray_components(mask, slice_probability=evidence,
                                                                        slice_axis=2, min_evidence=threshold)

    def quantile_veto(q: float, threshold: float):
        """As until 2026-12-05 (no fallback), but a component's evidence is the q-th percentile over its planes instead of the median."""
        def rule(mask, evidence):
            labels, count = ndimage.label(mask)
            if not count:
                return mask
            extents = ndimage.find_objects(labels)
            keep = np.zeros(count + 1, dtype=bool)
            keep[1:] = [np.percentile(evidence[e[2]], q) >= threshold for e in extents]  # no fallback
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            if keep.any():
                keep &= sizes >= postprocess.MIN_COMPONENT_SHARE * sizes[keep].max()
            return keep[labels]
        return rule

    return {"median >= 0.7 (until 2026-12-05)": veto_alone, "size rule only": size_only,
            "veto 0.5": veto_at(0.5), "shipped: median >= 0.7, else >= 0.5": shipped,
            "median >= 0.7, else >= 0.3": with_fallback(0.3),
            "p75 >= 0.7": quantile_veto(75, 0.7), "p75 >= 0.8": quantile_veto(75, 0.8)}


def apply_experiment(project: Path, name: str) -> None:
    done = subprocess.run([str(DVC), "exp", "apply", name], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dvc exp apply {name} failed in {project}:\n{done.stderr[-2000:]}")


def patient_rows(project: Path, split: str) -> list[dict]:
    """Each BraTS patient of `split`: the Dice of every rule and the listed components."""
    from scipy import ndimage

    from tasks.config import load_settings
    from tasks.data.brats_files import find_part
    from tasks.data.orientation import Orientation
    from tasks.data.splits import read_split
    from tasks.data.volumes import brats2020_labels, load_volume
    from tasks.evaluation.brats import brats_dice
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import TorchPredictor
    from tasks.inference.volume import in_display_orientation, prepare_channels, predict_slices_tta, to_volume_grid

    settings = load_settings(project / "params.yaml")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    cut = float(metrics["segmentation_threshold"]["value"])
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    predictor = TorchPredictor(model, slice_score=settings.evaluate.slice_score)
    raw = project / "data" / "raw" / "brats"
    candidates = rules()
    rows = []
    for patient in read_split(split, project / "data" / "splits"):
        folder = raw / patient
        if not folder.is_dir():
            continue  # a Kaggle photo's id
        loaded = [load_volume(find_part(folder, m)) for m in settings.slice.modalities]
        orientation = Orientation.of(loaded[0].affine)
        volumes = in_display_orientation([v.data for v in loaded], orientation)
        seg_path = find_part(folder, "seg")
        truth = orientation.display(brats2020_labels(load_volume(seg_path, labels=True)[0], seg_path)) > 0
        prediction = predict_slices_tta(predictor, prepare_channels(volumes, settings.active.image_size))
        masks, _ = to_volume_grid(prediction.region_probability, volumes[0].shape[:3], cut)
        mask, evidence = masks[0], prediction.classifier_probability.astype(np.float64)
        labels, count = ndimage.label(mask)
        components = []
        for label, extent in enumerate(ndimage.find_objects(labels), start=1):
            voxels = int((labels[extent] == label).sum())
            if voxels < LISTED_VOXELS:
                continue
            planes = evidence[extent[2]]
            components.append({"voxels": voxels, "median": round(float(np.median(planes)), 3),
                               "p75": round(float(np.percentile(planes, 75)), 3),
                               "max": round(float(planes.max()), 3),
                               "on_truth": bool(truth[extent][labels[extent] == label].any())})
        rows.append({"patient": patient, "truth_voxels": int(truth.sum()),
                     "dice": {name: round(brats_dice(rule(mask, evidence), truth), 4)
                              for name, rule in candidates.items()},
                     "components": sorted(components, key=lambda c: -c["voxels"])})
        print(f"  {patient}: " + ", ".join(f"{v:.3f}" for v in rows[-1]["dice"].values())
              + f"; components {rows[-1]['components']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, action="append", required=True)
    parser.add_argument("--experiments", nargs="+", help="default: every experiment of each project")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/slicewise-cleanup-rules.jsonl"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.split == "test":
        print("scoring TEST patients: a check of a rule already chosen, not a way to choose one", file=sys.stderr)
    per_model = {}
    for project in args.project:
        names = args.experiments or [line.split("[")[1].rstrip("]") for line in subprocess.run(
            [str(DVC), "exp", "list"], cwd=project, capture_output=True, text=True, check=True).stdout.splitlines()
            if "[" in line]
        for name in names:
            apply_experiment(project, name)
            print(f"{project.name} {name}:", flush=True)
            rows = patient_rows(project, args.split)
            per_model[f"{project.name}/{name}"] = rows
    names = list(rules())
    dice = {name: [row["dice"][name] for rows in per_model.values() for row in rows] for name in names}
    summary = {name: {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                      "below_0_5": int(sum(v < 0.5 for v in values)), "patients": len(values)}
               for name, values in dice.items()}
    with args.out.open("a") as out:
        out.write(json.dumps({"split": args.split, "summary": summary, "per_model": per_model}) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
