"""Grad-CAM of the classification head: which regions pushed the tumour logit up.

MONAI's GradCAM needs a module that returns class scores (N, n_classes); `ClassifierLogit` wraps the multitask
model so it returns only the tumour logit as (N, 1). The explainer works on a private copy of the model,
because GradCAM registers hooks on its target layer for good: the copy keeps them away from the model that
predicts. Used by the evaluate step's Grad-CAM grid; serving can use it wherever torch is installed.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from monai.transforms import ScaleIntensity
from monai.visualize import GradCAM
from torch import nn


class ClassifierLogit(nn.Module):
    """The classification head only, as MONAI's CAM classes expect: (N, C, H, W) -> (N, 1) tumour logit."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, heads=("cls",))["cls"].reshape(-1, 1)


def _scale_each_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1], hottest region = 1. (MONAI's default normaliser maps max to 0.)"""
    scale = ScaleIntensity(minv=0.0, maxv=1.0)
    return torch.stack([torch.as_tensor(scale(m.detach().cpu())) for m in maps]).to(maps.device)


class GradCamExplainer:
    """Grad-CAM maps of a MultitaskUNet-like model (it must name its target layer in `gradcam_layer`)."""

    def __init__(self, model: nn.Module, device: str = "cpu", batch_size: int = 16):
        self.device = torch.device(device)
        with torch.inference_mode(False):  # a copy made in inference mode could not take part in autograd
            self.wrapper = ClassifierLogit(copy.deepcopy(model)).to(self.device).eval()
        for parameter in self.wrapper.parameters():
            parameter.requires_grad_(True)  # gradients must reach the target layer even for a frozen model
        self.cam = GradCAM(
            nn_module=self.wrapper,
            target_layers=f"model.{model.gradcam_layer}",
            postprocessing=_scale_each_to_unit,
        )
        self.batch_size = batch_size

    def explain(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) preprocessed slices -> (N, H, W) float32 maps in [0, 1] at the input resolution."""
        images = np.asarray(images, dtype=np.float32)
        maps = []
        # Callers (a server, evaluation) may sit inside inference_mode / no_grad; Grad-CAM needs gradients.
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start : start + self.batch_size]).to(self.device)
                maps.append(self.cam(x=batch, class_idx=0)[:, 0].detach().cpu().numpy())
        if not maps:
            return np.zeros((0, *images.shape[2:]), dtype=np.float32)
        return np.concatenate(maps).astype(np.float32)
