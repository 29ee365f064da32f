"""SIGTERM as SystemExit(143) for the project's entry points (`python -m tasks`, `python -m flows`), and the exit
status a stop signal asks for even when the exception it raised came out as another one.

SIGTERM is what `timeout`, `docker stop`, Kubernetes, a cancelled Prefect run and torchrun stopping its workers send.
Taken as an exception, a step's MLflow run ends KILLED and its locks are released, where the process used to vanish
with its run left RUNNING; and a flow stops its throw-away Prefect server, which Prefect's own handler (the signal
sent again with the default action) left running.

A signal's exception is raised wherever the main thread is. Inside the import of a compiled module (a step imports
scipy, nibabel, torch as it starts) CPython turns it into "ImportError: initialization failed": a flow stopped by
SIGTERM then failed its step with that ImportError and exited with 1, not 143 (seen once in about fifteen runs of
tests/test_flows.py's signal test, 2026-12-08). So each stop signal is also noted here (`stop_signal_exit_code`), and
the entry points exit with 128 + its number when one came, whatever the exception became on its way out.
"""

from __future__ import annotations

import signal

_received: list[int] = []  # the stop signals this process received, the first first


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit(143); SIGTERM and SIGINT (still KeyboardInterrupt) are noted as they come."""
    def terminate(signum, frame):
        _received.append(signum)
        raise SystemExit(128 + signum)

    def interrupt(signum, frame):
        _received.append(signum)
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without this handler

    signal.signal(signal.SIGTERM, terminate)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # one set by someone else stays theirs
        signal.signal(signal.SIGINT, interrupt)


def stop_signal_exit_code() -> int | None:
    """128 + the first stop signal this process received (130 for SIGINT, 143 for SIGTERM), or None when none came."""
    return 128 + _received[0] if _received else None


def stop_signal_name() -> str:
    return signal.Signals(_received[0]).name if _received else ""
