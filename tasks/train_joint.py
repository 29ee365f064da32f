"""`train_joint`: everything trainable, from cls's best weights → checkpoints/joint/{best,last}.pt.

L = L_seg + λ·L_cls (λ = train_joint.cls_weight, L_seg on the samples that have a mask), a lower learning rate
for the encoder than for the heads; early stopping and best.pt on the mean of validation Dice and accuracy.
This is the model evaluate, export and register ship. The stage's loop, resume and checkpoints are
tasks/training/'s.
"""

from __future__ import annotations

from tasks.config import Settings
from tasks.training.stage import run_stage


def main(settings: Settings) -> dict:
    return run_stage(settings, "joint")
