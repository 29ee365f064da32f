"""Training: one stage of the multitask U-Net (plan, resume, epochs, checkpoints), its steps and DDP.

    stage.py        a stage end to end: plan from settings, resume from last.pt, epochs, early stopping
    steps.py        one epoch's pieces: device, trained parameters, losses, validation metrics
    distributed.py  several processes under torchrun (DDP) taking the steps one process would
"""
