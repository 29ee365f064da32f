"""Training throughput on one CUDA GPU for a profile's model (default production: 32 base channels, depth 4, 240²
images) with the GPU switches of params.yaml: fp32 eager vs bf16 + channels_last vs bf16 + channels_last +
torch.compile, measured side by side in one run, as images per second and ratios to fp32 eager.

Usage: .venv/bin/python -m bench.bench_gpu [--profile production] [--batch-size B] [--steps N] [--warmup N]
Without CUDA it prints that it was skipped and exits 0 (`--device cpu` runs it anyway, as a smoke test of this
script; compile is CUDA-only, so its variant then equals the one before). The steps are the project's own
(StageRunner.train_epoch of the seg stage: pinned-memory loader, augmentation, forward, loss, backward, AdamW) on
random in-memory slices, so no data or checkpoint is read or written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.unet import MultitaskUNet, UNetConfig
from tasks.config import Settings, TrainSettings, load_settings
from tasks.data.datasets import SliceSet, training_loader
from tasks.inference.checkpoints import model_config_for
from tasks.io import usable_cores
from tasks.training.steps import StageLoss, StageRunner, make_optimizer, place_model

REPO = Path(__file__).resolve().parents[1]
# name -> the train switches it sets; pin_memory stays as params.yaml has it in all three.
VARIANTS = {
    "fp32 eager": {"amp_bf16": False, "channels_last": False, "compile": False},
    "bf16 + channels_last": {"amp_bf16": True, "channels_last": True, "compile": False},
    "bf16 + channels_last + compile": {"amp_bf16": True, "channels_last": True, "compile": True},
}
BASELINE = "fp32 eager"


def random_slices(n: int, size: int, channels: int, seed: int = 0) -> SliceSet:
    """n random float16 images and masks: the cost of a step does not depend on the content."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=generator).half()
    masks = (torch.rand(n, size, size, generator=generator) > 0.9).to(torch.uint8)
    return SliceSet(images, masks, torch.ones(n, dtype=torch.bool), masks.flatten(1).amax(1))


def images_per_second(settings: Settings, train: TrainSettings, model_cfg: UNetConfig, data: SliceSet,
                      warmup: SliceSet, device: torch.device) -> tuple[float, float, float]:
    """Seg-stage training throughput over `data` after one pass over `warmup` (compilation, allocator, cuDNN), the
    peak GPU memory in MiB and the seconds the warm-up pass took."""
    torch.manual_seed(0)
    model = place_model(MultitaskUNet(model_cfg), device, train)
    optimizer = make_optimizer(model, "seg", settings.train_seg)
    generator = torch.Generator().manual_seed(0)
    runner = StageRunner(model, optimizer, StageLoss("seg", settings.train_seg), "seg", train, device)
    pin = train.pin_memory and device.type == "cuda"
    loaders = [training_loader(part, train.batch_size, generator, train.num_workers, pin_memory=pin,
                               augment=train.augment)
               for part in (warmup, data)]
    started = time.perf_counter()
    runner.train_epoch(loaders[0], 1, 1, on_batch=lambda loss: None)
    _synchronize(device)
    warmup_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps_done: list[float] = []  # loss.item() per step syncs as training does, so each time is a finished step
    runner.train_epoch(loaders[1], 1, 1, on_batch=lambda loss: steps_done.append(time.perf_counter()))
    _synchronize(device)
    # timed from the end of the first step: before it, the new loader starts its workers and fills their first
    # prefetch, a fixed cost that would pull every variant's rate, and their ratios, towards the loader's
    seconds = time.perf_counter() - steps_done[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return (len(steps_done) - 1) * train.batch_size / seconds, peak, warmup_seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(profile: str = "production", batch_size: int | None = None, steps: int = 40, warmup: int = 10,
        device: str = "cuda") -> dict:
    """Images/s of each variant and their ratios to fp32 eager; {"measured": False, "reason": ...} without CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    settings = load_settings(REPO / "params.yaml")
    size = settings.profiles[profile]
    model_cfg = model_config_for(settings, profile)
    batch = batch_size or settings.train.batch_size
    # + 1 sample: more samples than one batch makes the loader drop the incomplete last batch, as in training.
    # the timed profile's channels (the active profile may read other modalities); one more step than timed: the
    # first one's end starts the clock
    data = random_slices(batch * (steps + 1) + 1, size.image_size, model_cfg.in_channels, seed=1)
    warm = random_slices(batch * warmup + 1, size.image_size, model_cfg.in_channels, seed=2)
    target = torch.device(device)
    report = {"measured": True, "device": torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu",
              "torch": torch.__version__, "profile": profile, "image_size": size.image_size,
              "model": {"base_channels": model_cfg.base_channels, "depth": model_cfg.depth},
              "batch_size": batch, "timed_steps": steps, "images_per_s": {}, "peak_mib": {}, "warmup_s": {}}
    for name, switches in VARIANTS.items():
        # Augmentation runs in the loader's processes (CPU): one worker per spare core keeps the GPU fed.
        workers = settings.train.num_workers or max(1, usable_cores() - 1)
        train = settings.train.model_copy(update={**switches, "batch_size": batch, "num_workers": workers})
        rate, peak, warmup_s = images_per_second(settings, train, model_cfg, data, warm, target)
        report["images_per_s"][name], report["peak_mib"][name] = round(rate, 1), round(peak)
        report["warmup_s"][name] = round(warmup_s, 1)
        print(f"{name:>32}: {rate:8.1f} images/s   peak {peak:6.0f} MiB   warm-up {warmup_s:5.1f} s", flush=True)
    base = report["images_per_s"][BASELINE]
    report["ratios"] = {f"{name} / {BASELINE}": round(rate / base, 2)
                        for name, rate in report["images_per_s"].items() if name != BASELINE}
    return report


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="production", help="the profile whose model and image size to use")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (torch.compile compiles here)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test of this script")
    args = parser.parse_args()
    report = run(args.profile, args.batch_size, args.steps, args.warmup, args.device)
    if not report["measured"]:
        print(f"GPU benchmark skipped: {report['reason']}")
    else:
        print(f"{report['device']}, profile {report['profile']} ({report['image_size']}², {report['model']}), "
              f"batch {report['batch_size']}: " + ", ".join(f"{k} = {v:.2f}x" for k, v in report["ratios"].items()))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
