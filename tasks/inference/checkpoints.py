"""Self-describing checkpoints: weights, optimizer, model settings, epoch, best metric and params in one file.

Resume, the next training stage, evaluation, export and serving all rebuild the model from the file alone.
Files are written atomically (temp file + rename), so a run killed mid-save leaves the previous file intact,
and read with `weights_only=True`, so loading never runs pickled code.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from models.unet import MultitaskUNet, UNetConfig
from tasks.errors import SliceWiseError
from tasks.io import atomic_write

FORMAT_VERSION = 1
# The segmentation head's outputs on every profile: WT, TC, ET (tasks/data/regions.py REGIONS; not imported here,
# as serving reaches this module and tests/test_import_boundaries.py lists what it may reach).
SEG_REGIONS = 3


def save_checkpoint(
    path: Path | str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_config: UNetConfig,
    epoch: int,
    best_metric: float,
    metric_name: str,
    params: dict,
    stage: str,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically. `params` and `extra` must hold only plain types and tensors."""
    path = Path(path)
    state = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "model": model.state_dict(),
        "model_config": asdict(model_config),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "best_metric": float(best_metric),
        "metric_name": metric_name,
        "params": params,
        "extra": extra or {},
        "torch_version": str(torch.__version__),
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents; a missing or unreadable file raises SliceWiseError naming it."""
    path = Path(path)
    if not path.exists():
        raise SliceWiseError("checkpoint not found (run the training stage that writes it first)", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: all mean "not a usable checkpoint"
        raise SliceWiseError(f"unreadable checkpoint ({type(exc).__name__}: {exc})", path) from exc


def model_config_for(settings, profile: str | None = None) -> UNetConfig:
    """The U-Net a profile trains (the active one by default): size, norm and input modalities from its profile
    block; the segmentation head predicts the three BraTS regions WT, TC, ET on every profile."""
    chosen = settings.profiles[profile] if profile else settings.active
    return UNetConfig(len(chosen.modalities), chosen.model.base_channels, chosen.model.depth, norm=chosen.model.norm,
                      seg_channels=SEG_REGIONS)


def model_config_of(checkpoint: dict) -> UNetConfig:
    return UNetConfig(**checkpoint["model_config"])


def load_weights(model: torch.nn.Module, checkpoint: dict, path: Path | str) -> None:
    """Copy a checkpoint's weights into `model`; weights from another version of the model code are an error."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise SliceWiseError(f"weights do not fit the current model code ({str(exc).splitlines()[0]}); "
                             f"rerun train_{checkpoint.get('stage', 'seg')}", path) from exc


def architecture_digest(model: torch.nn.Module) -> str:
    """Identity of the model's structure: parameter and buffer names and shapes."""
    layout = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    return hashlib.sha256(repr(layout).encode()).hexdigest()[:16]


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """Identity of a model's weights (names and exact values, whatever the memory layout): equal digests mean
    bitwise-equal models, e.g. the processes of a DDP run at its end, or a checkpoint and the model that wrote it."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[MultitaskUNet, dict]:
    """Rebuild the model from a checkpoint alone, in eval mode, with the checkpoint's contents beside it."""
    checkpoint = load_checkpoint(path, map_location)
    model = MultitaskUNet(model_config_of(checkpoint))
    load_weights(model, checkpoint, path)
    return model.to(map_location).eval(), checkpoint
