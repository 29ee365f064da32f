"""The README's volume figure and figures: a served ONNX model on raw BraTS test patients, as /v1/predict/volume and
evaluate run it (tasks/inference/volume.py), with and without flip TTA.

Usage: .venv/bin/python scripts/volume_figure.py --model exports/model.onnx --raw data/raw/brats \
           --patients BraTS20_Training_006 ... [--figure docs/volume-uncertainty.png] [--flips "[[], [3]]"]
Prints per patient and region Dice / HD95 (BraTS rules, native resolution) and the uncertainty-on-errors figures,
TTA off and on; draws the first patient's slice with the most tumour: FLAIR, truth, prediction, uncertainty.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.preprocess import axial_slice  # noqa: E402
from tasks.data.regions import to_brats2020_labels  # noqa: E402
from tasks.data.local_import import find_part  # noqa: E402
from tasks.data.volumes import load_volume  # noqa: E402
from tasks.evaluation.brats import region_scores, uncertainty_on_errors  # noqa: E402
from tasks.inference.predictor import OnnxPredictor  # noqa: E402
from tasks.inference.volume import NO_TTA, predict_volume  # noqa: E402

COLOURS = {1: (0.9, 0.15, 0.15), 2: (0.15, 0.8, 0.25), 4: (1.0, 0.85, 0.1)}


def overlay(ax, flair, labels, title):
    ax.imshow(flair, cmap="gray")
    rgba = np.zeros((*labels.shape, 4))
    for label, colour in COLOURS.items():
        rgba[labels == label] = (*colour, 0.55)
    ax.imshow(rgba)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--patients", nargs="+", required=True)
    parser.add_argument("--flips", default="[[], [3]]")
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    predictor = OnnxPredictor(args.model, providers=["CPUExecutionProvider"], batch_size=8)
    meta = json.loads(predictor.session.get_modelmeta().custom_metadata_map.get("slicewise", "{}"))
    modalities, size = meta.get("modalities", ["flair"]), int(meta["image_size"])
    flips = [tuple(f) for f in json.loads(args.flips)]
    rows, drawn = [], False
    for patient in args.patients:
        folder = args.raw / patient
        volumes = [load_volume(find_part(folder, m))[0] for m in modalities]
        seg, spacing = load_volume(find_part(folder, "seg"))
        truth = to_brats2020_labels(np.rint(seg).astype(np.int16))
        brain = np.any(np.stack([v > 0 for v in volumes]), axis=0) | (truth > 0)
        for name, chosen in (("tta_off", NO_TTA), ("tta_on", flips)):
            started = time.perf_counter()
            result = predict_volume(predictor, volumes, size, chosen)
            seconds = time.perf_counter() - started
            scores = region_scores(result.label_map, truth, spacing, result.regions)
            errors = uncertainty_on_errors(result.uncertainty, result.label_map != truth, brain)
            rows.append({"patient": patient, "tta": name, "seconds": round(seconds, 2),
                         **{f"{r}_{k}": round(v, 4) for r, m in scores.items() for k, v in m.items()},
                         **{f"uncertainty_{k}": round(v, 4) for k, v in errors.items()}})
            print(json.dumps(rows[-1]))
            if args.figure and name == "tta_on" and not drawn:
                draw(args.figure, volumes[0], truth, result, patient, flips)
                drawn = True
    for name in ("tta_off", "tta_on"):
        chosen = [r for r in rows if r["tta"] == name]
        means = {k: round(float(np.nanmean([r[k] for r in chosen])), 4) for k in chosen[0]
                 if k not in ("patient", "tta")}
        print(json.dumps({"mean": name, "n": len(chosen), **means}))


def draw(path: Path, flair, truth, result, patient, flips) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    image = axial_slice(flair, z)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"{patient}, FLAIR, slice {z}", fontsize=9)
    axes[0].axis("off")
    overlay(axes[1], image, axial_slice(truth, z), "truth (red NCR, green ED, yellow ET)")
    overlay(axes[2], image, axial_slice(result.label_map, z), f"prediction ({', '.join(result.regions).upper()})")
    axes[3].imshow(image, cmap="gray")
    heat = axes[3].imshow(np.ma.masked_less(axial_slice(result.uncertainty, z), 0.02), cmap="inferno", vmin=0, vmax=1)
    axes[3].set_title(f"uncertainty (entropy, bits), TTA flips {[list(f) for f in flips]}", fontsize=9)
    axes[3].axis("off")
    fig.colorbar(heat, ax=axes[3], fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
