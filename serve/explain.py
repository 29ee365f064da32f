"""Grad-CAM for the served model, built on first use: torch and MONAI load only when someone asks for it.

Grad-CAM needs gradients, which the ONNX model cannot give, so it runs tasks/inference/gradcam.py on the torch model
rebuilt from the checkpoint the registry version carries (a self-describing checkpoint, or a bare state dict
with the model settings the ONNX metadata records). Without torch (the slim API image) or without a
checkpoint the API answers `gradcam=true` with a 409 that says which of the two is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np

from serve.served_model import ServedModel
from serve.uploads import UploadError
from tasks.io import sha256_file

log = logging.getLogger(__name__)

_build_lock = threading.Lock()


class GradCam:
    """Grad-CAM maps of one served model. MONAI's GradCAM keeps activations on the instance: one call at a time."""

    def __init__(self, checkpoint: Path, model_config: dict):
        from tasks.inference.gradcam import GradCamExplainer

        self.explainer = GradCamExplainer(load_torch_model(checkpoint, model_config))
        self.lock = threading.Lock()

    def maps(self, inputs: np.ndarray) -> np.ndarray:
        """(N, C, S, S) preprocessed slices → (N, S, S) maps in [0, 1]."""
        with self.lock:
            return self.explainer.explain(inputs)


def load_torch_model(checkpoint: Path, model_config: dict):
    """The MultitaskUNet of a checkpoint; a bare state dict is rebuilt with the ONNX metadata's model settings."""
    import torch

    from models.unet import MultitaskUNet, UNetConfig
    from tasks.inference.checkpoints import load_weights, model_config_of
    from tasks.errors import SliceWiseError

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_config" in state:  # a project checkpoint: rebuild from what was read
        model = MultitaskUNet(model_config_of(state))
        load_weights(model, state, checkpoint)
        return model.eval()
    if not model_config:
        raise SliceWiseError("a bare state dict, and the ONNX model records no model_config to rebuild it", checkpoint)
    model = MultitaskUNet(UNetConfig(**model_config))
    model.load_state_dict(state)
    return model.eval()


def gradcam_unavailable(model: ServedModel) -> str | None:
    """Why Grad-CAM cannot explain the served model, or None when it can as far as is known before building it
    (/model/info says it; `gradcam=true` answers a 409 with it). The checkpoint's digest is compared once."""
    if model.gradcam is not None:
        return None
    if model.gradcam_error:
        return model.gradcam_error
    if model.checkpoint is None:
        return ("Grad-CAM is not available: the served model has no torch checkpoint (the registry version logged "
                "none; with --model-file pass --checkpoint)")
    if importlib.util.find_spec("torch") is None:
        return "Grad-CAM is not available: this installation has no torch (slim API image)"
    with _build_lock:
        if model.gradcam_error is None and not model.checkpoint_checked:
            _check_checkpoint(model)
            model.checkpoint_checked = True
    return model.gradcam_error


def _check_checkpoint(model: ServedModel) -> None:
    """Set `gradcam_error` when the checkpoint is not the one the ONNX model was exported from (its metadata's
    sha256): e.g. train_joint reran and export has not yet, or --checkpoint names another run's weights, and the maps
    would explain another network than the one whose probabilities the answer gives."""
    if model.checkpoint_sha256 and sha256_file(model.checkpoint) != model.checkpoint_sha256:
        model.gradcam_error = (f"Grad-CAM is not available: {model.checkpoint.name} is not the checkpoint the "
                               f"served ONNX model was exported from (sha256 {model.checkpoint_sha256[:12]}); "
                               "export again, or pass --checkpoint with that model's weights")
        log.warning("%s (%s)", model.gradcam_error, model.checkpoint)


def gradcam_for(model: ServedModel) -> GradCam:
    """The served model's Grad-CAM, built once; UploadError(409) when this installation or model cannot."""
    if model.gradcam is not None:
        return model.gradcam
    if reason := gradcam_unavailable(model):
        raise UploadError(409, reason)
    try:
        import torch  # noqa: F401  (find_spec found it; a broken install fails here, said as such)
    except ImportError as exc:
        raise UploadError(409, f"Grad-CAM is not available: torch cannot be imported ({exc})") from exc
    with _build_lock:
        if model.gradcam is None:
            _check_checkpoint(model)  # again as it is read: the file may have been rewritten since /model/info asked
            if model.gradcam_error:
                raise UploadError(409, model.gradcam_error)
            try:
                model.gradcam = GradCam(model.checkpoint, model.model_config)
            except Exception as exc:  # a checkpoint that does not fit the model: say so, keep serving predictions
                model.gradcam_error = f"Grad-CAM is not available: the checkpoint cannot be loaded ({exc})"
                log.warning("%s (%s)", model.gradcam_error, model.checkpoint)
                raise UploadError(409, model.gradcam_error) from exc
    return model.gradcam
