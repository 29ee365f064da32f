"""A stop signal (SIGTERM, Ctrl-C) gives its exit status, 128 + its number, even when the exception it raised came
out as another one: raised inside the import of a compiled module, CPython turns it into "ImportError:
initialization failed", and a flow stopped so exited with 1 (tests/test_flows.py's signal test, once in about
fifteen runs)."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tasks import termination
from tests.project_copy import ROOT

STOPS = [(signal.SIGTERM, 143), (signal.SIGINT, 130)]


def stopped_inside_an_import(signum: int) -> None:
    """The signal arrives while a compiled module initialises: its exception comes out as an ImportError."""
    try:
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the handler runs here, and raises
    except BaseException as exc:
        raise ImportError("initialization failed") from exc
    pytest.fail("no signal came")


@pytest.mark.parametrize(("signum", "status"), STOPS)
def test_a_step_stopped_inside_an_import_exits_with_the_signals_status(signum, status, stop_signals, tmp_path,
                                                                        monkeypatch):
    import tasks.__main__ as cli

    monkeypatch.chdir(tmp_path)  # the pipeline lock's file goes here
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "run_step", lambda step, params: stopped_inside_an_import(signum))
    result = CliRunner().invoke(cli.app, ["split"])
    printed = cli.console.file.getvalue()
    assert result.exit_code == status, printed
    assert f"stopped by {signal.Signals(signum).name} (ImportError: initialization failed)" in printed
    assert "Traceback" not in printed  # not a bug to read


def test_a_step_that_fails_without_a_signal_still_shows_its_traceback(stop_signals, tmp_path, monkeypatch):
    import tasks.__main__ as cli

    def broken(step, params):
        raise ImportError("initialization failed")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "run_step", broken)
    result = CliRunner().invoke(cli.app, ["split"])
    assert result.exit_code == 1 and "Traceback" in cli.console.file.getvalue()


def test_a_stop_signal_is_found_behind_the_exception_it_became():
    """While a flow runs, Prefect answers SIGTERM with a handler of its own (TerminationSignal), which notes nothing
    here (review 2026-12-08): the signal is read from the failure's causes."""
    from prefect.exceptions import TerminationSignal

    from flows.pipeline import StepFailed

    def chain(*exceptions: BaseException) -> BaseException:
        for cause, effect in zip(exceptions, exceptions[1:]):
            effect.__cause__ = cause
        return exceptions[-1]

    failed = StepFailed("step 'fetch' failed: ImportError: initialization failed")
    assert termination.stop_signal(chain(TerminationSignal(signal.SIGTERM), ImportError("x"), failed)) == signal.SIGTERM
    assert termination.stop_signal(chain(KeyboardInterrupt(), ImportError("x"))) == signal.SIGINT
    assert termination.stop_signal(chain(SystemExit(143), ImportError("x"))) == signal.SIGTERM
    assert termination.stop_signal(chain(SystemExit(1), ImportError("x"))) is None  # an exit, not a signal
    assert termination.stop_signal(chain(ValueError("a bug"), ImportError("x"))) is None
    assert termination.stop_signal(None) is None


@pytest.mark.parametrize(("signum", "status"), STOPS)
def test_a_flow_whose_step_was_stopped_inside_an_import_exits_with_the_signals_status(signum, status, stop_signals,
                                                                                       monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Failed

    import flows.__main__ as cli
    import flows.pipeline

    def pipeline(**_):  # what the flow returns when its fetch step failed so
        try:
            stopped_inside_an_import(signum)
        except ImportError as exc:
            return Failed(message=f"Task run encountered an exception ImportError: {exc}")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "_server_up", lambda url: True)  # make prefect-ui's server: no throw-away one started
    monkeypatch.setattr(flows.pipeline, "slicewise_pipeline", pipeline)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(cli.app, ["run"])
    printed = " ".join(cli.console.file.getvalue().split())
    assert result.exit_code == status, printed
    assert f"stopped by {signal.Signals(signum).name} (Task run encountered an exception ImportError" in printed
