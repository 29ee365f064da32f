"""Prefect's throw-away server for `flows run`, started in a process session of its own.

Without a configured server, Prefect starts a temporary one (`SubprocessASGIServer`) as a child in the terminal's
process group. Ctrl-C, or `timeout` (which signals the whole group), stopped it together with the flow, and the flow
then retried the dead API for minutes, printing some 400 lines, before it exited with 1 instead of 130 (review
2026-12-07). Started in a session of its own, the server gets no signal meant for the terminal: the flow alone is
interrupted, reports it to a server still answering, and stops the server on its way out (Prefect's own `atexit`;
a SIGKILL of the flow still leaves it running, as before: nothing of the flow runs then).

It is Prefect's own server and command: the instance is registered where Prefect looks its throw-away server up
(`SubprocessASGIServer()`, under no port), as `prefect_test_harness` registers its own; only the process start
differs. Prefect is pinned (requirements.txt), and tests/test_flows.py starts one through this path.
"""

from __future__ import annotations

import subprocess
from functools import partial
from types import SimpleNamespace

from prefect.server.api import server as prefect_server


class ServerInItsOwnSession(prefect_server.SubprocessASGIServer):
    """Prefect's temporary server, its process in a session of its own."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        # the name `subprocess` inside Prefect's server module alone, for this one call: no one else's Popen changes
        prefect_server.subprocess = SimpleNamespace(Popen=partial(subprocess.Popen, start_new_session=True))
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = subprocess


def use_server_in_its_own_session() -> None:
    """Make the server Prefect starts when no API is configured one in a session of its own. A no-op when Prefect
    has one already (a test harness's, or one this process started)."""
    if None not in prefect_server.SubprocessASGIServer._instances:
        ServerInItsOwnSession()  # __new__ keeps it under the key None, where Prefect's SubprocessASGIServer() looks
