"""The tracker hook: the only way training and evaluation reach an experiment tracker.

Steps receive a `Tracker`; with tracking disabled they get `NullTracker`, so everything runs without MLflow.
The MLflow implementation lives in tasks/tracking/mlflow_runs.py and is chosen by `make_tracker`; a step opens
its run with `tracked_step`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Accepts everything, records nothing: used when `tracking.enabled` is false and in unit tests."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def make_tracker(settings, step: str) -> Tracker:
    """A tracker for one step (a child run of the pipeline's parent run), or NullTracker when disabled."""
    if not settings.tracking.enabled:
        return NullTracker()
    from tasks.tracking.mlflow_runs import MlflowTracker  # on use: MLflow is imported only when tracking is on

    return MlflowTracker.for_step(settings, step)


@contextmanager
def tracked_step(settings, step: str, enabled: bool = True) -> Iterator[Tracker]:
    """The step's tracker run for the block (NullTracker when not `enabled`): ended FINISHED when the block
    completes, KILLED when the process is being stopped (Ctrl-C, or SIGTERM, which `python -m tasks` turns into
    SystemExit), FAILED when it raises anything else; the error goes on."""
    tracker = make_tracker(settings, step) if enabled else NullTracker()
    try:
        yield tracker
    except (KeyboardInterrupt, SystemExit):
        tracker.close("KILLED")
        raise
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
