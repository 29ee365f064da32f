"""ONNX Runtime against torch eager on CPU: p50/p95 per slice at batch 1 and 8, side by side, and the batch-1 ratio
against the 1.5x target.

Usage: .venv/bin/python -m bench.bench_export [--profiles quick baseline production] [--threads 1 0] [--runs 50]
Uses checkpoints/joint/best.pt for the active profile when it exists, otherwise a seeded untrained model of each
profile's size (latency does not depend on the weights). --threads 0 means every core this process may use.
Timing is tasks/release/onnx_checks.py's own `measure_latency`, so the numbers compare with reports/export.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.unet import MultitaskUNet
from tasks import paths
from tasks.config import load_settings
from tasks.inference.checkpoints import model_config_for
from tasks.io import usable_cores
from tasks.release.onnx_checks import measure_latency, ort_session
from tasks.release.onnx_export import export_onnx

TARGET_SPEEDUP = 1.5


def model_for(settings, profile: str) -> MultitaskUNet:
    if profile == settings.profile and paths.best_checkpoint("joint").exists():
        from tasks.inference.checkpoints import load_model

        return load_model(paths.best_checkpoint("joint"))[0]
    torch.manual_seed(0)
    return MultitaskUNet(model_config_for(settings, profile)).eval()


def bench_profile(settings, profile: str, threads: int, runs: int) -> dict:
    """Latency of both engines for one profile's model and image size at one thread count."""
    threads = threads or usable_cores()
    torch.set_num_threads(threads)
    model = model_for(settings, profile)
    size = settings.profiles[profile].image_size
    sample = np.random.default_rng(0).normal(size=(8, settings.in_channels, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, settings.in_channels, size, settings.export.opset)
        result = measure_latency(model, ort_session(onnx_path, threads), sample, runs)
    return {"profile": profile, "image_size": size, "threads": threads, **result}


def run(profiles: list[str], threads: list[int], runs: int) -> dict:
    settings = load_settings()
    return {f"{p}/threads={t or 'all'}": bench_profile(settings, p, t, runs) for p in profiles for t in threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=None, help="profiles to time (default: the active one)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 0], help="CPU threads for both engines")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per engine and batch size")
    args = parser.parse_args()
    profiles = args.profiles or [load_settings().profile]
    report = run(profiles, args.threads, args.runs)
    print(f"{'setting':<28} {'batch':>5} {'onnxruntime p50/p95 ms':>24} {'torch eager p50/p95 ms':>24} {'ratio':>6}")
    for name, result in report.items():
        for batch in ("batch_1", "batch_8"):
            ort_ms, torch_ms = result["latency"]["onnxruntime"][batch], result["latency"]["torch_eager"][batch]
            print(f"{name:<28} {batch[6:]:>5} {ort_ms['p50_ms']:>11.3f} / {ort_ms['p95_ms']:<10.3f} "
                  f"{torch_ms['p50_ms']:>11.3f} / {torch_ms['p95_ms']:<10.3f} {result['speedup_p50'][batch]:>5.2f}x")
    worst = min(r["speedup_p50"]["batch_1"] for r in report.values())
    print(f"batch-1 speedup of onnxruntime over torch eager: worst {worst:.2f}x "
          f"({'meets' if worst >= TARGET_SPEEDUP else 'misses'} the {TARGET_SPEEDUP}x target)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
