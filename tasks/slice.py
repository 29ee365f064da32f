"""`slice`: data/raw → data/processed, z-scored 2D axial slices in one shard per patient + a manifest.

One channel per modality of the active profile (profiles.<name>.modalities); each slice's BraTS labels (2020
convention, 0/1/2/4) as its mask.

BraTS patients are sliced in parallel (one patient in memory per worker), Kaggle images go into one shard per
class, and every input that cannot be used is listed with its reason in rejected.csv. data/processed is a
persistent DVC output: a patient whose files and slicing parameters are unchanged keeps its shard.
The work is tasks/data/slicing.py's; `map_jobs` lets the Prefect flow run the per-patient jobs on Dask.
"""

from __future__ import annotations

import time

from tasks import paths
from tasks.config import Settings
from tasks.data.slicing import JobMap, slice_dataset


def main(settings: Settings, map_jobs: JobMap | None = None) -> dict:
    started = time.perf_counter()
    cfg = settings.slice.model_copy(update={"modalities": settings.modalities})  # the active profile's channels
    result = slice_dataset(paths.RAW, paths.PROCESSED, cfg, settings.active.image_size,
                           settings.active.slice_stride, map_jobs)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
