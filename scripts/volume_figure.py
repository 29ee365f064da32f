"""The volume figure of docs/quality.md, and figures: a served ONNX model on raw BraTS test patients, as
/v1/predict/volume and evaluate run it (tasks/inference/volume.py), with and without flip TTA.

Usage: .venv/bin/python scripts/volume_figure.py --model exports/model.onnx --raw data/raw/brats \
           --patients BraTS20_Training_006 ... [--figure docs/volume-uncertainty.png] [--flips "[[], [3]]"]
Prints per patient and region Dice / HD95 (BraTS rules, native resolution) and the uncertainty-on-errors figures,
TTA off and on, scored by evaluation's own `evaluate_patient` at the model's mask threshold (the seconds include
loading the volumes); draws the first patient's slice with the most tumour: FLAIR, truth, prediction, uncertainty.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.brats_files import find_part  # noqa: E402
from tasks.data.orientation import Orientation  # noqa: E402
from tasks.data.preprocess import axial_slice  # noqa: E402
from tasks.data.volumes import load_volume  # noqa: E402
from tasks.evaluation.brats import evaluate_patient  # noqa: E402
from tasks.inference.predictor import MASK_THRESHOLD, OnnxPredictor  # noqa: E402
from tasks.inference.volume import NO_TTA  # noqa: E402

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
    mask_threshold = float(meta.get("mask_threshold", MASK_THRESHOLD))
    flips = [tuple(f) for f in json.loads(args.flips)]
    rows, drawn = [], False
    for patient in args.patients:
        for name, chosen in (("tta_off", NO_TTA), ("tta_on", flips)):
            started = time.perf_counter()  # evaluation's own code path: load, predict, clean up, score
            scored = evaluate_patient(predictor, args.raw / patient, modalities, size, chosen, mask_threshold)
            seconds = time.perf_counter() - started
            rows.append({"patient": patient, "tta": name, "seconds": round(seconds, 2),
                         **{f"{r}_{k}": round(v, 4) for r, m in scored["regions"].items() for k, v in m.items()},
                         **{f"uncertainty_{k}": round(v, 4) for k, v in scored["uncertainty"].items()}})
            print(json.dumps(rows[-1]))
            if args.figure and name == "tta_on" and not drawn:
                flair = load_volume(find_part(args.raw / patient, modalities[0]))
                draw(args.figure, Orientation.of(flair.affine), flair.data, scored["truth"], scored["prediction"],
                     patient, flips)
                drawn = True
    for name in ("tta_off", "tta_on"):
        chosen = [r for r in rows if r["tta"] == name]
        means = {k: round(float(np.nanmean([r[k] for r in chosen])), 4) for k in chosen[0]
                 if k not in ("patient", "tta")}
        print(json.dumps({"mean": name, "n": len(chosen), **means}))


def draw(path: Path, shown: Orientation, flair, truth, result, patient, flips) -> None:
    """The slice with the most tumour, in display orientation (anterior up), as the slice step cuts slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flair, truth, label_map, uncertainty = (shown.display(a) for a in (flair, truth, result.label_map,
                                                                       result.uncertainty))
    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    image = axial_slice(flair, z)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"{patient}, FLAIR, slice {z}", fontsize=9)
    axes[0].axis("off")
    overlay(axes[1], image, axial_slice(truth, z), "truth (red NCR, green ED, yellow ET)")
    overlay(axes[2], image, axial_slice(label_map, z), f"prediction ({', '.join(result.regions).upper()})")
    axes[3].imshow(image, cmap="gray")
    heat = axes[3].imshow(np.ma.masked_less(axial_slice(uncertainty, z), 0.02), cmap="inferno", vmin=0, vmax=1)
    axes[3].set_title(f"uncertainty (entropy, bits), TTA flips {[list(f) for f in flips]}", fontsize=9)
    axes[3].axis("off")
    fig.colorbar(heat, ax=axes[3], fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
