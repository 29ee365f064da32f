"""What a flow run shows on its Artifacts tab: metrics with 95 % intervals, the model card, the MLflow run.

Built from the files the steps wrote (reports/metrics.json from `evaluate`, exports/model.json from
`export`, reports/register.json from `register`), so a run where every stage was Cached still shows the
model that is current. A file that does not exist yet (its stage has not run) is left out. The model card is
the registry version's own description (tasks/release/model_card.py) when MLflow has it, else a summary of the files.
"""

from __future__ import annotations

import json
import logging

from tasks import paths
from tasks.config import Settings
from tasks.io import read_json
from tasks.redaction import redact
from tasks.release.registry import ModelRegistry
from tasks.tracking.store import is_local_store, make_client, tracking_uri

log = logging.getLogger(__name__)

METRIC_SECTIONS = ("classification", "segmentation", "segmentation_volume")
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves the local store
KEYS = {"metrics": "slicewise-metrics", "card": "slicewise-model-card", "mlflow": "slicewise-mlflow-run"}


def metrics_rows(metrics: dict) -> list[dict]:
    """One row per scalar metric of the test split, with its 95 % bootstrap interval where evaluate gave one."""
    ci95 = metrics.get("ci95") or {}
    rows = []
    for section in METRIC_SECTIONS:
        for name, value in (metrics.get(section) or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # the confusion matrix is a table of its own in the model card
            interval = ci95.get(f"{section}.{name}")  # null when the bootstrap could not compute it
            low, high = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (None, None)
            rows.append({"metric": f"{section}.{name}", "value": round(float(value), 4),
                         "ci95_low": None if low is None else round(float(low), 4),
                         "ci95_high": None if high is None else round(float(high), 4)})
    return rows


def model_card_markdown(decision: dict | None, model: dict | None, metrics: dict | None) -> str:
    """The model card: promotion decision, headline metrics with intervals, the model's own metadata."""
    lines = ["# SliceWise model card", ""]
    if decision:
        lines += [decision_line(decision), "", f"Reason: {decision.get('reason', 'not given')}", ""]
    else:
        lines += ["Not registered in this run (the `register` stage has not produced reports/register.json).", ""]
    if metrics:
        lines += ["## Test split", "", "| metric | value | 95 % CI |", "|---|---|---|"]
        for row in metrics_rows(metrics):
            interval = "" if row["ci95_low"] is None else f"[{row['ci95_low']}, {row['ci95_high']}]"
            lines.append(f"| {row['metric']} | {row['value']} | {interval} |")
        if matrix := (metrics.get("classification") or {}).get("confusion_matrix"):
            (tn, fp), (fn, tp) = matrix
            lines += ["", f"Confusion matrix: TN {tn}, FP {fp}, FN {fn}, TP {tp}", ""]
    if model:
        lines += ["## Model", "", "```json", json.dumps(model, indent=2, sort_keys=True, default=str), "```"]
    return "\n".join(lines) + "\n"


def registry_model_card(settings: Settings, decision: dict | None) -> str | None:
    """The model card `register` wrote: whole, as its run's model_card.md, or else the registry version's description
    (which holds at most MLflow's 5,000 characters of it); None when there is none to read."""
    if not (decision and decision.get("registered") and settings.tracking.enabled):
        return None
    try:
        registry = ModelRegistry(settings.tracking, decision["model_name"], make_client(settings.tracking))
        version = registry.client.get_model_version(decision["model_name"], str(decision["version"]))
        return whole_card(registry, version.run_id) or version.description or None
    except Exception as exc:  # the card is a convenience: an unreachable registry must not fail a finished run
        log.warning("model card of %s version %s not read from MLflow: %s", decision.get("model_name"),
                    decision.get("version"), exc)
        return None


def whole_card(registry: ModelRegistry, run_id: str | None) -> str | None:
    """The run's model_card.md (None for a run that logged none, or whose artifacts cannot be read: the description
    stands in)."""
    try:
        return registry.run_card(run_id)
    except Exception:  # noqa: BLE001 - the artifact store alone failing: the description stands in
        return None


def decision_line(decision: dict) -> str:
    if decision.get("version") is None:
        return f"**{decision.get('model_name', 'slicewise')}**: not registered"
    verdict = "promoted to champion" if decision.get("promoted") else "not promoted"
    if decision.get("reused"):  # the aliased version already was this model: nothing moved
        verdict = "already held this model, " + ("still champion" if decision.get("promoted") else "still challenger")
    return f"**{decision.get('model_name', 'slicewise')} version {decision.get('version')}**: {verdict}"


def decision_markdown(decision: dict, card: str) -> str:
    """The promotion decision on top of the registry's model card."""
    return f"{decision_line(decision)}\n\nReason: {decision.get('reason', 'not given')}\n\n---\n\n{card}"


def mlflow_run_url(run_id: str, uri: str | None = None) -> str:
    """The run's page in the MLflow UI (a tracking server's own address, else `make mlflow-ui`'s)."""
    uri = uri or tracking_uri()
    base = LOCAL_MLFLOW_UI if is_local_store(uri) else redact(uri).rstrip("/")
    return f"{base}/#/runs/{run_id}"


def publish(settings: Settings, parent_run_id: str | None = None) -> list[str]:
    """Create the flow run's artifacts from whatever reports exist; returns the keys created."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    metrics, decision = read_json(paths.METRICS, default=None), read_json(paths.REGISTER_REPORT, default=None)
    created = []
    if metrics:
        create_table_artifact(metrics_rows(metrics), key=KEYS["metrics"],
                              description="Test-split metrics with 95 % bootstrap intervals (reports/metrics.json)")
        created.append(KEYS["metrics"])
    if decision or metrics:
        card = registry_model_card(settings, decision)
        markdown = decision_markdown(decision, card) if card else model_card_markdown(
            decision, read_json(paths.EXPORT_METADATA, default=None), metrics)
        create_markdown_artifact(markdown, key=KEYS["card"], description="Model card and promotion decision")
        created.append(KEYS["card"])
    # This run's own MLflow parent run when it opened one (register logs into it), else the run that registered
    # the current model (every stage Cached).
    decision = decision or {}
    if run_id := parent_run_id or decision.get("mlflow_run_id"):
        create_link_artifact(mlflow_run_url(run_id, None if parent_run_id else decision.get("tracking_uri")),
                             link_text=f"MLflow run {run_id}", key=KEYS["mlflow"], description="The MLflow run")
        created.append(KEYS["mlflow"])
    return created
