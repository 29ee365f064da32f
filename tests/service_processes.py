"""Real services for tests: start a server on 127.0.0.1 and a free port, wait until it answers, always stop it.

Used by tests/test_services.py (PostgreSQL, MLflow, moto's S3, Prefect). Every process starts in its own session
so that stopping it also stops what it spawned (uvicorn/gunicorn workers, flow-run subprocesses).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it; the tiny race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status < 500
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
    """Signal the process group, wait `grace` seconds, then kill what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def running(
    cmd: list[str],
    log: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen]:
    """Run `cmd` in the background until the block ends; enter only once `ready()` is true."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode} before it was ready:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:3]} not ready after {timeout:.0f}s:\n{log_tail(log)}")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc, stop_signal)


def service_env(**extra: str) -> dict[str, str]:
    """This environment with loopback never proxied and the venv's tools first on PATH."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str
    host: str = "127.0.0.1"

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def postgres_bin_dir() -> Path:
    """Debian installs PostgreSQL under /usr/lib/postgresql/<major>/bin (not on PATH); take the newest."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(re.sub(r"\D", "", p.parts[-3]) or 0)
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError("PostgreSQL not found: run scripts/install_services.sh as root (Debian package postgresql)")


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` system user."""
    if os.geteuid() != 0:
        return [], None, None
    account = pwd.getpwnam("postgres")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--"], account.pw_uid, account.pw_gid


@contextlib.contextmanager
def postgres_server(log_dir: Path, user: str = "slicewise", password: str = "test-only-password") -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, password auth over TCP, removed afterwards."""
    bin_dir = postgres_bin_dir()
    prefix, uid, gid = _as_server_user()
    # Its own directory outside pytest's tmp tree: as root, that tree is closed to the postgres user.
    base = Path(tempfile.mkdtemp(prefix="slicewise-pg-"))
    try:
        if uid is not None:
            os.chown(base, uid, gid)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if uid is not None:
            os.chown(pwfile, uid, gid)
        data = base / "data"
        initdb = [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}"]
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync"]
        subprocess.run(initdb + auth, check=True, capture_output=True, timeout=120)
        port = free_port()
        server = Postgres(port=port, user=user, password=password)
        # fsync off: a test cluster needs no durability, and it saves seconds on a shared disk.
        cmd = [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1"]
        cmd += ["-k", str(base), "-c", "fsync=off"]

        def ready() -> bool:
            probe = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
            return subprocess.run(probe, timeout=10).returncode == 0

        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
        with running(cmd, log_dir / "postgres.log", ready, timeout=60, stop_signal=signal.SIGINT):
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)
