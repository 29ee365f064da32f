"""Arrays → base64 PNG for JSON answers: the input as the model saw it, the mask, the Grad-CAM overlay."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

GRADCAM_OPACITY = 0.45


def png_base64(pixels: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) → base64 PNG. Fast compression: these images are small and made per request."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_display(image: np.ndarray) -> np.ndarray:
    """Z-scored slices (any shape) → uint8 grayscale: the foreground stretched between its minimum and 99.5th
    percentile, the background (exact zeros after preprocessing) black, as on a scanner's screen."""
    foreground = image != 0
    if not foreground.any():
        return np.zeros(image.shape, dtype=np.uint8)
    values = image[foreground]
    lo, hi = float(values.min()), float(np.percentile(values, 99.5))
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 235 + 20  # the darkest tissue stays above black
    return np.where(foreground, scaled, 0).astype(np.uint8)


def mask_pixels(mask: np.ndarray) -> np.ndarray:
    """Binary (H, W) mask → uint8 0/255."""
    return mask.astype(np.uint8) * 255


def jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] → (…, 3) uint8 in the 'jet' colour map (blue = cold, red = hot), without matplotlib."""
    x = np.clip(values, 0, 1)[..., None] * 4
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def gradcam_overlay(display: np.ndarray, heatmap: np.ndarray, opacity: float = GRADCAM_OPACITY) -> np.ndarray:
    """The grayscale slice with the Grad-CAM map blended on top, as (H, W, 3) uint8."""
    gray = np.repeat(display[..., None].astype(np.float32), 3, axis=2)
    blended = (1 - opacity) * gray + opacity * jet(heatmap).astype(np.float32)
    return blended.round().astype(np.uint8)


# BraTS label colours of the label overlay (RGBA): 1 necrosis red, 2 oedema green, 4 enhancing tumour yellow.
LABEL_COLOURS = {1: (230, 40, 40, 170), 2: (40, 200, 60, 140), 4: (250, 220, 30, 190)}
UNCERTAINTY_FLOOR = 0.02  # uncertainty (bits) below this is shown transparent


def label_overlay(labels: np.ndarray) -> np.ndarray:
    """(H, W) label map 0/1/2/4 → (H, W, 4) uint8 RGBA, transparent where 0."""
    out = np.zeros((*labels.shape, 4), dtype=np.uint8)
    for label, colour in LABEL_COLOURS.items():
        out[labels == label] = colour
    return out


def uncertainty_overlay(uncertainty: np.ndarray) -> np.ndarray:
    """(H, W) uncertainty in [0, 1] → (H, W, 4) uint8 RGBA heat map ('jet'), opacity growing with the uncertainty,
    transparent where it is about 0."""
    u = np.clip(np.asarray(uncertainty, dtype=np.float32), 0, 1)
    alpha = np.where(u >= UNCERTAINTY_FLOOR, 80 + 175 * u, 0).astype(np.uint8)
    return np.concatenate([jet(u), alpha[..., None]], axis=-1)
