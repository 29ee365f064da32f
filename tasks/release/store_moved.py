"""Whether the last registration (reports/register.json) went to the MLflow store in use now, and that store is
still there (a local database deleted to start afresh is no store).

The store is chosen by MLFLOW_TRACKING_URI, an environment variable that no DVC stage can list as a dependency: after
`export MLFLOW_TRACKING_URI=postgresql://...` DVC found `register` up to date, and nothing was ever registered in the
new store, which then had no champion to serve. `make run` and the flow ask this after DVC, and run `register` again
when it answers (its version reuse keeps that from registering a model twice in one store).
"""

from __future__ import annotations

from pathlib import Path

from tasks import paths
from tasks.io import read_json
from tasks.redaction import redact
from tasks.tracking.store import portable_uri, sqlite_file, tracking_uri


def registered_elsewhere(report: Path = paths.REGISTER_REPORT, decision: dict | None = None) -> str | None:
    """Why `register` must run again for the current store, or None (same store, nothing registered, no record).
    `decision`: the report's content, when the caller has read it already."""
    decision = read_json(report, default=None) if decision is None else decision
    if not isinstance(decision, dict) or not decision.get("registered"):
        return None
    uri = tracking_uri()
    recorded, current = decision.get("tracking_uri"), redact(portable_uri(uri))
    if recorded and recorded != current:
        return f"{report} records version {decision.get('version')} in {recorded}; the MLflow store is now {current}"
    if (local := sqlite_file(uri)) is not None and not local.exists():  # the same address, its file deleted
        return f"{report} records version {decision.get('version')} in {current}, which no longer exists"
    return None
