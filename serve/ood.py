"""Out-of-distribution guard: is an upload plausibly what the model was trained on, a brain MRI slice?

The model only ever saw skull-stripped BraTS slices and Kaggle MRI photos: grayscale, a head on a dark
background, intensities that are magnitudes (non-negative). Each check below scores one way an input can be
far from that, from 0 (typical of training data) to 1 (certainly not); the input's score is the highest one,
and from `serve.ood_threshold` on the API answers with a warning instead of a tumour decision. Cheap numpy
checks on purpose: they run on every request and explain themselves, which a learned detector would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.data.preprocess import FOREGROUND_FRACTION

BORDER_FRACTION = 0.04  # width of the frame around the image that must be mostly background
MIN_FOREGROUND = 0.02  # below this share of foreground pixels an image is blank
OUTLIER_Z = 10.0  # |z-score| beyond which a pixel is an outlier (tumour in FLAIR: a few SD above the brain)


@dataclass(frozen=True)
class OodResult:
    score: float  # max over the checks, 0 = like training data, 1 = certainly not
    checks: dict[str, float]  # every check's score, for /v1 answers and debugging
    reasons: tuple[str, ...]  # human-readable, for checks at or above the threshold

    def is_ood(self, threshold: float) -> bool:
        return self.score >= threshold

    def warning(self, threshold: float) -> str | None:
        if not self.is_ood(threshold):
            return None
        return (f"out of distribution (score {self.score:.2f} >= {threshold:g}): " + "; ".join(self.reasons)
                + ". The model was trained on brain MRI slices; no tumour decision is given for this input, and its "
                "tumour areas and volumes are not measurements to rely on.")


def _ramp(value: float, start: float, full: float) -> float:
    """0 at `start`, 1 at `full`, linear in between."""
    return float(np.clip((value - start) / (full - start), 0.0, 1.0))


def _foreground(gray: np.ndarray, zero_background: bool) -> np.ndarray:
    """The head, not the air. Raw and already-normalised arrays (NPY, NIfTI) of skull-stripped scans mark the
    background with exact zeros; otherwise (photos, JPEG noise) it is what lies within a small fraction of the
    image's range above its minimum."""
    if zero_background and (gray == 0).mean() > 0.05:
        return gray != 0
    lo, hi = float(gray.min()), float(gray.max())
    return gray > lo + FOREGROUND_FRACTION * (hi - lo)


def blank_score(gray: np.ndarray, zero_background: bool) -> tuple[float, str]:
    fg = _foreground(gray, zero_background).mean() if gray.max() > gray.min() else 0.0
    return (1.0 if fg < MIN_FOREGROUND else 0.0), f"blank image ({fg:.1%} of pixels above background)"


COLOUR_SAMPLE = 16384  # pixels the colour check looks at


def colour_score(rgb: np.ndarray | None) -> tuple[float, str]:
    """MRI is grayscale, sometimes with one tint over the whole scan; a photograph has many colours.

    Chromaticity (each pixel's share of red, green and blue) is the same everywhere in a tinted grayscale
    image, whatever the tint, so its spread over the lit pixels measures colour, not tint.
    """
    if rgb is None:
        return 0.0, ""
    pixels = rgb.reshape(-1, 3)
    # A spread is a statistic: ~16k evenly strided pixels estimate it as well as all of them, far cheaper.
    rgb = pixels[:: max(1, len(pixels) // COLOUR_SAMPLE)].astype(np.float32)
    total = rgb.sum(axis=1)
    lit = total > 0.1 * 3 * 255
    if lit.sum() < 2:
        return 0.0, ""
    spread = float((rgb[lit] / total[lit, None]).std(axis=0).mean())
    return _ramp(spread, 0.01, 0.03), f"colour image (chromaticity spread {spread:.3f}; MRI is grayscale)"


def border_score(gray: np.ndarray, zero_background: bool) -> tuple[float, str]:
    """A head sits on a dark background; a photo or a crop of texture fills the frame to its edges."""
    bright = float(_foreground(gray, zero_background)[_border_mask(gray.shape)].mean()) if gray.max() > gray.min() else 0.0
    return _ramp(bright, 0.35, 0.75), f"no dark background around a head ({bright:.0%} of the image border is bright)"


def _border_mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    b = max(1, round(BORDER_FRACTION * min(h, w)))
    mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
    return mask


# What preprocessing leaves (tasks/data/preprocess.py): exact zeros around the brain, the brain z-scored over its
# whole volume. A slice's own brain statistics stray from (0, 1) towards the top and bottom of the head: over the
# quick profile's 11,436 training channel-slices its mean ran from -0.91 to 0.76 and its SD from 0.32 to 1.28
# (2026-12-05), so the bounds leave room around that range and still refuse magnitudes (CT's Hounsfield units,
# negated or offset intensities: a spread of hundreds) and a background that is not zero (an image scaled to [-1, 1]).
ZSCORED_MAX_MEAN = 1.5
ZSCORED_SD = (0.2, 2.0)
ZSCORED_MIN_BACKGROUND = 0.05  # share of exact zeros around the brain


def intensity_score(raw: np.ndarray | None) -> tuple[float, str]:
    """Raw intensities (NPY, NIfTI) are magnitudes: many negative values mean a wrong range, unless the input was
    already normalised the way preprocessing does it. `raw`: one array per channel along its first axis, each
    judged on its own (a missing modality, all zeros, is not judged): a slice's (C, H, W), or a volume as (1, X, Y, Z),
    whose brain is z-scored as one."""
    if raw is None:
        return 0.0, ""
    negative = float((raw < 0).mean())
    if negative <= 0.01:
        return 0.0, ""
    present = [channel for channel in raw if channel.any()]
    if all(_looks_zscored(channel) for channel in present):
        return 0.0, ""
    return _ramp(negative, 0.01, 0.05), f"wrong intensity range ({negative:.0%} negative values; MRI is non-negative)"


# Skull-stripped scans, as BraTS ships them and preprocessing reads them, hold exact zeros outside the brain
# (tasks/data/preprocess.py z-scores the non-zero voxels as the brain): a BraTS volume is about 85 % zeros, a mid-brain
# slice over half, and a volume cropped to the brain's box about half (an ellipsoid fills ~52 % of its box).
BACKGROUND_SHARE = (0.05, 0.30)  # share of exact zeros: at most the first, certainly none; from the second on, enough


def background_score(raw: np.ndarray | list[np.ndarray] | None, names: tuple[str, ...] = ()) -> tuple[float, str]:
    """An array (NPY, NIfTI) with almost no exact zeros has no background the model can tell from the brain: an
    offset added to every voxel, an inverted scale, a scan with its skull. Preprocessing then z-scores the air with
    the brain and the model sees an image unlike any it was trained on (a whole brain painted as tumour, or nothing).
    `raw`: one array per channel (along its first axis, or a list), each judged on its own (a missing one, all
    zeros, is not); `names` name them in the reason."""
    if raw is None:
        return 0.0, ""
    worst, reason = 0.0, ""
    for index, channel in enumerate(raw):
        if not channel.any():
            continue
        share = float((channel == 0).mean())
        score = _ramp(BACKGROUND_SHARE[1] - share, 0.0, BACKGROUND_SHARE[1] - BACKGROUND_SHARE[0])
        if score > worst or not reason:
            which = f"{names[index]}: " if index < len(names) else ""
            worst, reason = max(worst, score), (
                f"{which}no empty background around the brain ({share:.1%} of the values are 0; the model reads "
                "skull-stripped scans, zero outside the brain: an offset, an inverted scale or a skull breaks that)")
    return worst, reason


def _looks_zscored(values: np.ndarray) -> bool:
    brain = values[values != 0]
    if brain.size < 2 or 1 - brain.size / values.size < ZSCORED_MIN_BACKGROUND:
        return False
    # float64: float32 statistics of finite values near its limits overflow
    mean, sd = float(brain.mean(dtype=np.float64)), float(brain.std(dtype=np.float64))
    return abs(mean) <= ZSCORED_MAX_MEAN and ZSCORED_SD[0] <= sd <= ZSCORED_SD[1]


def outlier_score(model_input: np.ndarray) -> tuple[float, str]:
    """After z-scoring, training slices keep almost every pixel within a few SD; hot pixels or clipping do not."""
    values = model_input[model_input != 0]
    if values.size < 2:
        return 0.0, ""
    share = float((np.abs(values) > OUTLIER_Z).mean())
    return _ramp(share, 0.01, 0.05), f"extreme intensities ({share:.1%} of pixels beyond {OUTLIER_Z:g} SD)"


def combine(scored: dict[str, tuple[float, str]], threshold: float) -> OodResult:
    checks = {name: round(score, 4) for name, (score, _) in scored.items()}
    reasons = tuple(reason for score, reason in scored.values() if score >= threshold and reason)
    return OodResult(score=max(checks.values(), default=0.0), checks=checks, reasons=reasons)


def score_slice(gray: np.ndarray, model_input: np.ndarray, rgb: np.ndarray | None, raw: np.ndarray | None,
                threshold: float) -> OodResult:
    """gray: (H, W) upload as displayed; model_input: (C, S, S) preprocessed; rgb: a photo's pixels; raw: NPY values."""
    return combine({
        "blank": blank_score(gray, raw is not None),
        "colour": colour_score(rgb),
        "border": border_score(gray, raw is not None),
        "intensity": intensity_score(raw),
        "background": background_score(raw),
        "outliers": outlier_score(model_input),
    }, threshold)


def score_volume(volumes: dict[str, np.ndarray], model_input: np.ndarray, threshold: float) -> OodResult:
    """Whole (X, Y, Z) volumes, one per uploaded modality (FLAIR among them), each judged on its own: the model reads
    every one. The blank and border checks look at FLAIR, the border at its axial slice with the most brain."""
    flair = volumes["flair"]
    fg_per_slice = (flair != 0).sum(axis=(0, 1))
    fullest = flair[:, :, int(np.argmax(fg_per_slice))]
    checks = {"blank": blank_score(flair.reshape(flair.shape[0], -1), True), "border": border_score(fullest, True)}
    intensity = [intensity_score(volume[None]) for volume in volumes.values()]
    worst = max(range(len(intensity)), key=lambda i: intensity[i][0])
    name = list(volumes)[worst]
    checks["intensity"] = (intensity[worst][0], f"{name}: {intensity[worst][1]}" if intensity[worst][1] else "")
    checks["background"] = background_score(list(volumes.values()), tuple(volumes))
    checks["outliers"] = outlier_score(model_input)
    return combine(checks, threshold)
