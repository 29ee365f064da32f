"""SliceWise pipeline steps: one module per step, each a plain function plus a thin `main(settings)`.

Nothing here knows about Prefect or DVC; `python -m tasks <step>` is the CLI that dvc.yaml calls.
"""

# The nine steps, in order: dvc.yaml stage names = Prefect task names = modules of this package.
STEPS = ("fetch", "slice", "split", "train_seg", "train_cls", "train_joint", "evaluate", "export", "register")
