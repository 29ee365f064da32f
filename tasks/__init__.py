"""SliceWise pipeline steps: one module per step, each a thin `main(settings)` over the library beneath.

    fetch.py … register.py   the nine steps: read inputs, call the library, write outputs
    data/ training/ inference/ evaluation/ release/ tracking/   the library, by concern
    config.py paths.py errors.py io.py   settings, paths, the error type, atomic files and JSON

A step never imports another step. Nothing here knows about Prefect or DVC; `python -m tasks <step>` is the CLI
that dvc.yaml calls.
"""

import os

# Nothing phones home (tests/test_telemetry.py): MLflow's client telemetry and the analytics of a Prefect server
# started from here are off unless a user turns them on. Set on import of this package, which `python -m tasks`,
# `flows` and `serve` import before MLflow or Prefect; DVC's analytics are off in .dvc/config.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# The nine steps, in order: dvc.yaml stage names = Prefect task names = modules of this package.
STEPS = ("fetch", "slice", "split", "train_seg", "train_cls", "train_joint", "evaluate", "export", "register")
