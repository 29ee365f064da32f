"""The project's MLflow store: where it is, how to reach it (retried, failing fast), a client on it.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///mlflow.db` with artifacts under `mlartifacts/` (the same
store `make mlflow-ui` serves). Every MLflow call is retried with exponential backoff
(`tracking.max_attempts`, `tracking.backoff_seconds`); MLflow's own HTTP retries are turned down so an
unreachable server gives a SliceWiseError within seconds instead of minutes. MLflow is imported on use only.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from tasks import paths
from tasks.config import TrackingSettings
from tasks.errors import SliceWiseError
from tasks.redaction import install_log_redaction, redact

log = logging.getLogger(__name__)

# MLflow error codes that no retry can fix (a wrong name or id, a conflicting value).
PERMANENT_ERRORS = {"RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
                    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "NOT_FOUND",
                    "ALREADY_EXISTS", "CUSTOMER_UNAUTHORIZED"}
T = TypeVar("T")


def _absolute(uri: str) -> str:
    """sqlite:///mlflow.db → sqlite:////abs/mlflow.db: MLflow caches one database engine per URI string, so a
    relative URI would keep using the first working directory's file after a chdir (tests, notebooks)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def portable_uri(uri: str) -> str:
    """sqlite:////abs/project/mlflow.db → sqlite:///mlflow.db for a store inside the project (the working
    directory): what a committed report records, so it names the same store in every clone; others as they are."""
    prefix = "sqlite:///"
    if uri.startswith(prefix + "/"):
        try:
            return prefix + str(Path(uri[len(prefix):]).relative_to(Path.cwd().resolve()))
        except ValueError:  # a database outside the project
            pass
    return uri


def tracking_uri() -> str:
    return _absolute(os.environ.get("MLFLOW_TRACKING_URI") or paths.MLFLOW_DB_URI)


def registry_uri() -> str:
    return _absolute(os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri())


@contextmanager
def fluent_store() -> Iterator[None]:
    """Point MLflow's module-level API (log_model, register_model, models:/ URIs) at the project's store for the
    block, then restore what was there: mlflow.set_tracking_uri also sets environment variables, which would
    otherwise leak into everything that runs later in this process."""
    import mlflow

    install_log_redaction()
    quiet_store_errors()
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(registry_uri())
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def is_local_store(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "databricks"))


class _StoreErrorsOnce(logging.Filter):
    """MLflow logs every database error with its traceback, then raises it; `retrying` reports it once, as one
    line (a lost store gave ~1,800 lines of these)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _StoreErrorsOnce) for f in logger.filters):
        logger.addFilter(_StoreErrorsOnce())


def configure_http(cfg: TrackingSettings) -> None:
    """Fail fast against an unreachable server: our retry loop does the backoff (env values a user set win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(cfg.request_timeout_seconds))))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars would drown the step's log
    if redact(tracking_uri()) != tracking_uri():  # MLflow prints "View run ... at: <the URI, password and all>"
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection problem, a timeout, a locked database, a server error."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT_ERRORS
    if isinstance(exc, (RequestException, ConnectionError, TimeoutError)):
        return True
    return type(exc).__name__ == "OperationalError"  # sqlalchemy's "database is locked" and kin


_SEEN_STORES: set[Path] = set()  # local store files this process has seen: one that vanishes was lost, not new


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local sqlite store's URI; None for any other store (and an in-memory one)."""
    prefix = "sqlite:///"
    # SQLAlchemy's options (`?timeout=10`) are no part of the file's name
    return Path(uri.removeprefix(prefix).split("?", 1)[0]) if uri.startswith(prefix) and ":memory:" not in uri \
        else None


def check_store_present(what: str) -> None:
    """A local sqlite store that existed and is gone (deleted or moved while a step ran) is a SliceWiseError:
    asking MLflow again would create an empty store in its place, and retries would only add noise."""
    uri = tracking_uri()
    if (path := sqlite_file(uri)) is None:
        return
    if path.exists():
        _SEEN_STORES.add(path)
    elif path in _SEEN_STORES:
        raise SliceWiseError(f"the MLflow store disappeared during {what} (deleted or moved?); restore the file, "
                             "or rerun the step to start a new store", uri)


class StoreUnreachable(SliceWiseError):
    """`retrying` gave up on a transient error: the store did not answer, which says nothing about what it holds.
    A caller that falls back on "the version is broken" or "the figures are lost" lets this one through."""


def retrying(cfg: TrackingSettings, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn with exponential backoff on transient errors; give up with a SliceWiseError naming the store."""
    for attempt in range(1, cfg.max_attempts + 1):
        check_store_present(what)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == cfg.max_attempts:
                detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise StoreUnreachable(
                    f"MLflow {what} failed after {attempt} attempt(s): {detail}. Is the tracking store reachable? "
                    "Start it with `make mlflow-ui`, unset MLFLOW_TRACKING_URI to use sqlite:///mlflow.db, "
                    "or set tracking.enabled: false", tracking_uri()) from exc
            delay = cfg.backoff_seconds * 2 ** (attempt - 1)
            log.warning("MLflow %s failed (%s); retry %d/%d in %.1f s", what, type(exc).__name__, attempt,
                        cfg.max_attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def make_client(cfg: TrackingSettings):
    """An MlflowClient on the project's store (tracking and registry alike). An HTTP store is first asked later; a
    database store (sqlite, PostgreSQL) is connected to here, so a store that is down fails here, in one line
    (StoreUnreachable) as any request does."""
    from mlflow import MlflowClient

    install_log_redaction()  # MLflow's own log lines and errors may quote the store's URI
    quiet_store_errors()
    configure_http(cfg)
    # one attempt of ours: MLflow already retries creating a database engine, with its own backoff (about 2 min)
    once = cfg.model_copy(update={"max_attempts": 1})
    return retrying(once, "connection", MlflowClient, tracking_uri=tracking_uri(), registry_uri=registry_uri())
