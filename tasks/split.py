"""`split`: data/processed → data/splits, patient-level train/val/test lists, seeded and stratified.

BraTS patients are split whole, stratified by tumour burden; Kaggle images are split on their own after
near-duplicates (perceptual hash) are grouped, so no copy of a scan crosses splits. Both properties are checked
again before anything is written. The work is tasks/data/splitting.py's.
"""

from __future__ import annotations

from tasks import paths
from tasks.config import Settings
from tasks.data.splitting import split_dataset


def main(settings: Settings) -> dict:
    return split_dataset(paths.PROCESSED, paths.SPLITS, settings.split, settings.seed)
