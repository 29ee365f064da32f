"""`python -m flows run` (the pipeline once, through Prefect) and `python -m flows serve` (the scheduled deployment)."""

from __future__ import annotations

import logging
import os
import sys
import urllib.request
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks import paths
from tasks.errors import SliceWiseError
from tasks.log_output import log_handler, report_console
from tasks.termination import exit_on_sigterm, stop_signal

if TYPE_CHECKING:  # for the annotation only: this module imports the pipeline lazily, in its commands
    from tasks.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SliceWise pipeline through Prefect.")
console = Console(stderr=True)
LOCAL_PREFECT_API = "http://127.0.0.1:4200/api"  # what `make prefect-ui` starts
# Prefect waits 20 s for its throw-away server, which takes about 15 s to start on 2 idle cores: a first run (a fresh
# PREFECT_HOME migrates its database) beside other work timed out with a traceback. Longer, unless the user set it.
EPHEMERAL_STARTUP_SECONDS = 120


class DataSource(str, Enum):
    synthetic = "synthetic"
    local = "local"
    kaggle = "kaggle"


class SliceRunner(str, Enum):  # flows.dask_slicing.SliceRunner
    processes = "processes"
    dask = "dask"


def _fail(message: str, code: int = 1) -> None:
    from tasks.redaction import redact

    console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _server_up(api_url: str) -> bool:
    if not api_url.startswith(("http://", "https://")):  # urlopen's ValueError was a traceback
        _fail(f"PREFECT_API_URL={api_url} must start with http:// or https:// (e.g. {LOCAL_PREFECT_API})")
    try:
        urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=5).close()
    except OSError:
        return False
    return True


def _require_project_root() -> None:
    # Every path in the pipeline is relative to the project root, as for `dvc repro`.
    if not (paths.PARAMS.exists() and Path("dvc.yaml").exists()):
        _fail(f"run this from the project root (no params.yaml and dvc.yaml in {Path.cwd()})")


def _check_parameters(updates: dict[str, str]) -> Settings:
    """params.yaml with the command's values, validated on a copy before any flow starts: a bad one (`--profile
    huge`) was one line under a hundred of Prefect's log lines and tracebacks. Returns those settings."""
    from flows.pipeline import checked_settings
    from tasks.preflight import run_warnings

    try:
        settings = checked_settings(updates)  # said now, not after outputs were removed
    except SliceWiseError as exc:
        _fail(str(exc), exc.exit_code)
    for warning in run_warnings(settings):  # as `tasks check` says them before make run
        typer.secho(f"warning: {warning}", err=True, fg="yellow")
    return settings


@app.command()
def run(
    profile: Optional[str] = typer.Option(None, help="quick | baseline | production (written into params.yaml)"),
    data_source: Optional[DataSource] = typer.Option(None, help="data.source (written into params.yaml)"),
    brats_dir: Optional[Path] = typer.Option(None, help="data.brats_dir, for --data-source local"),
    kaggle_dir: Optional[Path] = typer.Option(None, help="data.kaggle_dir, for --data-source local"),
    slice_runner: SliceRunner = typer.Option(SliceRunner.processes, help="where the slice step's per-patient jobs "
                                             "run: a local process pool, or Dask (not a param: same output)"),
    dask_address: Optional[str] = typer.Option(None, help="for --slice-runner dask: an existing cluster's scheduler "
                                               "(tcp://host:8786); default a local cluster of slice.workers processes"),
) -> None:
    """Run the pipeline once; stages DVC finds up to date are Cached."""
    _require_project_root()
    if dask_address and slice_runner is not SliceRunner.dask:
        _fail("--dask-address needs --slice-runner dask")
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from flows.pipeline import parameter_updates, slicewise_pipeline

    values = dict(profile=profile, data_source=data_source.value if data_source else None,
                  brats_dir=str(brats_dir) if brats_dir else None, kaggle_dir=str(kaggle_dir) if kaggle_dir else None)
    settings = _check_parameters(parameter_updates(**values))
    # Without a configured server, report to `make prefect-ui`'s when it is up (the run shows in its UI),
    # else Prefect starts a throw-away server for this run alone.
    configured = PREFECT_API_URL.value()
    if configured and not _server_up(configured):
        _fail(f"no Prefect server answers at PREFECT_API_URL={configured}; start it, or unset PREFECT_API_URL to run "
              "against a throw-away server")
    api_url = configured or (LOCAL_PREFECT_API if _server_up(LOCAL_PREFECT_API) else None)
    run_settings = {PREFECT_API_URL: api_url} if api_url else {}
    if not api_url:  # Prefect's throw-away server, out of reach of the terminal's Ctrl-C (flows/throwaway_server.py)
        from flows.throwaway_server import use_server_in_its_own_session

        use_server_in_its_own_session()
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        run_settings[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_STARTUP_SECONDS
    with temporary_settings(run_settings), console_says_failures_once():
        try:
            state = slicewise_pipeline(**values, slice_runner=slice_runner.value, dask_address=dask_address,
                                       return_state=True)
        except RuntimeError as exc:
            if "ephemeral Prefect API server" not in str(exc):
                raise
            _fail(f"Prefect's throw-away server did not start within "
                  f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s ({str(exc).splitlines()[0][:200]}); "
                  "start one that stays (`make prefect-ui`), or give it longer "
                  "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        if (stopped := stop_signal(error if isinstance(error, BaseException) else None)) is not None:
            _fail(f"stopped by {stopped.name} ({state.message})", 128 + stopped)  # whatever its exception became
        # StepFailed already names the step and its error: Prefect's "Flow run encountered an exception: StepFailed:"
        # in front of it adds nothing
        said = isinstance(error, BaseException) and said_in_one_line(error)
        _fail(str(error) if said else (state.message or "the flow run failed"))
    table = Table(title="SliceWise flow run")
    table.add_column("stage")
    table.add_column("state")
    table.add_column("dvc.lock entry")
    table.add_column("why it ran")
    for stage, outcome in state.result().items():
        table.add_row(stage, outcome["state"], outcome.get("lock_sha256", "")[:12], outcome.get("reason", ""))
    report = report_console()  # stdout, for the reader; `console` (stderr) carries the log
    report.print(table)
    from tasks.release.summary import print_summary

    # the same summary as make run's, with its word on the photos the served model will not decide (review 2026-12-07)
    print_summary(report, min_photo_accuracy=settings.serve.min_photo_accuracy)


@app.command()
def serve() -> None:
    """Serve the `slicewise-weekly` deployment (cron from params.yaml) until Ctrl-C."""
    _require_project_root()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import DEPLOYMENT_NAME, retraining_schedule, serve as serve_deployment
    from tasks.config import load_settings

    # A deployment served against Prefect's throw-away ephemeral server would be invisible: default to the
    # local server instead, and say how to start it when it is not there.
    api_url = PREFECT_API_URL.value() or LOCAL_PREFECT_API
    if not _server_up(api_url):
        _fail(f"no Prefect server at {api_url}; start one with `make prefect-ui` or set PREFECT_API_URL")
    try:
        settings = load_settings()
        retraining_schedule(settings)
    except SliceWiseError as exc:
        _fail(str(exc), exc.exit_code)
    console.print(f"serving slicewise-pipeline/{DEPLOYMENT_NAME} on {api_url}, cron {settings.schedule.cron!r} "
                  f"({settings.schedule.timezone}); trigger it now with "
                  f"`PREFECT_API_URL={api_url} .venv/bin/prefect deployment run 'slicewise-pipeline/{DEPLOYMENT_NAME}'`")
    with temporary_settings({PREFECT_API_URL: api_url}):
        serve_deployment(settings)


class KnownFailuresInOneLine:
    """A log record factory that drops the traceback of a failure already said in one line. Prefect logs a failed
    task or flow run with its traceback (to its own console handler, whatever this CLI's logging is), so a step's
    SliceWiseError, or the flow's StepFailed naming the step, came out as two full tracebacks above the one red
    line `flows run` prints. Any other exception keeps its traceback: that one is a bug to read."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        record = self.factory(*args, **kwargs)
        if record.exc_info and said_in_one_line(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
            record.said_in_one_line = True  # ConsoleSaysFailuresOnce drops the line itself from the console
        return record


class ConsoleSaysFailuresOnce(logging.Filter):
    """On `flows run`'s console only, Prefect's lines that repeat what is said anyway: about a task or flow run that
    failed with a failure said in one line ("Finished in state Failed(...)", "Encountered exception during
    execution"), and the flow's "step ... failed" record, since the CLI ends with that very line in red (a failed
    step was said five times, each wrapped over several lines); and every task run's "Finished in state Cached(...)"
    or "Completed(...)": a stage task logs its own line ("fetch: up to date with dvc.lock (...)", "done, recorded in
    dvc.lock (...)") and the CLI ends with a table of the stages, and the Dask runner's per-patient tasks would add
    one such line per patient. The Prefect UI keeps every record: its log handler is not filtered."""

    RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.RUN_LOGGERS):
            return True
        if getattr(record, "said_in_one_line", False) or (record.exc_info and said_in_one_line(record.exc_info[1])):
            return False  # marked by KnownFailuresInOneLine, or a record made before it was installed
        message = record.getMessage()
        if record.name.startswith("prefect.task_runs") and message.startswith(("Finished in state Cached(",
                                                                                "Finished in state Completed(")):
            return False
        return not (message.startswith("Finished in state Failed(") and names_a_failure_said_in_one_line(message))


def names_a_failure_said_in_one_line(message: str) -> bool:
    """A run state's message ("... encountered an exception SliceWiseError: ...") names a failure's class."""
    return any(f" {name}: " in message for name in _failure_class_names())


def _failure_class_names() -> set[str]:
    pending, names = [SliceWiseError], {"StepFailed"}
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


@contextmanager
def console_says_failures_once() -> Iterator[None]:
    """ConsoleSaysFailuresOnce on the root logger's console handlers (every one but Prefect's API handler, the UI's)
    for the block, with KnownFailuresInOneLine, whose marks it reads, beneath the credential redaction: main()
    installs that factory too, but `run` may be called without main() (tests, another CLI), and the redaction alone
    turns a record's exception into text that no filter can tell. Both are taken off again afterwards."""
    from prefect.logging.handlers import APILogHandler

    factory = logging.getLogRecordFactory()
    install_log_factories()
    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
    console = ConsoleSaysFailuresOnce()
    for handler in handlers:
        handler.addFilter(console)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console)
        logging.setLogRecordFactory(factory)


def said_in_one_line(exc: BaseException | None) -> bool:
    # StepFailed as flows.pipeline defines it, when that is loaded: no import from inside a log call
    pipeline = sys.modules.get("flows.pipeline")
    known = (SliceWiseError, pipeline.StepFailed) if pipeline is not None else (SliceWiseError,)
    while exc is not None:
        if isinstance(exc, known):
            return True
        exc = exc.__cause__
    return False


def install_log_factories() -> None:
    """Failures in one line, then credentials masked (tasks/redaction.py), in every record of this process."""
    from tasks.redaction import install_beneath_redaction

    install_beneath_redaction(KnownFailuresInOneLine)  # the redaction masks the tracebacks left, it cannot tell them


def main() -> None:
    exit_on_sigterm()
    install_log_factories()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[log_handler(console)])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API request otherwise
    app()


if __name__ == "__main__":
    sys.exit(main())
