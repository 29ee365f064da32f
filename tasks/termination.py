"""SIGTERM as SystemExit(143) for the project's entry points (`python -m tasks`, `python -m flows`).

SIGTERM is what `timeout`, `docker stop`, Kubernetes, a cancelled Prefect run and torchrun stopping its workers send.
Taken as an exception, a step's MLflow run ends KILLED and its locks are released, where the process used to vanish
with its run left RUNNING; and a flow stops its throw-away Prefect server, which Prefect's own handler (the signal
sent again with the default action) left running.
"""

from __future__ import annotations

import signal


def exit_on_sigterm() -> None:
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
