"""Training: one stage of the multitask U-Net (plan, resume, epochs, checkpoints), its steps and DDP.

    stage.py        a stage end to end: its epochs, validation, logging, the floor check
    plan.py         what a stage will do, from the settings, and the run key a checkpoint must match to resume
    resume.py       the state between epochs: best.pt / last.pt written, read back, early stopping
    loss.py         each stage's loss, from sums that split across DDP processes, and the region targets
    steps.py        one epoch's pieces: training steps, validation passes and their metrics
    device.py       where a stage computes: device, memory layout, bf16 autocast, compile, the batches' copy
    optimizer.py    what each stage trains and at which LR: AdamW groups, frozen parts, warm-up and cosine decay
    distributed.py  several processes under torchrun (DDP) taking the steps one process would
"""
