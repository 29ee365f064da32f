"""Volume inference throughput: a whole BraTS-sized volume (240×240×155, four modalities) through
tasks/inference/volume.py on onnxruntime (CPU), TTA off and TTA on, timed interleaved in the same run.

Usage: .venv/bin/python -m bench.bench_volume [--runs 3] [--side 256] [--base-channels 32] [--flips "[[],[3]]"]
The model is a production-size MultitaskUNet (params.yaml `profiles.production`: base channels, depth, norm), untrained
and seeded, with 4 input channels and 3 region outputs, exported to ONNX at side² (throughput depends on the
architecture, not on the weights). The predictor batches as serving does (8 slices per run; with TTA the flipped
copies of 8 // len(flips) slices are stacked into one run). Timed: preparation (z-scoring, resizing), prediction, the
return to the native grid with label map and uncertainty — everything /v1/predict/volume does but HTTP and NIfTI
encoding. Prints p50 of each and the ratio TTA on / TTA off; both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (240, 240, 155)
MODALITIES = ("flair", "t1", "t1ce", "t2")


def untrained_regions_model(folder: Path, side: int, base_channels: int | None = None) -> Path:
    """A seeded, untrained 4-modality, 3-region MultitaskUNet of the production profile's size, as ONNX."""
    import torch

    from models.unet import MultitaskUNet, UNetConfig
    from tasks.config import load_settings
    from tasks.release.onnx_export import export_onnx

    size = load_settings(REPO / "params.yaml").profiles["production"].model
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=len(MODALITIES), base_channels=base_channels or size.base_channels,
                     depth=size.depth, norm=size.norm, seg_channels=3)
    path = folder / "model.onnx"
    export_onnx(MultitaskUNet(cfg).eval(), path, cfg.in_channels, side, 17)
    return path


def brain_volumes(shape=SHAPE, seed: int = 0) -> list[np.ndarray]:
    """Four co-registered MRI-like int16 volumes: an ellipsoid brain with noise and a brighter lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    brain = x**2 / 0.7 + y**2 / 0.85 + z**2 / 0.8 < 1
    lesion = (x - 0.25) ** 2 + (y + 0.1) ** 2 + z**2 < 0.04
    out = []
    for contrast in (1.0, 0.6, 0.8, 1.2):
        volume = np.where(brain, 400 * contrast + 40 * rng.standard_normal(shape, dtype=np.float32), 0)
        volume[lesion] *= 1.8
        out.append(volume.astype(np.int16))
    return out


def run(runs: int = 3, side: int = 256, flips=((), (3,)), base_channels: int | None = None) -> dict:
    from serve.served_model import SERVE_BATCH
    from tasks.data.orientation import BRATS_AFFINE, Orientation
    from tasks.inference.predictor import OnnxPredictor
    from tasks.inference.volume import NO_TTA, predict_volume

    volumes = brain_volumes()
    with tempfile.TemporaryDirectory(prefix="bench-volume-") as tmp:
        predictor = OnnxPredictor(untrained_regions_model(Path(tmp), side, base_channels),
                                  providers=["CPUExecutionProvider"], batch_size=SERVE_BATCH)
        # warm-up: onnxruntime's first run allocates
        predict_volume(predictor, volumes, side, NO_TTA, orientation=Orientation.of(BRATS_AFFINE))
        times: dict[str, list[float]] = {"tta_off": [], "tta_on": []}
        for _ in range(runs):  # interleaved: both settings see the same load
            for name, chosen in (("tta_off", NO_TTA), ("tta_on", flips)):
                started = time.perf_counter()
                result = predict_volume(predictor, volumes, side, chosen, orientation=Orientation.of(BRATS_AFFINE))  # as served: LPS
                times[name].append(time.perf_counter() - started)
    p50 = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "volume_shape": list(SHAPE), "modalities": len(MODALITIES), "side": side, "runs": runs,
        "base_channels": base_channels, "tta_flips": [list(f) for f in flips], "batch": SERVE_BATCH,
        "regions": list(result.regions),
        "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "p50_s": {name: round(value, 3) for name, value in p50.items()},
        "slices_per_s_tta_off": round(SHAPE[2] / p50["tta_off"], 2),
        "tta_on_over_off_ratio": round(p50["tta_on"] / p50["tta_off"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--base-channels", type=int, default=None, help="default: the production profile's")
    parser.add_argument("--flips", default="[[], [3]]", help="TTA flips as JSON (params.yaml serve.tta_flips)")
    args = parser.parse_args()
    flips = tuple(tuple(f) for f in json.loads(args.flips))
    print(json.dumps(run(args.runs, args.side, flips, args.base_channels), indent=2))


if __name__ == "__main__":
    main()
