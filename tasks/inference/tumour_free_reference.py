"""A volume answer's tumour beside what the same model paints on brains that have none.

BraTS holds no healthy brain, so evaluate measures it on the synthetic test patients rendered again without their
tumour (metrics.json's `tumour_free_volumes`, tasks/evaluation/tumour_free.py). Every /v1/predict/volume answer
carries that figure with its own finding: a whole tumour no larger than the largest the model left on a tumour-free
twin is a finding this model also makes where there is nothing to find. Serving and the web UI's patient viewer
both read it from here.
"""

from __future__ import annotations

import numpy as np

from tasks.data.orientation import BRATS_AFFINE
from tasks.inference.recorded_figures import finite, finite_interval, percent_range
from tasks.inference.volume import voxel_volume_cm3

# The twins are rendered on BraTS's grid (1 mm voxels), so their voxel counts convert to cm³ exactly
TWIN_VOXEL_CM3 = voxel_volume_cm3(np.linalg.norm(BRATS_AFFINE[:3, :3], axis=0))


def tumour_free_reference(metrics: dict, found_cm3: float, has_tumor: bool | None) -> dict | None:
    """The answer's `tumour_free_reference`: the twins' figures, whether this finding (`found_cm3` of whole tumour
    after the clean-up; `has_tumor`: the volume's decision, None when withheld) is no larger than the largest false
    tumour among them (None: nothing painted here or on the twins, or the decision withheld), and a note to read
    with a tumour found. None when the model's metrics hold no such figure (real data, or a model evaluated before
    2026-12-06)."""
    free = metrics.get("tumour_free_volumes")
    if not isinstance(free, dict) or not _count(free.get("n")):
        return None
    n, painted, called = _count(free["n"]), _count(free.get("with_predicted_tumour")), _count(free.get("called_tumour"))
    largest = round(_count(free.get("predicted_voxels_max")) * TWIN_VOXEL_CM3, 4)
    interval = _share_interval(free.get("with_predicted_tumour_ci95"))
    # out of distribution (decision withheld): brains drawn like the training data say nothing of such an input
    comparable = has_tumor is not None
    found = found_cm3 > 0
    within = found_cm3 <= largest if comparable and found and painted else None
    note = _note(_measured(n, painted, called, largest, interval), n, painted, found_cm3, within) \
        if comparable and (found or has_tumor) else None
    return {"patients": n, "with_predicted_tumour": painted, "with_predicted_tumour_ci95": interval,
            "called_tumour": called, "largest_cm3": largest, "finding_within": within, "note": note}


def _measured(n: int, painted: int, called: int, largest: float, interval: list[float] | None) -> str:
    share = f"95 % interval {percent_range(interval)}" if interval else None
    if painted:
        detail = ", ".join(filter(None, [f"{painted / n * 100:.0f} %", share]))
        left = f"left a false tumour in {painted} ({detail}; the largest {largest:g} cm³)"
    else:
        left = "left a false tumour in none" + (f" ({share})" if share else "")
    return (f"on its {n} test patients rendered again without their tumour (synthetic data), this model {left}, "
            f"and its decision called {called} of them tumour")


def _note(measured: str, n: int, painted: int, found_cm3: float, within: bool | None) -> str:
    if within:
        return (f"No larger than a false tumour: this whole tumour ({found_cm3:g} cm³) is within what the model "
                f"paints on brains without one; {measured}. It may be no tumour at all: read it with the slice "
                "scores and the clean-up list.")
    if found_cm3 <= 0:
        return f"For comparison, {measured}; here the decision says tumour with no tumour painted."
    # the largest of a few brains bounds nothing: on 20 more (bench.bench_tumour_free) the committed quick model's
    # false tumours reached 7.8 cm³ against 0.763 on its 7 twins
    larger = (f" This whole tumour ({found_cm3:g} cm³) is larger than those, but {n} brains do not bound how large a "
              "false one can be.") if painted else ""
    return f"For comparison, {measured}.{larger}"


def _share_interval(bounds) -> list[float] | None:
    """metrics.json's interval of the share of tumour-free brains given a false tumour, when it holds a valid one."""
    interval = finite_interval(bounds)
    return list(interval) if interval and all(0 <= b <= 1 for b in interval) else None


def _count(value) -> int:
    """A count from metrics.json: 0 unless a finite non-negative number."""
    return int(value) if finite(value) and value >= 0 else 0
