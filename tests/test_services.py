"""The supporting services, really started without Docker: each test runs the real server on 127.0.0.1 and a free
port (PostgreSQL + MLflow, moto's S3 for DVC, a Prefect server and worker) and always stops it.

These are the same programs and settings docker/compose.yaml runs; they prove the stack's wiring (MLflow's
registry on PostgreSQL with proxied artifacts, a DVC S3 remote, a process work pool) where no Docker engine is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tasks import paths
from tasks.config import load_settings
from tests.service_processes import free_port, http_ok, log_tail, postgres_server, running, service_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


# ---------------------------------------------------------------- MLflow on PostgreSQL


def onnx_outputs(model, images: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"image": images})


def test_register_step_on_an_mlflow_server_backed_by_postgres(tmp_path, tiny_settings, monkeypatch):
    """export + register (the real steps) against `mlflow server` on PostgreSQL, then the champion read back."""
    import mlflow
    import psycopg2

    from tasks import export, register
    from tests.release_factory import make_release_project, tracked

    project = tmp_path / "project"
    monkeypatch.chdir(make_release_project(project, tiny_settings))  # data, joint checkpoint, good metrics
    settings = tracked(tiny_settings)
    name, alias = settings.registry.model_name, settings.registry.alias
    artifacts = tmp_path / "mlartifacts"
    previous_uri = mlflow.get_tracking_uri()
    with postgres_server(tmp_path) as pg:
        pg.create_database("mlflow")
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        # The command the compose `mlflow` service runs, on loopback.
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg.url("mlflow"),
               "--artifacts-destination", str(artifacts), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            with running(
                cmd, tmp_path / "mlflow.log", lambda: http_ok(f"{uri}/health"), env=service_env(), timeout=240
            ):
                export.main(settings)
                result = register.main(settings)
                mlflow.set_tracking_uri(uri)
                (tmp_path / "loaded").mkdir()  # not MLflow's own temporary folder, which it never removes
                champion = mlflow.onnx.load_model(f"models:/{name}@{alias}", dst_path=str(tmp_path / "loaded"))
        finally:
            mlflow.set_tracking_uri(previous_uri)
        # The registry really lives in PostgreSQL.
        conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="mlflow")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (name,))
            aliases = dict(cur.fetchall())
            cur.execute("SELECT key, value FROM model_version_tags WHERE name = %s", (name,))
            tags = dict(cur.fetchall())
        conn.close()
        # store-check reads the database itself (tasks/release/store_moved.py): this release is held there
        from tasks.release.store_moved import version_gone

        assert not version_gone(pg.url("mlflow"), name, str(result["version"]), result["onnx_sha256"])
        assert version_gone(pg.url("mlflow"), name, str(result["version"]), "another model's")
        assert version_gone(pg.url("mlflow"), name, str(int(result["version"]) + 1))

    assert result["promoted"] and result["alias"] == alias, result
    assert aliases == {alias: int(result["version"])}
    assert tags["onnx_sha256"] == result["onnx_sha256"]
    # ... and the model file in the proxied artifact store; the champion served back is the exported model.
    assert list(artifacts.rglob("model.onnx")), "the ONNX file was not uploaded through the server"
    size = settings.active.image_size
    images = np.random.default_rng(0).normal(size=(2, settings.in_channels, size, size)).astype(np.float32)
    exported = str(project / paths.ONNX_MODEL)
    for served, expected in zip(onnx_outputs(champion, images), onnx_outputs(exported, images)):
        np.testing.assert_array_equal(served, expected)


def test_a_server_started_afresh_at_the_same_address_no_longer_holds_the_registered_version(tmp_path, monkeypatch):
    """`make run` asks after DVC whether the store still holds the version register.json records: an MLflow server
    started again on an empty database at the same address does not, and `register` must run again. A server that
    does not answer is not judged (the step that next needs it says so)."""
    from mlflow import MlflowClient

    from tasks.release.store_moved import registered_elsewhere, version_gone

    monkeypatch.chdir(tmp_path)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    paths.REPORTS.mkdir()
    paths.REGISTER_REPORT.write_text(json.dumps({"registered": True, "model_name": "slicewise", "version": "1",
                                                 "tracking_uri": uri}))

    def server(database: str):
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / database}",
               "--artifacts-destination", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
        return running(cmd, tmp_path / "mlflow.log", lambda: http_ok(f"{uri}/health"), env=service_env(), timeout=240)

    with server("first.db"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("slicewise")
        run = client.create_run(client.create_experiment("registered")).info.run_id
        client.create_model_version("slicewise", source=f"runs:/{run}/model", run_id=run)
        assert not version_gone(uri, "slicewise", "1") and registered_elsewhere() is None
        assert version_gone(uri, "slicewise", "2")
        # review 2026-12-07: a params.yaml mid-edit (`tasks check`'s to judge) made this a traceback
        paths.PARAMS.write_text("seed: [\n")
        assert registered_elsewhere() is None
        paths.PARAMS.unlink()
    assert not version_gone(uri, "slicewise", "1")  # nobody answers: not judged
    with server("second.db"):  # the same address, an empty store
        assert registered_elsewhere() == (f"{paths.REGISTER_REPORT} records version 1 of 'slicewise' in {uri}, "
                                          "which no longer holds it")


# ---------------------------------------------------------------- DVC remote on an S3-compatible server


def aws_env(tmp_path: Path) -> dict[str, str]:
    """Fake credentials for moto; no profile or config file of this machine leaks in."""
    env = service_env(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
    )
    for leaked in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(leaked, None)
    return env


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_dvc_push_and_pull_through_an_s3_remote(tmp_path):
    import boto3

    env = aws_env(tmp_path)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    repo = tmp_path / "repo"
    data = repo / "data" / "raw"
    (data / "kaggle" / "yes").mkdir(parents=True)
    rng = np.random.default_rng(1)
    np.save(data / "volume.npy", rng.normal(size=(4, 8, 8)).astype(np.float32))
    (data / "kaggle" / "yes" / "y1.bin").write_bytes(rng.bytes(2048))
    before = digests(data)

    def dvc(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"

    with running(server, tmp_path / "moto.log", lambda: http_ok(f"{endpoint}/moto-api/"), env=env, timeout=60):
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        s3.create_bucket(Bucket="slicewise-dvc")
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=30)
        dvc("init", "-q")
        dvc("add", "data/raw")
        # Exactly the README's commands for a local S3-compatible remote.
        dvc("remote", "add", "-d", "local-s3", "s3://slicewise-dvc")
        dvc("remote", "modify", "local-s3", "endpointurl", endpoint)
        dvc("push")
        stored = [obj["Key"] for obj in s3.list_objects_v2(Bucket="slicewise-dvc").get("Contents", [])]

        shutil.rmtree(repo / "data" / "raw")
        shutil.rmtree(repo / ".dvc" / "cache")
        dvc("pull")
    # Two files plus the directory listing DVC stores for a tracked folder.
    assert len(stored) == len(before) + 1, stored
    assert digests(data) == before


# ---------------------------------------------------------------- Prefect work pool and worker

# A package-shaped flow importing a sibling package, as flows/pipeline.py imports tasks/.
TINY_FLOW = """
import os
from pathlib import Path

from prefect import flow

from tinyhelper import MARKER


@flow(name="tiny")
def tiny() -> int:
    \"\"\"Leaves its process id in the working directory the deployment's pull step chose.\"\"\"
    Path(MARKER).write_text(str(os.getpid()))
    return os.getpid()
"""


def write_tiny_project(source: Path) -> None:
    files = {"tinyflows/tiny.py": TINY_FLOW, "tinyhelper/__init__.py": "MARKER = 'ran-by-worker.txt'\n"}
    for relative, text in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).parent.joinpath("__init__.py").touch()
        (source / relative).write_text(text)


# What Prefect's own client retries (prefect/client/base.py): its server answers 503 for errors a client may retry
# (SQLite's "database is locked" while its scheduler writes), which failed this test's bare request once in CI.
RETRIED_STATUSES = {429, 502, 503}


def api(url: str, payload: dict | None = None, attempts: int = 5) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRIED_STATUSES or attempt == attempts - 1:
                raise
            time.sleep(2**attempt)


def wait_for_final_state(api_url: str, flow_run_id: str, worker, log: Path, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(f"{api_url}/flow_runs/{flow_run_id}")
        if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return run
        assert worker.poll() is None, f"the worker died:\n{log_tail(log)}"
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout}s:\n{log_tail(log)}")


def test_worker_on_process_pool_runs_a_deployment(tmp_path):
    source = tmp_path / "flow-source"
    write_tiny_project(source)
    # the source's own params.yaml gives the deployment its cron: its runs read that one, not this checkout's
    source_cron = "0 4 * * 2"
    (source / "params.yaml").write_text((REPO / paths.PARAMS).read_text().replace('cron: "0 3 * * 1"',
                                                                                f'cron: "{source_cron}"'))
    port, health_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect_home = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env = service_env(
        **prefect_home,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_UI_ENABLED="false",
    )
    server_env.pop("PREFECT_API_URL", None)
    # What `make worker` runs, pointed at the throw-away server and the tiny flow instead of the pipeline.
    worker_env = service_env(
        **prefect_home,
        PREFECT_API_URL=api_url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_WEBSERVER_PORT=str(health_port),
        SLICEWISE_PYTHON=sys.executable,
        SLICEWISE_FLOW_SOURCE=str(source),
        SLICEWISE_FLOW_ENTRYPOINT="tinyflows.tiny.tiny",
    )
    script = [str(REPO / "scripts" / "prefect_worker.sh")]
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    worker_log = tmp_path / "worker.log"

    with running(server, tmp_path / "server.log", lambda: http_ok(f"{api_url}/health"), env=server_env, timeout=180):
        worker_health = f"http://127.0.0.1:{health_port}/health"
        worker_cmd = [*script, "--with-healthcheck"]
        with running(worker_cmd, worker_log, lambda: http_ok(worker_health), env=worker_env, timeout=180) as worker:
            pool = api(f"{api_url}/work_pools/slicewise-pool")
            deployment = api(f"{api_url}/deployments/name/tiny/worker")
            flow_run = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", {})
            final = wait_for_final_state(api_url, flow_run["id"], worker, worker_log)
            worker_pid = worker.pid
        # Run again against the existing pool and deployment: creating them must be idempotent.
        rerun = subprocess.run([*script, "--run-once"], env=worker_env, capture_output=True, text=True, timeout=180)
        # The real pipeline's deployment (registered only, not run: too slow here) resolves from this checkout.
        deploy = [sys.executable, str(REPO / "scripts" / "deploy_flow.py"), "--pool", "slicewise-pool"]
        deployed = subprocess.run(deploy, cwd=REPO, env={**worker_env, "PYTHONPATH": str(REPO)}, capture_output=True,
                                  text=True, timeout=180)  # fmt: skip
        pipeline = api(f"{api_url}/deployments/name/slicewise-pipeline/worker") if deployed.returncode == 0 else {}

    assert pool["type"] == "process"
    assert deployment["work_pool_name"] == "slicewise-pool"
    schedule = load_settings(REPO / paths.PARAMS).schedule
    assert schedule.cron != source_cron and load_settings(source / "params.yaml").schedule.cron == source_cron
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [source_cron]
    assert final["state"]["type"] == "COMPLETED", log_tail(worker_log)
    # The flow ran in a process of its own, started by the worker in the deployment's source directory.
    flow_pid = int((source / "ran-by-worker.txt").read_text())
    assert flow_pid not in {os.getpid(), worker_pid}
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert pipeline["entrypoint"] == "flows.pipeline.slicewise_pipeline"
    assert [s["schedule"]["cron"] for s in pipeline["schedules"]] == [schedule.cron]


def test_the_worker_refuses_a_schedule_switch_it_does_not_know_before_it_creates_anything(tmp_path):
    """Review 2026-12-07: SLICEWISE_SCHEDULE takes `params` or `none`; "off" deployed the weekly cron, quietly."""
    from tests.conftest import REPO

    calls = tmp_path / "calls.log"
    python = tmp_path / "python"  # a stand-in interpreter: any call of it is recorded, none must happen
    python.write_text(f"#!/bin/bash\necho \"$@\" >> {calls}\n")
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SLICEWISE_PYTHON": str(python), "SLICEWISE_FLOW_SOURCE": str(tmp_path)}
    for value in ("off", "false", "Params"):
        done = subprocess.run([str(REPO / "scripts" / "prefect_worker.sh")], env={**env, "SLICEWISE_SCHEDULE": value},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: SLICEWISE_SCHEDULE={value}: use params (the cron of params.yaml's schedule) or none")
    assert not calls.exists()


def test_deploying_the_worker_with_a_schedule_prefect_refuses_is_one_line_naming_the_key(tmp_path):
    """`make worker` deploys through scripts/deploy_flow.py, which built the schedule itself: a cron Prefect refuses
    ended in a traceback (flows serve's check, retraining_schedule, gives one line)."""
    from tests.conftest import REPO

    params = tmp_path / "params.yaml"
    # a cron of five fields whose numbers are in range (params.yaml's own check passes it: 15W, the weekday nearest
    # the 15th, is cron syntax), which Prefect's parser refuses; weekday 9 is refused when params.yaml is read
    for cron, words in (("0 3 15W * *", "is not a schedule Prefect accepts"),
                        ("0 3 * * 9", "'9' is outside the weekday field's 0-7")):
        params.write_text((REPO / "params.yaml").read_text().replace('cron: "0 3 * * 1"', f'cron: "{cron}"'))
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "deploy_flow.py"), "--params", str(params)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
        assert f"schedule.cron '{cron}'" in done.stderr and words in done.stderr, done.stderr
        assert done.stderr.startswith(f"error: {params}: ")  # the file it read, not the project's params.yaml
