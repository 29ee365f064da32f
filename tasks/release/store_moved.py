"""Whether the last registration (reports/register.json) went to the MLflow store in use now, and that store is
still there and still holds it (a local database deleted to start afresh is no store; a server started afresh at the
same address, or a model deleted by hand, no longer holds the version).

The store is chosen by MLFLOW_TRACKING_URI, an environment variable that no DVC stage can list as a dependency: after
`export MLFLOW_TRACKING_URI=postgresql://...` DVC found `register` up to date, and nothing was ever registered in the
new store, which then had no champion to serve. `make run` and the flow ask this after DVC, and run `register` again
when it answers (its version reuse keeps that from registering a model twice in one store).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasks import paths
from tasks.io import read_json
from tasks.redaction import redact
from tasks.tracking.store import portable_uri, registry_uri, sqlite_file, tracking_uri


def registered_elsewhere(report: Path = paths.REGISTER_REPORT, decision: dict | None = None) -> str | None:
    """Why `register` must run again for the current store, or None (same store, nothing registered, no record).
    `decision`: the report's content, when the caller has read it already."""
    decision = read_json(report, default=None) if decision is None else decision
    if not isinstance(decision, dict) or not decision.get("registered"):
        return None
    uri = tracking_uri()
    recorded, current = decision.get("tracking_uri"), redact(portable_uri(uri))
    if recorded and not same_store(recorded, current):
        return f"{report} records version {decision.get('version')} in {recorded}; the MLflow store is now {current}"
    if (local := sqlite_file(uri)) is not None and not local.exists():  # the same address, its file deleted
        return f"{report} records version {decision.get('version')} in {current}, which no longer exists"
    if version_gone(registry_uri(), str(decision.get("model_name") or ""), str(decision.get("version") or ""),
                    decision.get("onnx_sha256")):
        # the same address, emptied: a server started afresh, a database recreated, the model deleted by hand
        return (f"{report} records version {decision.get('version')} of {decision.get('model_name')!r} in {current}, "
                "which no longer holds it")
    return None


# Whether a registry database holds a version (a deleted one keeps its row, marked Deleted_Internal; an older row may
# have no stage) with the ONNX file the record names (:sha None: any).
HELD_SQL = ("select count(*) from model_versions v where v.name = :name and v.version = :version and "
            "coalesce(v.current_stage, '') != 'Deleted_Internal' and (:sha is null or exists (select 1 from "
            "model_version_tags t where t.name = v.name and t.version = v.version and t.key = 'onnx_sha256' and "
            "t.value = :sha))")
DATABASE_TIMEOUT_SECONDS = 5  # a database store that does not answer in this is not judged


def version_gone(uri: str, model_name: str, version: str, onnx_sha256: str | None = None) -> bool:
    """Whether the registry at `uri` answers that it holds no version `version` of `model_name` (with the ONNX file
    `onnx_sha256`, when given: a store made afresh may hold another model under that number). False when it holds
    it, and when it cannot say: unreachable, or not a store this can read (the step that next needs it says so, in
    its own words). A database is read with SQL alone, with a short timeout (MLflow's import takes seconds, and its
    engine retries an unreachable database for about two minutes); a server is asked once through MLflow."""
    if not model_name or not version.isdigit():
        return False  # a record without them (written by hand, or by an older register) is not judged
    query = {"name": model_name, "version": int(version), "sha": onnx_sha256 or None}
    if (local := sqlite_file(uri)) is not None:
        try:
            with closing(sqlite3.connect(local.resolve().as_uri() + "?mode=ro", uri=True,
                                         timeout=DATABASE_TIMEOUT_SECONDS)) as db:
                held = db.execute(HELD_SQL, query).fetchone()[0]
        except sqlite3.OperationalError as exc:  # a database without MLflow's tables (made afresh) holds no version
            return "no such table" in str(exc)
        except sqlite3.Error:
            return False
        return held == 0
    if urlsplit(uri).scheme.lower() in ("http", "https"):
        return _server_lacks(model_name, version, onnx_sha256)
    return _database_lacks(uri, query)


def _server_lacks(model_name: str, version: str, onnx_sha256: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    from tasks.config import TrackingSettings, load_settings
    from tasks.errors import SliceWiseError
    from tasks.release.registry import NOT_FOUND, ModelRegistry

    # params.yaml's timeouts when it has valid ones (the summary may be asked anywhere, and a params.yaml being edited
    # is `tasks check`'s to judge: it was a traceback here)
    try:
        tracking = load_settings().tracking
    except SliceWiseError:
        tracking = TrackingSettings()
    try:
        held = ModelRegistry(tracking, model_name).client.get_model_version(model_name, version)
    except MlflowException as exc:
        return exc.error_code in NOT_FOUND
    except Exception:  # noqa: BLE001 - unreachable or refused: not this check's to judge
        return False
    return bool(onnx_sha256) and held.tags.get("onnx_sha256") not in (None, onnx_sha256)


def _database_lacks(uri: str, query: dict) -> bool:
    """HELD_SQL on a PostgreSQL or MySQL store through SQLAlchemy (MLflow's own dependency), with a connect timeout
    and no retries."""
    scheme = urlsplit(uri).scheme.lower().split("+")[0]
    if scheme not in ("postgresql", "mysql"):
        return False  # another database: not judged
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": DATABASE_TIMEOUT_SECONDS},
                                          poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            held = connection.execute(sqlalchemy.text(HELD_SQL), query).scalar()
    except sqlalchemy.exc.ProgrammingError:  # no model_versions table: a database made afresh holds no version
        return True
    except Exception:  # noqa: BLE001 - unreachable, refused, no driver: not this check's to judge
        return False
    return held == 0


LOOPBACK = {"localhost", "127.0.0.1", "::1"}
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def same_store(recorded: str, current: str) -> bool:
    """Whether two tracking URIs (both redacted) name one store: a local database by its file, a server whatever
    the spelling of its address (a trailing slash, `localhost` for 127.0.0.1, a default port written out, a
    SQLAlchemy driver), each of which had forced one needless `register`."""
    if recorded == current:
        return True
    if (mine := sqlite_file(recorded)) is not None and (theirs := sqlite_file(current)) is not None:
        return mine.resolve() == theirs.resolve()  # relative paths, as portable_uri records them, from here
    return _address(recorded) == _address(current)


def _address(uri: str) -> tuple:
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower().split("+")[0]  # postgresql+psycopg2: the same database as postgresql
        host = (parts.hostname or "").lower()
        return (scheme, parts.username, "loopback" if host in LOOPBACK else host,
                parts.port or DEFAULT_PORTS.get(scheme), parts.path.rstrip("/"), parts.query)
    except ValueError:  # an unparseable port: only the same text is the same store
        return (uri,)


def artifacts_elsewhere() -> str | None:
    """Why the local store's artifacts are not this project's, or None. MLflow records each experiment's artifact
    folder as an absolute path: a project copied or moved with its mlflow.db keeps writing into the old folder (or
    recreates it), and once that is gone the registered models cannot be loaded. Read with sqlite alone, quickly,
    before `make run` (MLflow's import takes seconds)."""
    store, here = sqlite_file(tracking_uri()), Path.cwd().resolve()
    if store is None or not store.is_file() or not store.resolve().is_relative_to(here):
        return None  # a store kept elsewhere on purpose (MLFLOW_TRACKING_URI) may keep its artifacts anywhere
    try:
        with closing(sqlite3.connect(store.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            locations = [row[0] for row in db.execute(  # the experiments holding runs (not MLflow's empty Default)
                "select distinct e.artifact_location from experiments e join runs r on r.experiment_id = "
                "e.experiment_id where e.lifecycle_stage = 'active'")]
    except sqlite3.Error:  # not an MLflow store yet (or another schema): MLflow says so when it is used
        return None
    for location in locations:
        if not location or not location.startswith(("file://", "/")):
            continue  # a server's mlflow-artifacts:, an object store: not a folder of this machine
        folder = Path(unquote(urlsplit(location).path) if location.startswith("file://") else location)
        if not folder.resolve().is_relative_to(here):
            state = "which no longer exists" if not folder.exists() else "outside this project"
            return (f"{store.name} keeps its artifacts in {folder}, {state}: the project was copied or moved with "
                    "its MLflow store, so its runs and models live (or lived) in the other project's folder. "
                    f"`rm {store.name}` starts a fresh store here (the next `make run` registers the model again)")
    return None
