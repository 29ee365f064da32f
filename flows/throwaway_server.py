"""Prefect's throw-away server for `flows run`, started in a process session of its own.

Without a configured server, Prefect starts a temporary one (`SubprocessASGIServer`) as a child in the terminal's
process group. Ctrl-C, or `timeout` (which signals the whole group), stopped it together with the flow, and the flow
then retried the dead API for minutes, printing some 400 lines, before it exited with 1 instead of 130 (review
2026-12-07). Started in a session of its own, the server gets no signal meant for the terminal: the flow alone is
interrupted, reports it to a server still answering, and stops the server on its way out (Prefect's own `atexit`).
A flow killed outright (SIGKILL, the kernel's OOM killer) runs nothing on its way out, and its server, 230 MB, lived
on: a small watcher process stops it then (`stopped_when_this_process_ends`).

It is Prefect's own server and command: the instance is registered where Prefect looks its throw-away server up
(`SubprocessASGIServer()`, under no port), as `prefect_test_harness` registers its own; only the process start
differs. Prefect is pinned (requirements.txt), and tests/test_flows.py starts one through this path.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from functools import partial
from types import SimpleNamespace

from prefect.server.api import server as prefect_server


class ServerInItsOwnSession(prefect_server.SubprocessASGIServer):
    """Prefect's temporary server, its process in a session of its own."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        # the name `subprocess` inside Prefect's server module alone, for this one call: no one else's Popen changes
        prefect_server.subprocess = SimpleNamespace(Popen=partial(subprocess.Popen, start_new_session=True))
        try:
            server = super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = subprocess
        try:  # kept for the process's life: its end of the pipe, closed, would stop the server
            self.watcher = stopped_when_this_process_ends(server.pid)
        except OSError as exc:  # no process to be had (memory, process limits): the server runs on, unwatched
            logging.getLogger(__name__).warning("no watcher for Prefect's throw-away server (%s): a flow killed "
                                                "outright would leave it running", exc)
        return server


# The watcher reads its stdin, a pipe only the flow's process holds open (and a child forked from it, a step's pool
# worker, which ends with its step), to the end of the stream. That comes when the process has ended, however it
# ended: the kernel closes a dead process's files. Then it stops the server's session; a server Prefect has stopped
# already is gone, and there is nothing to stop; one that outlives SIGTERM by 10 s is killed. A python without
# site packages: a few MB.
WATCHER = """import os, signal, sys, time
sys.stdin.buffer.read()
session = int(sys.argv[1])
try:
    os.killpg(session, signal.SIGTERM)
    for _ in range(100):  # Prefect's own stop waits 5 s for the server, then kills it
        time.sleep(0.1)
        os.killpg(session, 0)
    os.killpg(session, signal.SIGKILL)
except (ProcessLookupError, PermissionError):
    pass
"""


def stopped_when_this_process_ends(server_session: int) -> subprocess.Popen:
    """Start the watcher that stops `server_session` (the server's pid, which leads its own session) once this process
    has ended. In a session of its own too: the terminal's Ctrl-C is the flow's to answer."""
    return subprocess.Popen([sys.executable, "-S", "-c", WATCHER, str(server_session)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def use_server_in_its_own_session() -> None:
    """Make the server Prefect starts when no API is configured one in a session of its own. A no-op when Prefect
    has one already (a test harness's, or one this process started)."""
    if None not in prefect_server.SubprocessASGIServer._instances:
        ServerInItsOwnSession()  # __new__ keeps it under the key None, where Prefect's SubprocessASGIServer() looks
