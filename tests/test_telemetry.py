"""Nothing phones home: the tools' usage telemetry is off by default (DVC's analytics and update check in
.dvc/config; MLflow's client telemetry and Prefect's server analytics from tasks/__init__.py, which every entry point
imports first). The machines here are offline, and a clinical team's pipeline should not report what it runs."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.project_copy import ROOT, copy_project

# Any one of these makes MLflow skip its telemetry by itself (it takes them as a CI machine or a test run).
CI_MARKERS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
              "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
              "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID")
TOOL_SWITCHES = ("DVC_NO_ANALYTICS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")


def user_environment(**extra: str) -> dict[str, str]:
    """This environment as a user's shell would have it: no CI markers, no telemetry switches of our own."""
    return {k: v for k, v in os.environ.items() if k not in CI_MARKERS + TOOL_SWITCHES} | extra


def test_dvc_commands_leave_no_analytics_report_behind(tmp_path):
    """With analytics on, every dvc command writes a report into the temporary folder for a detached process to post
    to dvc.org; offline that process fails and the report stays (hundreds of files after a day of runs)."""
    project = copy_project(tmp_path / "project", stages=["fetch"])
    reports = tmp_path / "tmp"
    reports.mkdir()
    for command in (["status"], ["version"]):
        result = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), *command], cwd=project, capture_output=True,
                                text=True, timeout=120, env=user_environment(TMPDIR=str(reports)))
        assert result.returncode == 0, result.stdout + result.stderr
    assert not list(reports.iterdir())


def test_entry_points_start_mlflow_and_prefect_without_telemetry():
    """`python -m tasks|flows|serve` import the project before MLflow: its client starts no telemetry sender, and a
    Prefect server started from here (the flow's ephemeral one) sends no analytics. A user may still opt in."""
    probe = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "import mlflow\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "from prefect.settings import get_current_settings\n"
        "print(get_telemetry_client() is None, get_current_settings().server.analytics_enabled)\n"
    )
    for entry in ("tasks.__main__", "flows.__main__", "serve.__main__"):
        result = subprocess.run([sys.executable, "-c", probe, entry], cwd=ROOT, capture_output=True, text=True,
                                timeout=180, env=user_environment())
        assert result.stdout.split() == ["True", "False"], (entry, result.stdout, result.stderr[-2000:])
    opted_in = subprocess.run([sys.executable, "-c", probe, "tasks.__main__"], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, env=user_environment(PREFECT_SERVER_ANALYTICS_ENABLED="true"))
    assert opted_in.stdout.split()[1] == "True", opted_in.stderr[-2000:]


def test_the_servers_make_starts_keep_telemetry_off_unless_the_user_turns_it_on(tmp_path):
    """Review 2026-12-07: `make mlflow-ui` and `make prefect-ui` set the switches on the command line, over what the
    user exported, so the docs' way back (`PREFECT_SERVER_ANALYTICS_ENABLED=true make prefect-ui`) did nothing.
    Stand-in servers print the switch they were started with."""
    import shutil

    from tests.conftest import own_make

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for tool, switch in (("mlflow", "MLFLOW_DISABLE_TELEMETRY"), ("prefect", "PREFECT_SERVER_ANALYTICS_ENABLED")):
        (tmp_path / ".venv" / "bin" / tool).write_text(f'#!/bin/bash\necho "{switch}=${switch}"\n')
        (tmp_path / ".venv" / "bin" / tool).chmod(0o755)

    def started(target: str, **switches: str) -> str:  # -o setup: the venv is not installed here
        done = subprocess.run(["make", "-s", "--no-print-directory", "-o", "setup", target], cwd=tmp_path,
                              capture_output=True, text=True, env=own_make(user_environment(**switches)), timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert started("mlflow-ui") == "MLFLOW_DISABLE_TELEMETRY=true"
    assert started("mlflow-ui", MLFLOW_DISABLE_TELEMETRY="false") == "MLFLOW_DISABLE_TELEMETRY=false"
    assert started("prefect-ui") == "PREFECT_SERVER_ANALYTICS_ENABLED=false"
    assert started("prefect-ui", PREFECT_SERVER_ANALYTICS_ENABLED="true") == "PREFECT_SERVER_ANALYTICS_ENABLED=true"
