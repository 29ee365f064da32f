"""SIGTERM as SystemExit(143) for the project's entry points (`python -m tasks`, `python -m flows`), and the exit
status a stop signal asks for even when the exception it raised came out as another one.

SIGTERM is what `timeout`, `docker stop`, Kubernetes, a cancelled Prefect run and torchrun stopping its workers send.
Taken as an exception, a step's MLflow run ends KILLED and its locks are released, where the process used to vanish
with its run left RUNNING; and a flow stops its throw-away Prefect server, which Prefect's own handler (the signal
sent again with the default action) left running.

A signal's exception is raised wherever the main thread is. Inside the import of a compiled module (a step imports
scipy, nibabel, torch as it starts) CPython turns it into "ImportError: initialization failed": a flow stopped by
SIGTERM then failed its step with that ImportError and exited with 1, not 143 (2 of 16 runs of tests/test_flows.py's
signal test, 2026-12-08). So the entry points exit with 128 + the signal's number when one came, whatever its
exception became: the signal is noted as it arrives (`exit_on_sigterm`'s handlers), and, because a running Prefect
flow answers SIGTERM with a handler of its own (TerminationSignal, which does not note it), it is also read from the
failure's chain of causes (`stop_signal`).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the stop signals this process's own handlers received, the first first


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


def stop_signal(failure: BaseException | None = None) -> signal.Signals | None:
    """The stop signal that ended this run: the first one noted, else one behind `failure` (its causes and contexts:
    a KeyboardInterrupt, a SystemExit(128 + n), Prefect's TerminationSignal); None when no signal stopped it."""
    if _received:
        return signal.Signals(_received[0])
    seen: set[int] = set()
    while failure is not None and id(failure) not in seen:
        seen.add(id(failure))
        if isinstance(failure, KeyboardInterrupt):
            return signal.SIGINT
        if isinstance(failure, SystemExit) and failure.code in {128 + s for s in STOP_SIGNALS}:
            return signal.Signals(failure.code - 128)
        # Prefect's (prefect.exceptions.TerminationSignal), known by name: this module does not import Prefect
        if type(failure).__name__ == "TerminationSignal" and getattr(failure, "signal", None) in STOP_SIGNALS:
            return signal.Signals(failure.signal)
        failure = failure.__cause__ or failure.__context__
    return None
