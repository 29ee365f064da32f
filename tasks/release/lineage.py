"""`python -m tasks lineage [VERSION|ALIAS]`: where a registered model came from.

registry version → MLflow run (and its step runs) → git commit → data and params hashes → ONNX sha256
(→ Prefect flow run when Prefect ran the pipeline). Read-only: works whether or not tracking is enabled.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from tasks.config import Settings
from tasks.release.registry import ModelRegistry
from tasks.redaction import redact
from tasks.tracking.provenance import CHECKPOINT_TAG
from tasks.tracking.store import retrying, tracking_uri


def lineage(settings: Settings, ref: str) -> dict:
    """The chain as plain data (also what `print_lineage` shows)."""
    from mlflow.exceptions import MlflowException

    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)
    client, cfg = registry.client, settings.tracking
    version = registry.resolve(ref)
    tags = dict(version.tags)
    run_id = tags.get("mlflow_run_id") or version.run_id
    run_info = {"run_id": run_id}
    if run_id:
        try:
            run = retrying(cfg, "get run", client.get_run, run_id)
            steps = retrying(cfg, "find step runs", client.search_runs, [run.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=100)
            run_info |= {"name": run.info.run_name, "status": run.info.status,
                         "steps": sorted({s.data.tags.get("step", s.info.run_name) for s in steps})}
            tags = run.data.tags | tags  # the version's own tags win
        except MlflowException as exc:  # a deleted run: the version's tags still tell the story
            run_info["status"] = f"not found ({exc.error_code})"
    return {"model_name": version.name, "version": str(version.version), "aliases": list(version.aliases or []),
            "run": run_info, "tags": tags, "trained": trained_by(client, cfg, version, tags.get(CHECKPOINT_TAG))}


def trained_by(client, cfg, version, checkpoint_sha256: str | None) -> dict | None:
    """The `train_joint` step run that first handed on the version's checkpoint (tagged with its sha256), with its
    pipeline run and commit. A pipeline run that only re-registered a model (DVC reran `register` alone, after a
    promotion setting changed) holds no training: this names where the weights came from. None when no run says so
    (tracking was off, the run was deleted, or the version predates the tag)."""
    from mlflow.exceptions import MlflowException

    if not checkpoint_sha256:
        return None
    run = None
    if version.run_id:
        try:
            run = retrying(cfg, "get run", client.get_run, version.run_id)
        except MlflowException:  # the registering run was deleted: the training run may still be there
            run = None
    try:
        experiments = [run.info.experiment_id] if run else [e.experiment_id for e in client.search_experiments()]
        found = retrying(cfg, "find training run", client.search_runs, experiments,
                         filter_string=f"tags.{CHECKPOINT_TAG} = '{checkpoint_sha256}' and tags.step = 'train_joint'",
                         order_by=["attributes.start_time ASC"], max_results=1)
    except MlflowException:
        return None
    if not found:
        return None
    tags = found[0].data.tags
    return {"run_id": found[0].info.run_id, "pipeline_run_id": tags.get("mlflow.parentRunId"),
            "git_commit": tags.get("git_commit"), "git_dirty": tags.get("git_dirty")}


def _tag(tags: dict, key: str) -> str:
    return tags.get(key, "[dim]unknown[/]")


def print_lineage(settings: Settings, ref: str | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    info = lineage(settings, ref or settings.registry.alias)
    tags, run = info["tags"], info["run"]
    aliases = " ".join(f"@{a}" for a in info["aliases"]) or "no alias"
    verdict = tags.get("promotion", "unknown")
    colour = "green" if verdict == "promoted" else "yellow"
    root = Tree(f"[bold]{info['model_name']}[/] version {info['version']}  {aliases}  [{colour}]{verdict}[/]")
    if reason := tags.get("promotion_reason"):
        root.add(f"[dim]{escape(reason)}[/]")  # escaped: "[pass]" / "[FAIL]" are not markup
    node = root.add(f"MLflow run [cyan]{run.get('run_id')}[/] {run.get('name', '')} ({run.get('status', '?')})")
    if run.get("steps"):
        node.add("step runs: " + ", ".join(run["steps"]))
    if (trained := info["trained"]) and trained["pipeline_run_id"] != run.get("run_id"):  # trained elsewhere
        node.add(f"weights trained by train_joint run [cyan]{trained['run_id']}[/] of pipeline run "
                 f"[cyan]{trained['pipeline_run_id']}[/], git commit [cyan]{trained['git_commit'] or 'unknown'}[/]"
                 + (" [red](uncommitted changes)[/]" if trained["git_dirty"] == "true" else ""))
    dirty = tags.get("git_dirty")
    node = node.add(f"git commit [cyan]{_tag(tags, 'git_commit')}[/]"
                    + (" [red](uncommitted changes)[/]" if dirty == "true" else ""))
    node = node.add(f"data hash [cyan]{_tag(tags, 'data_hash')}[/]  splits [cyan]{_tag(tags, 'splits_hash')}[/]  "
                    f"params hash [cyan]{_tag(tags, 'params_hash')}[/]  profile {_tag(tags, 'profile')}")
    if versions := tags.get("kaggle_versions"):  # data.source: kaggle
        node.add(f"Kaggle data sets {escape(versions)}")
    node = node.add(f"ONNX sha256 [cyan]{_tag(tags, 'onnx_sha256')}[/]")
    if flow_run := tags.get("prefect_flow_run_id"):
        node.add(f"Prefect flow run [cyan]{flow_run}[/]")
    console.print(root)
    console.print(f"[dim]store: {escape(redact(tracking_uri()))}[/]")
    return info
