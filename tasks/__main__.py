"""`python -m tasks <step>`: the CLI that dvc.yaml calls, a thin layer over each step's `main(settings)`."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from tasks import STEPS, paths
from tasks.config import load_settings
from tasks.errors import SliceWiseError
from tasks.io import nested_value
from tasks.log_output import log_handler, report_console
from tasks.params_edit import parse_assignments, set_params
from tasks.redaction import install_log_redaction, redact
from tasks.run_lock import dvc_lock_for_params, pipeline_lock
from tasks.termination import exit_on_sigterm, stop_signal

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SliceWise pipeline steps.")
console = Console(stderr=True)
DVC_STAGE_ENV = "DVC_STAGE"


def run_step(step: str, params: Path = paths.PARAMS) -> dict:
    """Run one step (`tasks/<step>.py`'s `main`) with the parsed params; the entry point the Prefect flow uses too."""
    settings = load_settings(params)
    return importlib.import_module(f"tasks.{step}").main(settings)


def removed_outputs_hint(stage: str) -> str:
    """Said after a step run by `dvc repro` failed on something the user can fix (a value in params.yaml, a missing
    folder): DVC removed the stage's outputs before it started the step (`make run` checks what it can first; a
    direct `dvc repro` does not)."""
    return (f"DVC removed the outputs of stage {stage} before running it (all but those dvc.yaml marks persist). "
            f"After fixing the cause, `dvc repro` makes them again; the last ones come back now with "
            f"`dvc checkout {stage}` (files in DVC's cache) and `git checkout -- <path>` (its committed reports).")


def _fail(exc: SliceWiseError, hint: str | None = None) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # "[flair, t1]" is text
    if hint:
        console.print(escape(hint), highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _exit_if_stopped(exc: BaseException) -> None:
    """A step stopped by SIGTERM or Ctrl-C exits with the signal's status, whatever its exception became on its way
    out (tasks/termination.py: inside an import it is an ImportError)."""
    if (stopped := stop_signal(exc)) is not None:
        console.print(redact(f"stopped by {stopped.name} ({type(exc).__name__}: {exc})"), highlight=False,
                      soft_wrap=True, markup=False)
        raise typer.Exit(128 + stopped) from None


def _make_step_command(step: str):
    def command(params: Path = typer.Option(paths.PARAMS, help="parameters file")) -> None:
        try:
            with pipeline_lock(f"python -m tasks {step}"):
                result = run_step(step, params)
        except Exception as exc:
            _exit_if_stopped(exc)
            if not isinstance(exc, SliceWiseError):  # a bug or a raw library error: its traceback, passwords masked
                console.print(redact("".join(traceback.format_exception(exc))), highlight=False, soft_wrap=True,
                              markup=False)
                raise typer.Exit(1) from None
            stage = os.environ.get(DVC_STAGE_ENV)  # set by DVC for the commands it runs
            _fail(exc, removed_outputs_hint(stage) if stage else None)
        if result:
            typer.echo(json.dumps(result, indent=2, default=str))

    command.__doc__ = f"Run the `{step}` step."
    return command


for _step in STEPS:
    app.command(name=_step)(_make_step_command(_step))


@app.command("set")
def set_command(assignments: list[str] = typer.Argument(..., help="dotted KEY=VALUE, e.g. profile=baseline")) -> None:
    """Change params.yaml (comments kept), e.g. `set profile=baseline data.source=local`."""
    try:
        with pipeline_lock("python -m tasks set"):  # a running flow reloads params.yaml at every step
            updates = parse_assignments(assignments)
            with dvc_lock_for_params():  # nor while `dvc repro` records a stage with params.yaml's values
                document = set_params(updates).model_dump(mode="json")  # what landed, as the steps will read it
            landed = {key: nested_value(document, key) for key in updates}
    except SliceWiseError as exc:
        _fail(exc)
    for key, value in landed.items():
        typer.echo(f"params.yaml: {key} = {json.dumps(value, default=str, ensure_ascii=False)}")
    source = nested_value(document, "data.source")
    if source != "local" and any(key in ("data.brats_dir", "data.kaggle_dir") for key in updates):
        # `flows run --brats-dir` refuses this; here the folder may come first and the source next
        typer.secho(f"note: data.brats_dir and data.kaggle_dir are read only with data.source local (this one is "
                    f"{source}); DVC still counts them as changed fetch parameters", err=True, fg="yellow")
    if source != "kaggle" and any(key.startswith("data.kaggle_versions") for key in updates):
        # one section of DVC params (fetch reads `data` whole): it reruns fetch, to the same data
        typer.secho(f"note: data.kaggle_versions is read only with data.source kaggle (this one is {source}); "
                    "DVC still counts it as a changed fetch parameter", err=True, fg="yellow")


@app.command("check")
def check_command(params: Path = typer.Option(paths.PARAMS, help="parameters file")) -> None:
    """Validate params.yaml as every step reads it, and that no other pipeline run holds the project. `make run` checks
    first: `dvc repro` removes a stage's outputs before it runs the stage, so a mistake found by the step itself (or
    a flow run's lock that refuses it) has cost them already."""
    try:
        from tasks.preflight import check_params_dvc_reads, check_prerequisites

        settings = load_settings(params)
        check_params_dvc_reads(params)
        check_prerequisites(settings)
        with pipeline_lock("python -m tasks check"):  # taken and given back: only whether a run holds it now
            pass
    except SliceWiseError as exc:
        _fail(exc)
    from tasks.preflight import run_warnings

    for warning in run_warnings(settings):
        typer.secho(f"warning: {warning}", err=True, fg="yellow")
    typer.echo(f"{params}: valid (profile {settings.profile}, data source {settings.data.source})")


@app.command("lineage")
def lineage_command(ref: Optional[str] = typer.Argument(None, help="a version number or an alias (default: "
                                                                    "registry.alias, the served one)")) -> None:
    """Print registry version → MLflow run → git commit → data/params hashes → ONNX sha256 → Prefect run."""
    try:
        from tasks.release.lineage import print_lineage

        print_lineage(load_settings(), ref, console=report_console())
    except SliceWiseError as exc:
        _fail(exc)


@app.command("store-check")
def store_check_command() -> None:
    """Exit 1, saying why, when reports/register.json registered the model in another MLflow store than the one in
    use now (MLFLOW_TRACKING_URI changed, which DVC cannot see): `make run` then runs `register` again."""
    from tasks.release.store_moved import registered_elsewhere

    if reason := registered_elsewhere():
        typer.echo(f"{reason}: `make run` registers it there (it runs `dvc repro --force --single-item register`)")
        raise typer.Exit(1)


@app.command("summary")
def summary_command() -> None:
    """Print where the results are, the headline metrics with their intervals and the promotion decision."""
    from tasks.release.summary import print_summary

    try:
        min_photo_accuracy = load_settings().serve.min_photo_accuracy
    except SliceWiseError:  # the summary of what is on disk needs no valid params.yaml
        min_photo_accuracy = None
    print_summary(report_console(), min_photo_accuracy=min_photo_accuracy)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[log_handler(console)])


def main() -> None:
    exit_on_sigterm()
    install_log_redaction()
    configure_logging()
    app()


if __name__ == "__main__":
    sys.exit(main())
