"""SliceWise pipeline steps: one module per step, each a thin `main(settings)` over the library beneath.

    fetch.py … register.py   the nine steps: read inputs, call the library, write outputs
    data/ training/ inference/ evaluation/ release/ tracking/   the library, by concern
    config.py paths.py errors.py io.py   settings, paths, the error type, atomic files and JSON

A step never imports another step. Nothing here knows about Prefect or DVC; `python -m tasks <step>` is the CLI
that dvc.yaml calls.
"""

# The nine steps, in order: dvc.yaml stage names = Prefect task names = modules of this package.
STEPS = ("fetch", "slice", "split", "train_seg", "train_cls", "train_joint", "evaluate", "export", "register")
