"""No secret in any answer (issue 13, finding 4): a password in MLFLOW_TRACKING_URI never reaches an HTTP answer,
a log line, an error message, a report, the serving cache or a store.

The end-to-end tests register a model through a real `mlflow server` reached as `http://user:PASSWORD@...`, serve
it, and search every output for the password; a server that cannot be reached is tried too, since error messages
are where URIs leak.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.errors import SliceWiseError
from tasks.redaction import redact
from tests.conftest import REPO

PASSWORD = "Pw-d0nt-leak-7f3a9"


@pytest.mark.parametrize(("text", "expected"), [
    (f"http://slicewise:{PASSWORD}@mlflow:5000/api", "http://slicewise:***@mlflow:5000/api"),
    (f"postgresql+psycopg2://u:{PASSWORD}@db:5432/mlflow", "postgresql+psycopg2://u:***@db:5432/mlflow"),
    (f"see https://host/x?a=1&token={PASSWORD}&b=2 now", "see https://host/x?a=1&token=***&b=2 now"),
    (f"s3://bucket/k?X-Amz-Signature={PASSWORD}", "s3://bucket/k?X-Amz-Signature=***"),
    ("sqlite:////work/main/mlflow.db", "sqlite:////work/main/mlflow.db"),
    ("http://127.0.0.1:5000 and a:b pair", "http://127.0.0.1:5000 and a:b pair"),
])
def test_redact_masks_credentials_in_any_text(text, expected):
    assert redact(text) == expected


def test_redact_masks_the_environments_secret_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://slicewise:{PASSWORD}@mlflow:5000")
    assert redact(f"auth failed for password {PASSWORD!r}") == "auth failed for password '***'"
    error = SliceWiseError(f"cannot reach http://slicewise:{PASSWORD}@mlflow:5000", f"x?token={PASSWORD}")
    assert PASSWORD not in str(error) and PASSWORD not in error.reason and PASSWORD not in error.path


def test_log_records_are_redacted_whoever_logs_them(monkeypatch, caplog):
    from tasks.redaction import install_log_redaction

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://u:{PASSWORD}@h")
    install_log_redaction()
    caplog.set_level(logging.INFO)
    logging.getLogger("mlflow.anything").warning("store %s unreachable", f"http://u:{PASSWORD}@h")
    try:
        raise ConnectionError(f"refused: http://u:{PASSWORD}@h/api")
    except ConnectionError:
        logging.getLogger("urllib3").exception("while talking to the store")
    assert PASSWORD not in caplog.text and "http://u:***@h" in caplog.text
    assert "refused" in caplog.text  # the traceback is kept, only masked


def every_file_under(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and ".venv" not in path.parts:
                yield path


def leaks(texts: list[str], roots: list[Path]) -> list[str]:
    """Where the password (or its URL-encoded form) appears: answers, logs, and every file under `roots`."""
    from urllib.parse import quote

    forms = {PASSWORD.encode(), quote(PASSWORD).encode()}
    found = [f"text #{i}: ...{t[max(t.find(PASSWORD) - 80, 0):t.find(PASSWORD) + 40]}..."
             for i, t in enumerate(texts) if PASSWORD in t]
    for path in every_file_under(*roots):
        data = path.read_bytes()
        if any(form in data for form in forms):
            found.append(str(path))
    return found


@pytest.mark.slow
def test_no_output_holds_the_tracking_password(tmp_path, tiny_settings, monkeypatch, caplog, capfd):
    from serve.api import create_app
    from serve.model_source import RegistrySource
    from tasks import export, paths, register
    from tasks.config import load_settings
    from tests.release_factory import make_release_project, tracked
    from tests.serve_factory import REPO, brain_slice, local_client, png_bytes
    from tests.service_processes import free_port, http_ok, running

    port, server_dir, root = free_port(), tmp_path / "server", tmp_path / "project"
    server_dir.mkdir()
    root.mkdir()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{server_dir / 'mlflow.db'}", "--artifacts-destination", str(server_dir / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    caplog.set_level(logging.DEBUG)
    texts = []
    with running(cmd, tmp_path / "server.log", lambda: http_ok(f"http://127.0.0.1:{port}/health"), cwd=server_dir,
                 timeout=180):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://slicewise:{PASSWORD}@127.0.0.1:{port}")
        monkeypatch.chdir(root)
        settings = tracked(tiny_settings)
        make_release_project(root, settings)
        export.main(settings)
        texts.append(str(register.main(settings)))
        report = (root / paths.REGISTER_REPORT).read_text()
        assert f"slicewise:***@127.0.0.1:{port}" in report  # the store is named, its password is not
        texts.append(report)  # the next, failing register removes the file

        serve_cfg = load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0})
        source = RegistrySource(settings.registry, settings.tracking, root / paths.SERVE_CACHE)
        with local_client(create_app(source, serve_cfg)) as client:
            answers = [client.get("/healthz"), client.get("/model/info"), client.post("/model/reload"),
                       client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice(size=64)))})]
            assert [a.status_code for a in answers] == [200, 200, 200, 200]
            assert answers[1].json()["tracking_uri"] == f"http://slicewise:***@127.0.0.1:{port}"
            texts += [a.text for a in answers]

    # The same store, now unreachable: where error messages carry the URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://slicewise:{PASSWORD}@127.0.0.1:{free_port()}")
    with pytest.raises(SliceWiseError) as error:
        register.main(settings.model_copy(update={"tracking": settings.tracking.model_copy(
            update={"max_attempts": 1})}))
    texts.append(str(error.value))
    source = RegistrySource(settings.registry, settings.tracking, tmp_path / "empty-cache")
    with local_client(create_app(source, serve_cfg)) as client:
        health = client.get("/healthz").json()
        assert health["model_loaded"] is False and "***" in health["detail"]
        texts.append(str(health))
    out, err = capfd.readouterr()
    texts += [out, err, caplog.text]
    assert list((root / paths.SERVE_CACHE).rglob("*.json"))  # champion.json and card.json, searched below
    assert not leaks(texts, [root, server_dir, tmp_path / "empty-cache"]), leaks(texts, [root, server_dir])


@pytest.mark.slow
def test_the_server_process_never_logs_or_answers_the_password(tmp_path):
    """`python -m serve` against an unreachable store with a password in its URI: /healthz and the whole log."""
    import requests

    from tests.service_processes import free_port, http_ok, running, service_env
    from tests.serve_factory import REPO

    port = free_port()
    uri = f"http://slicewise:{PASSWORD}@127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    env = service_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_TIMEOUT="2", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "serve", "--port", str(port), "--poll-seconds", "0", "--log-level", "debug",
               "--params", str(REPO / "params.yaml")]
    with running(command, log, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), env=env, cwd=tmp_path,
                 timeout=120):
        session = requests.Session()
        session.trust_env = False
        health = session.get(f"http://127.0.0.1:{port}/healthz", timeout=10).text
        reload = session.post(f"http://127.0.0.1:{port}/model/reload", timeout=60).text
    assert "***@127.0.0.1" in health
    assert not leaks([health, reload, log.read_text()], [tmp_path]), log.read_text()[-3000:]
    # a log file is no terminal: one plain line per record (tasks/log_output.py), not Rich's 80 padded columns
    lines = log.read_text().splitlines()
    assert any(re.match(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ", line) for line in lines)
    assert not [line for line in lines if line != line.rstrip()]


def test_a_raw_library_error_in_a_step_prints_its_traceback_without_the_password(monkeypatch):
    """Not every MLflow or requests error is wrapped in a SliceWiseError: the CLI's traceback of one is masked too,
    and so is the flow's one-line failure of a stage."""
    from typer.testing import CliRunner

    import tasks.__main__ as cli

    def failing_step(step, params):
        raise RuntimeError("API request to http://alice:Hunter2Secret@mlflow.example:5000/api failed")

    monkeypatch.setattr(cli, "run_step", failing_step)
    result = CliRunner().invoke(cli.app, ["register"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "RuntimeError" in result.output and "failing_step" in result.output
    assert "Hunter2Secret" not in result.output and "alice:***@mlflow.example" in result.output


def test_a_step_off_a_terminal_logs_one_unwrapped_line_per_record():
    """`make run > log` and CI logs: Rich wrapped each record at 80 columns and padded it; off a terminal the steps
    log plain lines (still redacted), on one line however long."""
    script = ("import logging, sys; from tasks.__main__ import configure_logging; from tasks.redaction import "
              "install_log_redaction; install_log_redaction(); configure_logging(); "
              "logging.getLogger('tasks.x').warning('word ' * 40 + 'postgresql://u:hunter2@db/mlflow')")
    # Rich takes FORCE_COLOR or TTY_COMPATIBLE=1 as a terminal, whatever stderr is: a CI may set them
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = str(REPO)
    err = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stderr
    assert len(err.splitlines()) == 1 and err.rstrip("\n") == err.rstrip()  # one line, no padding
    assert "WARNING" in err and "word " * 40 in err and "hunter2" not in err
