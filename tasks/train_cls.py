"""`train_cls`: the classification head, from seg's best weights → checkpoints/cls/{best,last}.pt.

Encoder and decoder frozen; the head learns tumour / no tumour from the Kaggle images and the BraTS slice labels
in mixed batches (train_cls.kaggle_share of each epoch from Kaggle), BCE loss; early stopping and best.pt on the
validation ROC-AUC (accuracy when it is undefined). The stage's loop, resume and checkpoints are tasks/training/'s.
"""

from __future__ import annotations

from tasks.config import Settings
from tasks.training.stage import run_stage


def main(settings: Settings) -> dict:
    return run_stage(settings, "cls")
