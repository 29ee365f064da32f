"""Milliseconds per training step (forward, backward, AdamW) of the multitask U-Net by width, side by side in one run:
bf16 autocast or fp32, channels_last or NCHW, on this machine's CPU (or CUDA when there is one).

Usage: .venv/bin/python -m bench.bench_step [--widths 8 12 16] [--size 128] [--batch 16] [--channels 1] [--steps 20]

Why it exists: the price of a wider quick model is its step time, which does not follow the parameter count
(docs/recipes.md). Synthetic inputs; the segmentation head only, as in `train_seg`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
import torch.nn.functional as F

from models.unet import MultitaskUNet, UNetConfig
from tasks.training.device import native_cpu_bf16


def step_ms(width: int, bf16: bool, channels_last: bool, size: int, batch: int, channels: int, steps: int,
            device: torch.device) -> float:
    """Median wall milliseconds of one training step, after three warm-up steps."""
    torch.manual_seed(0)
    model = MultitaskUNet(UNetConfig(in_channels=channels, base_channels=width, depth=4)).to(device)
    image = torch.randn(batch, channels, size, size, device=device)
    target = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
    if channels_last:
        model, image = model.to(memory_format=torch.channels_last), image.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for i in range(steps + 3):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(image, heads=("seg",))["seg"]
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [True, False] if device.type == "cuda" or native_cpu_bf16() else [False]
    rows = []
    for width, bf16, channels_last in itertools.product(args.widths, precisions, (True, False)):
        ms = step_ms(width, bf16, channels_last, args.size, args.batch, args.channels, args.steps, device)
        rows.append({"width": width, "precision": "bf16" if bf16 else "fp32",
                     "layout": "NHWC" if channels_last else "NCHW", "ms_per_step": round(ms, 1)})
        print(f"width {width:>3}  {rows[-1]['precision']}  {rows[-1]['layout']}  {ms:7.1f} ms", flush=True)
    fastest = {w: min(r["ms_per_step"] for r in rows if r["width"] == w) for w in args.widths}
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "size": args.size,
                      "batch": args.batch, "rows": rows,
                      "fastest_over_narrowest": {w: round(ms / fastest[args.widths[0]], 2) for w, ms in fastest.items()}},
                     indent=2))


if __name__ == "__main__":
    main()
