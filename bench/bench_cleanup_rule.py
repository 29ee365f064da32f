"""Compare volume clean-up rules (tasks/inference/postprocess.py) on the VALIDATION patients of kept seed sweeps.

Usage: .venv/bin/python -m bench.bench_cleanup_rule --project DIR [--project DIR ...] [--experiments seed-42 ...]
       [--split val] [--healthy N [--no-bias-field]] [--out results.jsonl]

A project is a copy kept by `python -m bench --only seeds --keep-seeds DIR`; each of its DVC experiments
(`dvc exp apply seed-N` brings back its data and checkpoints) is one trained quick model. For every BraTS patient of
the chosen split, the joint model predicts the raw volume once, as /v1/predict/volume does (every axial slice, the
mask cut evaluate chose on validation, native grid), with no clean-up; each rule below then cleans the whole-tumour
mask (reading the other regions too: the core rules ask whether the head paints a tumour core inside a component)
and is scored by the whole-tumour Dice against the truth (BraTS's rule for empty masks). Every component of 100+
voxels is listed too: its size, its classifier evidence (median, 75th percentile and maximum over its slices), the
tumour-core and enhancing voxels inside it, and whether it touches the truth (a false lesion does not). `--split
test` is for a check after a rule was chosen, never for choosing one.

Every synthetic patient has a tumour, so a split cannot show what a rule costs on a brain without one. `--healthy N`
renders N tumour-free patients (the synthetic generator without its tumour, from a data seed no split uses) and
counts, per rule and model, the volumes left with any predicted tumour: a false-positive volume. `--no-bias-field`
renders the same brains without their smooth intensity inhomogeneity, every other draw kept: the false tumours that
go with it are the bias fields' (`tumour_free_training_amx` in reports/bench.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LISTED_VOXELS = 100  # components at least this large are listed with their evidence
HEALTHY_DATA_SEED = 9001  # no split is drawn from it: the seeds swept are 42, 1-4, 101-105, 201-205


def rules() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Rule name → (region masks (R, X, Y, Z), whole tumour first, classifier probability per axial plane (Z,)) →
    cleaned whole-tumour mask."""
    from scipy import ndimage

    from tasks.inference import postprocess

    def whole_only(rule):
        return lambda masks, evidence: rule(masks[0], evidence)

    def shipped(mask, evidence):
        return postprocess.drop_stray_components(mask, slice_probability=evidence, slice_axis=2)

    def size_only(mask, evidence):
        return postprocess.drop_stray_components(mask, slice_probability=None)

    def with_fallback(floor: float):
        """As shipped, but a volume the veto would empty keeps the components at `floor` or more (then the size
        rule): the veto only chooses between lesions."""
        def rule(mask, evidence):
            cleaned = shipped(mask, evidence)
            if cleaned.any() or not mask.any():
                return cleaned
            return postprocess.drop_stray_components(mask, slice_probability=evidence, slice_axis=2,
                                                     min_evidence=floor)
        return rule

    def veto_at(threshold: float):
        return lambda mask, evidence: postprocess.drop_stray_components(mask, slice_probability=evidence,
                                                                        slice_axis=2, min_evidence=threshold)

    def confirm_then_size(masks, evidence, confirm, plane_weights: bool = False):
        """Keep the whole tumour's components that `confirm` accepts, then apply the shipped size rule among them.
        `confirm(planes, voxels, core_voxels)`: each component's evidence over its planes, its size and the tumour-core
        voxels inside it (0 for a whole-tumour-only model) → which to keep. `plane_weights`: each component's entry
        in `planes` is (evidence, its voxels in each of those planes) instead."""
        labels, count = ndimage.label(masks[0])
        if not count:
            return masks[0]
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        cores = (np.bincount(labels[masks[1]], minlength=count + 1) if len(masks) > 1
                 else np.zeros(count + 1, dtype=np.int64))
        extents = ndimage.find_objects(labels)
        planes = [evidence[e[2]] for e in extents]
        if plane_weights:
            planes = [(p, (labels[e] == label).sum(axis=(0, 1)))
                      for label, (p, e) in enumerate(zip(planes, extents), start=1)]
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = confirm(planes, sizes[1:], cores[1:])
        if keep.any():
            keep &= sizes >= postprocess.MIN_COMPONENT_SHARE * sizes[keep].max()
        return keep[labels]

    def quantile_veto(q: float, threshold: float):
        """As shipped, but a component's evidence is the q-th percentile over its planes instead of the median."""
        return lambda masks, evidence: confirm_then_size(
            masks, evidence, lambda planes, _, __: np.array([np.percentile(p, q) >= threshold for p in planes]))

    def core_confirms(min_core: int = 0, min_core_share: float = 0.0, floor: float = 0.0):
        """As shipped, but a component the classifier doubts (median < 0.7, >= `floor`) is confirmed all the same
        when the segmentation head paints at least `min_core` tumour-core (TC) voxels, and at least `min_core_share`
        of its own voxels, inside it: the white-matter hyperintensities and bright grey matter that fool the head
        look like oedema, which has no core."""
        def confirm(planes, sizes, cores):
            median = np.array([np.median(p) for p in planes])
            return (median >= postprocess.MIN_SLICE_EVIDENCE) | (
                (median >= floor) & (cores >= max(min_core, 1)) & (cores >= min_core_share * sizes))
        return lambda masks, evidence: confirm_then_size(masks, evidence, confirm)

    def voxel_weighted_veto(threshold: float):
        """As shipped, but each plane's evidence counts by the component's voxels in it: a tumour's caps, thin and
        doubted by the classifier, no longer outvote its body, which the classifier confirms."""
        return lambda masks, evidence: confirm_then_size(
            masks, evidence, lambda planes, _, __: np.array([weighted_median(p, w) >= threshold for p, w in planes]),
            plane_weights=True)

    whole = {"median >= 0.7 (shipped)": shipped, "size rule only": size_only, "veto 0.5": veto_at(0.5),
             "median >= 0.7, else >= 0.5": with_fallback(0.5), "median >= 0.7, else >= 0.3": with_fallback(0.3),
             "median >= 0.7, else >= 0.1": with_fallback(0.1),
             # a floor no component misses (a sigmoid probability is never 0 here): the size rule alone decides
             "median >= 0.7, else the size rule": with_fallback(1e-12)}
    return ({name: whole_only(rule) for name, rule in whole.items()}
            | {"p75 >= 0.7": quantile_veto(75, 0.7), "p75 >= 0.8": quantile_veto(75, 0.8)}
            | {f"median >= 0.7 or TC >= {n}": core_confirms(n) for n in (1, 100, 300, 1000)}
            | {f"median >= 0.7 or TC share >= {s}": core_confirms(1, s) for s in (0.05, 0.1, 0.2)}
            | {"median >= 0.7 or (>= 0.5 and TC >= 100)": core_confirms(100, floor=0.5)}
            | {"voxel-weighted median >= 0.7": voxel_weighted_veto(0.7)})


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half of the total weight lies; at an exact tie the mean of the two values around it, so
    equal weights give numpy's median (the shipped rule's)."""
    order = np.argsort(values, kind="stable")
    ranked, cumulative = values[order], np.cumsum(weights[order])
    i = int(np.searchsorted(cumulative, cumulative[-1] / 2))
    if cumulative[i] * 2 == cumulative[-1] and i + 1 < len(ranked):
        return float((ranked[i] + ranked[i + 1]) / 2)
    return float(ranked[i])


def project_model(project: Path):
    """The project's settings, its joint model as evaluate predicts with it, and the mask cut its evaluate chose."""
    from tasks.config import load_settings
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import TorchPredictor

    settings = load_settings(project / "params.yaml")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    model, _ = load_model(project / "checkpoints" / "joint" / "best.pt")
    return (settings, TorchPredictor(model, slice_score=settings.evaluate.slice_score),
            float(metrics["segmentation_threshold"]["value"]))


def region_masks(predictor, volumes: list[np.ndarray], image_size: int, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """Display-oriented volumes → the region masks (R, X, Y, Z), whole tumour first (R = 1 for a model of the whole
    tumour alone), on their grid before any clean-up, and the classifier's probability of each axial plane (the
    clean-up's evidence)."""
    from tasks.inference.volume import prepare_channels, predict_slices_tta, to_volume_grid

    prediction = predict_slices_tta(predictor, prepare_channels(volumes, image_size))
    masks, _ = to_volume_grid(prediction.region_probability, volumes[0].shape[:3], cut)
    return masks, prediction.classifier_probability.astype(np.float64)


def listed_components(masks: np.ndarray, evidence: np.ndarray, truth: np.ndarray | None = None) -> list[dict]:
    """Every whole-tumour component of LISTED_VOXELS or more, largest first: its size, its classifier evidence
    (median, 75th percentile and maximum over its planes), the tumour-core (TC) and enhancing (ET) voxels the head
    paints inside it and, with `truth`, whether it touches the true tumour (a false lesion does not)."""
    from scipy import ndimage

    labels, _ = ndimage.label(masks[0])
    components = []
    for label, extent in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[extent] == label
        if (voxels := int(inside.sum())) < LISTED_VOXELS:
            continue
        planes = evidence[extent[2]]
        components.append({"voxels": voxels, "median": round(float(np.median(planes)), 3),
                           "p75": round(float(np.percentile(planes, 75)), 3), "max": round(float(planes.max()), 3),
                           # None: a whole-tumour-only model paints no core
                           "tc_voxels": int(masks[1][extent][inside].sum()) if len(masks) > 1 else None,
                           "et_voxels": int(masks[2][extent][inside].sum()) if len(masks) > 2 else None}
                          | ({} if truth is None else {"on_truth": bool(truth[extent][inside].any())}))
    return sorted(components, key=lambda c: -c["voxels"])


def healthy_volumes(count: int, data_seed: int = HEALTHY_DATA_SEED,
                    bias_fields: bool = True) -> list[list[np.ndarray]]:
    """`count` tumour-free synthetic patients, each as its four display-oriented modality volumes (`bias_fields`:
    see synthesize_patient)."""
    from tasks.config import MODALITIES
    from tasks.data.orientation import BRATS_AFFINE, Orientation
    from tasks.data.synthetic import synthesize_patient

    orientation, out = Orientation.of(BRATS_AFFINE), []
    for index in range(1, count + 1):
        volumes, _ = synthesize_patient(data_seed, index, with_tumour=False, bias_fields=bias_fields)
        out.append([orientation.display(volumes[modality]) for modality in MODALITIES])
    return out


def healthy_rows(project: Path, volumes: list[list[np.ndarray]]) -> list[dict]:
    """Per tumour-free volume: the voxels each rule leaves (any is a false-positive volume)."""
    settings, predictor, cut = project_model(project)
    if tuple(settings.slice.modalities) != ("flair", "t1", "t1ce", "t2"):
        raise SystemExit(f"{project}: --healthy renders all four modalities; this model reads "
                         f"{settings.slice.modalities}")
    candidates, rows = rules(), []
    for index, channels in enumerate(volumes, start=1):
        masks, evidence = region_masks(predictor, channels, settings.active.image_size, cut)
        rows.append({"volume": index, "predicted_voxels": int(masks[0].sum()),
                     "kept_voxels": {name: int(rule(masks, evidence).sum()) for name, rule in candidates.items()},
                     "components": listed_components(masks, evidence)})
    print("  healthy: " + ", ".join(f"{name} {sum(r['kept_voxels'][name] > 0 for r in rows)}" for name in candidates),
          flush=True)
    return rows


def patient_rows(project: Path, split: str) -> list[dict]:
    """Each BraTS patient of `split`: the Dice of every rule and the listed components."""
    from tasks.data.brats_files import find_part
    from tasks.data.orientation import Orientation
    from tasks.data.splits import read_split
    from tasks.data.volumes import brats2020_labels, load_volume
    from tasks.evaluation.brats import brats_dice
    from tasks.inference.volume import in_display_orientation

    settings, predictor, cut = project_model(project)
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
        masks, evidence = region_masks(predictor, volumes, settings.active.image_size, cut)
        rows.append({"patient": patient, "truth_voxels": int(truth.sum()),
                     "dice": {name: round(brats_dice(rule(masks, evidence), truth), 4)
                              for name, rule in candidates.items()},
                     "components": listed_components(masks, evidence, truth)})
        print(f"  {patient}: " + ", ".join(f"{v:.3f}" for v in rows[-1]["dice"].values())
              + f"; components {rows[-1]['components']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, action="append", required=True)
    parser.add_argument("--experiments", nargs="+", help="default: every experiment of each project")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/slicewise-cleanup-rules.jsonl"))
    parser.add_argument("--healthy", type=int, default=0, help="tumour-free synthetic volumes to score too")
    parser.add_argument("--no-bias-field", action="store_true",
                        help="render those volumes without their bias fields: how many false tumours the fields cause")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.split == "test":
        print("scoring TEST patients: a check of a rule already chosen, not a way to choose one", file=sys.stderr)
    from bench.bench_slice_score import apply_experiment, experiments

    per_model, healthy = {}, {}
    healthy_inputs = healthy_volumes(args.healthy, bias_fields=not args.no_bias_field) if args.healthy else []
    for project in args.project:
        for name in args.experiments or experiments(project):
            apply_experiment(project, name)
            print(f"{project.name} {name}:", flush=True)
            per_model[f"{project.name}/{name}"] = patient_rows(project, args.split)
            if healthy_inputs:
                healthy[f"{project.name}/{name}"] = healthy_rows(project, healthy_inputs)
    rule_names = list(rules())
    dice = {name: [row["dice"][name] for rows in per_model.values() for row in rows] for name in rule_names}
    summary = {name: {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                      "below_0_5": int(sum(v < 0.5 for v in values)), "patients": len(values)}
               for name, values in dice.items()}
    if healthy:
        for name in rule_names:
            kept = [row["kept_voxels"][name] for rows in healthy.values() for row in rows]
            summary[name] |= {"healthy_false_positive_volumes": int(sum(k > 0 for k in kept)),
                              "healthy_volumes": len(kept), "healthy_kept_voxels_max": int(max(kept))}
    with args.out.open("a") as out:
        out.write(json.dumps({"split": args.split, "summary": summary, "per_model": per_model,
                              "healthy": healthy}) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
