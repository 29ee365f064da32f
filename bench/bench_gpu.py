"""Training throughput on one CUDA GPU for a profile's model (default production: 32 base channels, depth 4, 240²
images) with the GPU switches of params.yaml: fp32 eager vs bf16 + channels_last vs bf16 + channels_last +
torch.compile, measured side by side in one run, as images per second and ratios to fp32 eager.

Each variant is timed twice: through the real loader (augmentation in worker processes, pinned memory), and on
batches already resident on the GPU (the same augmented batches, read once before), which is the GPU's own rate:
where the first is much below the second, the data path, not the GPU, sets the pace. The GPU's utilisation
(NVML, sampled every 0.1 s) is recorded over each timed pass.

Usage: .venv/bin/python -m bench.bench_gpu [--profile production] [--batch-size B] [--steps N] [--warmup N]
Without CUDA it prints that it was skipped and exits 0 (`--device cpu` runs it anyway, as a smoke test of this
script; compile is CUDA-only, so its variant then equals the one before). The steps are the project's own
(StageRunner.train_epoch of the seg stage: pinned-memory loader, augmentation, forward, loss, backward, AdamW) on
random in-memory slices, so no data or checkpoint is read or written.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch

from models.unet import MultitaskUNet, UNetConfig
from tasks.config import Settings, TrainSettings, load_settings
from tasks.data.datasets import SliceSet
from tasks.data.loaders import training_loader
from tasks.inference.checkpoints import model_config_for
from tasks.io import usable_cores
from tasks.training.device import augments_on_device, batch_to_device, place_model
from tasks.training.optimizer import make_optimizer
from tasks.training.steps import StageLoss, StageRunner

REPO = Path(__file__).resolve().parents[1]
# name -> the train switches it sets; pin_memory stays as params.yaml has it in all three.
VARIANTS = {
    "fp32 eager": {"amp_bf16": False, "channels_last": False, "compile": False},
    "bf16 + channels_last": {"amp_bf16": True, "channels_last": True, "compile": False},
    "bf16 + channels_last + compile": {"amp_bf16": True, "channels_last": True, "compile": True},
    "bf16 + channels_last (loss read each step)": {"amp_bf16": True, "channels_last": True, "compile": False},
}
# What a variant changes in the training step itself rather than in params.yaml: reading every step's loss back at
# once, as the step did before 2026-12-04 (a device sync per step), against every StageRunner.read_losses_every.
STEP_SETTINGS = {"bf16 + channels_last (loss read each step)": {"read_losses_every": 1}}
BASELINE = "fp32 eager"


def random_slices(n: int, size: int, channels: int, seed: int = 0) -> SliceSet:
    """n random float16 images and masks: the cost of a step does not depend on the content."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=generator).half()
    masks = (torch.rand(n, size, size, generator=generator) > 0.9).to(torch.uint8)
    return SliceSet(images, masks, torch.ones(n, dtype=torch.bool), masks.flatten(1).amax(1))


def images_per_second(settings: Settings, train: TrainSettings, model_cfg: UNetConfig, data: SliceSet,
                      warmup: SliceSet, device: torch.device, step_settings: dict | None = None) -> dict:
    """Seg-stage training throughput over `data` after one pass over `warmup` (compilation, allocator, cuDNN):
    images/s through the loader and on GPU-resident batches, the GPU's mean utilisation during each, the peak GPU
    memory in MiB and the seconds the warm-up pass took."""
    torch.manual_seed(0)
    model = place_model(MultitaskUNet(model_cfg), device, train)
    optimizer = make_optimizer(model, "seg", settings.train_seg)
    generator = torch.Generator().manual_seed(0)
    runner = StageRunner(model, optimizer, StageLoss("seg", settings.train_seg), "seg", train, device)
    for name, value in (step_settings or {}).items():
        setattr(runner, name, value)
    pin = train.pin_memory and device.type == "cuda"
    loaders = [training_loader(part, train.batch_size, generator, train.num_workers, pin_memory=pin,
                               augment=train.augment, augment_on_device=augments_on_device(train, device))
               for part in (warmup, data)]
    started = time.perf_counter()
    runner.train_epoch(loaders[0], 1, 1, on_batch=lambda loss: None)
    _synchronize(device)
    warmup_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with UtilisationSampler(device) as loader_busy:
        loader_rate = _timed_epoch(runner, loaders[1], train.batch_size, device)
    resident = [batch_to_device(batch, device) for batch in loaders[1]]  # augmented in the step if it would be
    with UtilisationSampler(device) as resident_busy:
        resident_rate = _timed_epoch(runner, resident, train.batch_size, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"loader": loader_rate, "resident": resident_rate, "loader_utilisation": loader_busy.mean,
            "resident_utilisation": resident_busy.mean, "peak_mib": peak, "warmup_s": warmup_seconds}


def _timed_epoch(runner: StageRunner, batches, batch_size: int, device: torch.device) -> float:
    """Images/s of one training pass over `batches` (a loader or a list of batches)."""
    steps_done: list[float] = []  # when each step's loss was read back: the GPU had finished that step
    runner.train_epoch(batches, 1, 1, on_batch=lambda loss: steps_done.append(time.perf_counter()))
    _synchronize(device)
    # timed from the end of the same step in every variant (the default `read_losses_every`, when the default reads
    # its first losses): before it, the new loader starts its workers and fills their first prefetch, a fixed cost
    # that would pull every variant's rate towards the loader's. Timed from each variant's own first read, one reading
    # every step had that cost inside its span and the other not (a bias towards reading in groups).
    first = min(StageRunner.read_losses_every, len(steps_done)) - 1
    return (len(steps_done) - 1 - first) * batch_size / (time.perf_counter() - steps_done[first])


class UtilisationSampler:
    """The GPU's utilisation (%, NVML through torch.cuda.utilization) sampled every `interval` s in a thread while
    the block runs; `mean` is None where NVML cannot be read (no CUDA, or no nvidia-ml-py)."""

    def __init__(self, device: torch.device, interval: float = 0.1) -> None:
        self.device, self.interval, self.samples = device, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # NVML missing or unreadable: no figure, not a failed benchmark
                return

    def __enter__(self) -> "UtilisationSampler":
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(profile: str = "production", batch_size: int | None = None, steps: int = 40, warmup: int = 10,
        device: str = "cuda", variants: tuple[str, ...] | None = None) -> dict:
    """Images/s of each variant and their ratios to fp32 eager; {"measured": False, "reason": ...} without CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    settings = load_settings(REPO / "params.yaml")
    size = settings.profiles[profile]
    model_cfg = model_config_for(settings, profile)
    batch = batch_size or settings.train.batch_size
    # + 1 sample: more samples than one batch makes the loader drop the incomplete last batch, as in training.
    # the timed profile's channels (the active profile may read other modalities); `read_losses_every` more steps
    # than timed: the first read of their losses starts the clock
    data = random_slices(batch * (steps + StageRunner.read_losses_every) + 1, size.image_size, model_cfg.in_channels,
                         seed=1)
    warm = random_slices(batch * warmup + 1, size.image_size, model_cfg.in_channels, seed=2)
    target = torch.device(device)
    report = {"measured": True, "device": torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu",
              "torch": torch.__version__, "profile": profile, "image_size": size.image_size,
              "model": {"base_channels": model_cfg.base_channels, "depth": model_cfg.depth},
              "batch_size": batch, "timed_steps": steps, "images_per_s": {}, "resident_images_per_s": {},
              "gpu_utilisation_pct": {}, "resident_gpu_utilisation_pct": {}, "peak_mib": {}, "warmup_s": {},
              "loader_workers": 0, "augment_on": settings.train.augment_on,
              "augmented_on_device": augments_on_device(settings.train, target)}
    for name, switches in VARIANTS.items():
        if variants and name not in variants and name != BASELINE:
            continue
        # Augmentation runs in the loader's processes (CPU): one worker per spare core keeps the GPU fed.
        workers = settings.train.num_workers or max(1, usable_cores() - 1)
        train = settings.train.model_copy(update={**switches, "batch_size": batch, "num_workers": workers})
        got = images_per_second(settings, train, model_cfg, data, warm, target, STEP_SETTINGS.get(name))
        report["loader_workers"] = workers
        report["images_per_s"][name], report["peak_mib"][name] = round(got["loader"], 1), round(got["peak_mib"])
        report["resident_images_per_s"][name] = round(got["resident"], 1)
        report["gpu_utilisation_pct"][name] = got["loader_utilisation"]
        report["resident_gpu_utilisation_pct"][name] = got["resident_utilisation"]
        report["warmup_s"][name] = round(got["warmup_s"], 1)
        print(f"{name:>32}: {got['loader']:8.1f} images/s through the loader (GPU busy {got['loader_utilisation']} %),"
              f" {got['resident']:8.1f} on resident batches (busy {got['resident_utilisation']} %)   "
              f"peak {got['peak_mib']:6.0f} MiB   warm-up {got['warmup_s']:5.1f} s", flush=True)
    base = report["images_per_s"][BASELINE]
    report["ratios"] = {f"{name} / {BASELINE}": round(rate / base, 2)
                        for name, rate in report["images_per_s"].items() if name != BASELINE}
    resident_base = report["resident_images_per_s"][BASELINE]
    report["resident_ratios"] = {f"{name} / {BASELINE}": round(rate / resident_base, 2)
                                 for name, rate in report["resident_images_per_s"].items() if name != BASELINE}
    return report


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="production", help="the profile whose model and image size to use")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (torch.compile compiles here)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test of this script")
    parser.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; "
                        f"{BASELINE} always)")
    args = parser.parse_args()
    report = run(args.profile, args.batch_size, args.steps, args.warmup, args.device,
                 tuple(v.strip() for v in args.variants.split(",") if v.strip()) or None)
    if not report["measured"]:
        print(f"GPU benchmark skipped: {report['reason']}")
    else:
        print(f"{report['device']}, profile {report['profile']} ({report['image_size']}², {report['model']}), "
              f"batch {report['batch_size']}: " + ", ".join(f"{k} = {v:.2f}x" for k, v in report["ratios"].items()))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
