"""Where a stage computes and how: the device, the model's memory layout, bf16 autocast, torch.compile, and the
batches' copy to the device (augmented there or in the loader)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import Tensor, nn

from models.unet import MultitaskUNet
from tasks.config import TrainSettings
from tasks.errors import SliceWiseError


def pick_device(choice: str) -> torch.device:
    """`auto` → cuda, then mps, then cpu; an explicit choice that this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if choice == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[choice]:
        raise SliceWiseError(f"train.device is {choice!r} but no {choice} device is available (use auto or cpu)")
    return torch.device(choice)


def place_model(model: MultitaskUNet, device: torch.device, train_cfg) -> MultitaskUNet:
    model = model.to(device)
    # NHWC helps oneDNN's CPU convolutions as much as CUDA's tensor cores.
    if train_cfg.channels_last and device.type in ("cuda", "cpu"):
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(module: nn.Module, device: torch.device, train_cfg) -> nn.Module:
    """The module torch.compile'd on CUDA when asked (`train.compile`), else the module itself."""
    return torch.compile(module) if train_cfg.compile and device.type == "cuda" else module


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16); emulated bf16 would be slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def machine_description(device: torch.device) -> str:
    """What computed an epoch, as its timings record it: the GPU's name, or the CPU's model and the threads torch
    uses. A time measured on one machine is no budget for another (bench/bench_peer.py compares them)."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {cpu_model_and_flags()[0]}, {torch.get_num_threads()} threads"


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """This CPU's model name and feature flags, from /proc/cpuinfo (the platform's names and no flags elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return model, flags


def autocast(device: torch.device, train_cfg):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (about 1.7x faster steps there)."""
    enabled = train_cfg.amp_bf16 and (device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`; anything else (a batch's `PendingAugment`) as it is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def augments_on_device(train_cfg: TrainSettings, device: torch.device) -> bool:
    """`train.augment_on`: whether the training step augments batches after their copy to `device` (auto: on a GPU,
    where the loader's CPU workers would otherwise set the pace) rather than the loader."""
    return train_cfg.augment_on == "device" or (train_cfg.augment_on == "auto" and device.type == "cuda")


def in_layout(image: Tensor, channels_last: bool) -> Tensor:
    """NHWC when `train.channels_last` (the model's weights are NHWC too, see place_model)."""
    return image.contiguous(memory_format=torch.channels_last) if channels_last else image
