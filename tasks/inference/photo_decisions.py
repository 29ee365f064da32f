"""Whether a photo (an 8-bit PNG or JPEG, read as the Kaggle-style photos were) gets a tumour decision from a model:
only when its test photos scored at least `serve.min_photo_accuracy` (metrics.json: classification_by_source.kaggle).
Serving applies it to every answer; the pipeline's summary says it before anything is served."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.inference.recorded_figures import finite, finite_interval


@dataclass(frozen=True)
class PhotoRecord:
    """How the model scored the test split's photos (metrics.json: classification_by_source.kaggle and its ci95)."""

    accuracy: float
    photos: int
    ci95: tuple[float, float] | None


def photo_record(metrics: dict) -> PhotoRecord | None:
    """The model's test figures on photos; None when none is known (its test split held no photo, or no metrics.json
    came with the model)."""
    # a hand-made file may hold anything: what is not as evaluate writes it reads as not known, never as an error
    # (every slice answer and /model/info read this)
    by_source = metrics.get("classification_by_source") if isinstance(metrics, dict) else None
    found = by_source.get("kaggle") if isinstance(by_source, dict) else None
    if not isinstance(found, dict):
        return None
    accuracy, photos = found.get("accuracy"), found.get("n")
    if not (finite(accuracy) and finite(photos) and photos >= 1 and float(photos).is_integer()):
        return None
    intervals = metrics.get("ci95")
    interval = finite_interval(intervals.get("classification_by_source.kaggle.accuracy")) \
        if isinstance(intervals, dict) else None
    return PhotoRecord(float(accuracy), int(photos), interval)


def photo_refusal(record: PhotoRecord | None, min_accuracy: float | None) -> str | None:
    """Why a photo gets no tumour decision from this model, or None when it gets one (`serve.min_photo_accuracy`).
    On the synthetic data the quick model decides BraTS slices at about 0.97 and photos near 0.6: a yes or no at
    that accuracy reads as a finding it is not."""
    if min_accuracy is None:
        return None
    if record is None:
        return ("no decision for a photo: how this model fares on photos is not known (its test split held none, or "
                f"no metrics.json came with it), and serve.min_photo_accuracy asks for {min_accuracy:g}")
    if record.accuracy >= min_accuracy:
        return None
    interval = f" (95 % interval {record.ci95[0]:.2f}-{record.ci95[1]:.2f})" if record.ci95 else ""
    # three decimals: at two, 28 of 33 (0.848) read "0.85, below 0.85"
    return (f"no decision for a photo: this model's accuracy on its {record.photos} test photos is "
            f"{record.accuracy:.3f}{interval}, below serve.min_photo_accuracy {min_accuracy:g}. The probability and "
            "the mask are shown, not a yes or no; an MRI slice as NPY or 16-bit PNG, or the whole volume, is decided")
