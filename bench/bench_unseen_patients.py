"""Two data recipes compared on the same patients, ones that neither of them trained on.

Usage: .venv/bin/python -m bench.bench_unseen_patients --base DIR --other DIR [--seeds 42 1 2 3 4]

A recipe that changes the data (more patients, another slice stride: `bench.bench_val_sweep --data-set ...`) changes
each seed's split, so its validation sweep scores other patients than the base's and the two cannot be compared
figure to figure. Synthetic patient N of a seed is the same volume whatever the patient count, so both sweeps'
models (each seed's `checkpoints/joint/best.pt` in BASE/seed-N and OTHER/seed-N) are scored here on one set of
slices: the BraTS patients of OTHER's validation split that BASE's project does not hold at all (neither model
trained on them, stopped early on them or chose a threshold on them) and OTHER's validation photos, which must be in
neither project's training split. The slices are OTHER's (its slice stride), scored with `bench.bench_val_sweep`'s
`validation_scores` (evaluation's own code). Prints one JSON document: per seed and recipe, and the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unseen_validation_patients(base_splits: dict[str, list[str]], other_splits: dict[str, list[str]],
                               photo_ids: set[str]) -> tuple[list[str], list[str]]:
    """OTHER's validation BraTS patients and photos for a fair comparison (see the module's docstring), in OTHER's
    order; `photo_ids` are the Kaggle images (the manifest's `source`). Raises when a photo of OTHER's validation
    split is in either training split (the photo splits differ)."""
    base_all = {p for ids in base_splits.values() for p in ids}
    photos = [p for p in other_splits["val"] if p in photo_ids]
    trained = set(base_splits["train"]) | set(other_splits["train"])
    if crossing := [p for p in photos if p in trained]:
        raise SystemExit(f"validation photos {crossing[:3]} are in a training split: the photo splits differ")
    return [p for p in other_splits["val"] if p not in photo_ids and p not in base_all], photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a validation sweep's folder (the base recipe)")
    parser.add_argument("--other", type=Path, required=True, help="a validation sweep's folder (the data recipe)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.bench_val_sweep import validation_scores
    from tasks import paths
    from tasks.data.shards import read_manifest
    from tasks.data.splits import SPLITS, read_split

    per_seed = {}
    for seed in args.seeds:
        base, other = args.base / f"seed-{seed}", args.other / f"seed-{seed}"
        splits = [{name: read_split(name, project / "data" / "splits") for name in SPLITS} for project in (base, other)]
        manifest = read_manifest(other / paths.MANIFEST)
        photo_ids = set(manifest.loc[manifest["source"] == "kaggle", "patient"])
        brats, photos = unseen_validation_patients(*splits, photo_ids)
        per_seed[seed] = {"brats_patients": len(brats), "photos": len(photos)}
        for name, project in (("base", base), ("other", other)):
            per_seed[seed][name] = validation_scores(project / "checkpoints" / "joint" / "best.pt", other,
                                                     brats + photos)
        print(f"seed {seed}: {json.dumps(per_seed[seed])}", file=sys.stderr, flush=True)
    figures = per_seed[args.seeds[0]]["base"]
    means = {name: {key: statistics.mean(v[name][key] for v in per_seed.values()) for key in figures}
             for name in ("base", "other")}
    print(json.dumps({"base": str(args.base), "other": str(args.other), "per_seed": per_seed, "mean": means},
                     indent=2))


if __name__ == "__main__":
    main()
