"""`train_seg`: segmentation warm-up of the multitask U-Net → checkpoints/seg/{best,last}.pt.

Encoder and segmentation decoder on the BraTS training slices (train_seg.tumour_slices_only: only those with
tumour), Dice + BCE loss pooled over the batch; early stopping and best.pt on the validation Dice.
The stage's loop, resume and checkpoints are tasks/training/'s.
"""

from __future__ import annotations

from tasks.config import Settings
from tasks.training.stage import run_stage


def main(settings: Settings) -> dict:
    return run_stage(settings, "seg")
