"""dvc.yaml's code deps cannot drift from the code: `dvc repro` reruns exactly the stages a code change affects.

For every stage, from the module its `cmd` runs (`python -m tasks <stage>` runs tasks/<stage>.py's `main`), every
import is followed, at module level and inside functions (tests/import_graph.py). Each project module reached
must lie under a code dep of the stage (a file, or a folder), unless it is plumbing listed below; and each code
dep must be imported: a file dep reached, and every module of a folder dep reached (else an edit of a module the
stage never runs would rerun it).

Also: every output DVC does not cache is one git carries, so each commit and DVC experiment holds it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.import_graph import REPO, PROJECT_PACKAGES, is_docstring_only, module_file, modules_under, reachable
from tests.project_copy import copy_project_files

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
CMD = re.compile(r"^\.venv/bin/python -m tasks (\w+)$")

# Reached by the steps, but nothing in them can change what a stage writes into its outputs, so no stage needs
# them among its deps (a stage may still list one it imports). Package markers (docstring-only __init__.py
# files) need no listing either: they are checked to hold nothing else.
PLUMBING = {
    "tasks": "the list of step names, for the CLI",
    "tasks.__main__": "the CLI: parses the arguments, calls the step's main, prints its result or its error",
    "tasks.errors": "the exception type and its exit codes",
    "tasks.redaction": "credentials masked in error messages and log lines",
    "tasks.tracking.tracker": "tracking: the tracker hook and the run around each step",
    "tasks.tracking.mlflow_runs": "tracking: MLflow runs, params, metrics, artifacts",
    "tasks.tracking.store": "tracking: where the MLflow store is, retries",
    "tasks.tracking.provenance": "tracking: git commit, params and data hashes as run tags",
}


def code_deps(stage: str) -> list[str]:
    """The stage's deps that are code: files or folders of the project's packages (data and models are not)."""
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in STAGES[stage].get("deps", [])]
    return [dep for dep in deps if dep.split("/")[0] in PROJECT_PACKAGES]


def entry_module(stage: str) -> str:
    match = CMD.match(STAGES[stage]["cmd"])
    assert match and match.group(1) == stage, f"{stage}: cmd should be `.venv/bin/python -m tasks {stage}`"
    return f"tasks.{stage}"


def covered(module: str, deps: list[str]) -> bool:
    file = module_file(module).relative_to(REPO).as_posix()
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_the_plumbing_list_names_real_modules_and_markers_are_empty():
    assert all(module_file(module) for module in PLUMBING), "a PLUMBING entry names no module"
    markers = {module for module in modules_under(REPO / "tasks") if module_file(module).name == "__init__.py"}
    for marker in markers - {"tasks"}:
        assert is_docstring_only(marker), f"{marker}: a package's __init__.py holds only its docstring"


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_cover_every_module_the_stage_imports(stage):
    reached = reachable(entry_module(stage))
    deps = code_deps(stage)
    missing = sorted(module for module in reached
                     if module not in PLUMBING and not is_docstring_only(module) and not covered(module, deps))
    assert not missing, (f"dvc.yaml stage {stage!r} imports {missing} but lists none of them among its deps: "
                         f"an edit there would not rerun it")
    assert f"tasks/{stage}.py" in deps, f"{stage}: its own step module must be a dep"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_code_dep_is_imported_by_the_stage(stage):
    reached = reachable(entry_module(stage))
    for dep in code_deps(stage):
        path = REPO / dep
        assert path.exists(), f"{stage}: dep {dep} does not exist"
        if path.is_dir():
            unused = sorted(modules_under(path) - reached)
            assert not unused, (f"{stage}: lists the folder {dep} but never imports {unused}; "
                                "list the files it uses instead")
        else:
            assert dep.endswith(".py"), f"{stage}: code dep {dep} is neither a folder nor a module"
            assert any(module_file(m) == path for m in reached), f"{stage}: lists {dep} but never imports it"


@pytest.mark.parametrize("profile", ["quick", "baseline", "production"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_params_key_of_a_stage_exists_in_params_yaml(stage, profile):
    """`dvc repro` refuses a stage whose params name a key params.yaml does not have (a moved key, a typo)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for entry in STAGES[stage].get("params", []):
        for key in ([entry] if isinstance(entry, str) else next(iter(entry.values()))):
            node = params
            for part in key.replace("${profile}", profile).split("."):
                assert isinstance(node, dict) and part in node, f"{stage}: params key {key} is not in params.yaml"
                node = node[part]


@pytest.mark.parametrize("stage", ["train_seg", "train_cls", "train_joint"])
def test_a_training_stage_keeps_both_checkpoints_between_runs_so_a_killed_run_resumes(stage):
    """`dvc repro` (and the flow's clear_or_restore) delete a stage's outputs before rerunning it, except those marked
    persist; resuming needs last.pt and best.pt (tasks/training/resume.py resume_state), so both must persist."""
    outs = {next(iter(out)) if isinstance(out, dict) else out: out for out in STAGES[stage]["outs"]}
    folder = stage.removeprefix("train_")
    for name in ("best.pt", "last.pt"):
        out = outs[f"checkpoints/{folder}/{name}"]
        assert isinstance(out, dict) and next(iter(out.values())).get("persist") is True, f"{stage}: {name}"


def test_no_stage_reruns_for_a_setting_that_only_says_how_mlflow_is_reached():
    """Retries, back-off and request timeouts change how patiently MLflow is reached, never a result: a stage that
    listed them would rerun when they change, and `register` would register a copy of the same model (it did: one
    ONNX file under seven versions) and move the champion alias to it."""
    plumbing = {"tracking", "tracking.max_attempts", "tracking.backoff_seconds", "tracking.request_timeout_seconds"}
    for name, stage in STAGES.items():
        listed = {key for entry in stage.get("params", []) for key in ([entry] if isinstance(entry, str) else entry)}
        assert not listed & plumbing, (name, sorted(listed & plumbing))


def uncached_outputs() -> dict[str, str]:
    """{path: kind} of every output, metric and plot file that dvc.yaml declares with `cache: false`."""
    found = {}
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    found |= {path: kind for path, options in entry.items() if options.get("cache") is False}
    return found


def test_every_uncached_output_is_carried_by_git():
    """DVC keeps no copy of a `cache: false` file, so git must: else a checkout of another commit, `dvc exp apply`
    of an experiment or `dvc plots diff` across them finds the workspace's file of the last run, or none (the
    training histories were ignored by git until 2026-12-03). The evaluate stage's plots folder is the exception: its
    images stay out of git, and, uncached, they keep evaluate out of DVC's run cache (flows/dvc_stage.py)."""
    uncached = uncached_outputs()
    assert {"reports/training/seg.csv", "reports/metrics.json", "reports/register.json"} <= set(uncached)
    # Each path also asked as a folder: a pattern for folders (`/reports/plots/`) matches a path that does not exist
    # yet, as in a fresh clone, only when it ends in a slash.
    asked = [form for path in uncached for form in (path, f"{path}/")]
    answer = subprocess.run(["git", "check-ignore", "--no-index", *asked], cwd=REPO, capture_output=True, text=True)
    assert {path.rstrip("/") for path in answer.stdout.split()} == {"reports/plots"}


def stage_output_paths() -> list[str]:
    """Every path a stage writes (outs, metrics and plots), cached or not."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry
            for stage in STAGES.values() for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, [])]


def is_written_by_a_stage(path: str, outputs: list[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)


def project_files(dest: Path) -> Path:
    """The project's files as git sees them (tracked and new, not ignored; tests and docs aside) copied to `dest`:
    what a fresh clone holds, without the workspace's data and checkpoints, and without the lock a running
    `dvc repro` holds on the workspace."""
    copy_project_files(dest, leave_out=("tests/", "docs/"))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)  # DVC reads .gitignore through git
    return dest


def lock_drift(status: dict) -> list[str]:
    """From `Repo.status()`, what says the committed results were not made by the committed project: a source dep
    (code, models) or a params key changed since the lock was written, or a report that git carries (an uncached
    output) differing from the one the lock records. Data, checkpoints and other cached outputs are left out: a
    fresh clone has none, and a workspace may hold another machine's."""
    outputs = stage_output_paths()
    carried = {path for path in uncached_outputs() if path != "reports/plots"}
    drift = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed": the stage's definition moved
                drift.append(f"{stage}: {change}")
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict):  # params.yaml: {key: "modified" | "new" | "deleted"}
                    drift += [f"{stage}: param {key} {how}" for key, how in state.items()]
                elif not is_written_by_a_stage(path, outputs):
                    drift.append(f"{stage}: dep {path} {state}")
            drift += [f"{stage}: report {path} {state}" for path, state in change.get("changed outs", {}).items()
                      if path in carried and state != "deleted"]
    return drift


def test_lock_drift_names_changed_code_params_and_carried_reports_and_nothing_else():
    status = {
        "train_seg": [{"changed deps": {"data/processed": "deleted", "tasks/training": "modified",
                                        "params.yaml": {"seed": "modified"}}},
                      {"changed outs": {"checkpoints/seg/best.pt": "not in cache"}}],
        "evaluate": [{"changed deps": {"checkpoints/joint/best.pt": "modified", "data/raw/brats": "deleted"}},
                     {"changed outs": {"reports/metrics.json": "modified", "reports/plots": "deleted"}}],
        "register": ["changed command"],
    }
    assert lock_drift(status) == ["train_seg: dep tasks/training modified", "train_seg: param seed modified",
                                  "evaluate: report reports/metrics.json modified", "register: changed command"]


def test_the_committed_lock_was_made_by_the_committed_code_params_and_reports(tmp_path, monkeypatch):
    """dvc.lock and the reports git carries (metrics.json, the training histories) claim to come from this commit's
    code and params: `dvc status` in a fresh clone must find no code or param changed since. Code edited after the
    last `make run` (it happened: the lock and metrics.json came from a run before two later edits of
    tasks/evaluation and tasks/tracking) leaves results that nothing in the commit can reproduce. The fix is a
    `make run`, committing dvc.lock and reports/ with the code."""
    from dvc.repo import Repo

    monkeypatch.chdir(project_files(tmp_path))  # stages named as in `dvc status` there: "evaluate", not a path
    with Repo(".") as repo:
        drift = lock_drift(repo.status())
    assert not drift, "dvc.lock is not from this commit's project; run `make run` and commit dvc.lock and reports/: " \
        + "; ".join(drift)


def test_bytecode_beside_the_code_changes_no_stage(tmp_path, monkeypatch):
    """Python writes __pycache__ folders beside the modules it imports (unless PYTHONDONTWRITEBYTECODE is set), and
    DVC hashed them with the folder deps (tasks/evaluation, tasks/training, ...): a `make run` recorded a lock that no
    checkout matches, so every stage from such a folder on looked changed in a fresh clone."""
    from dvc.repo import Repo

    monkeypatch.chdir(project_files(tmp_path))
    with Repo(".") as repo:
        before = lock_drift(repo.status())
    for folder in ("tasks/evaluation", "tasks/training", "tasks/tracking", "models"):
        (tmp_path / folder / "__pycache__").mkdir()
        (tmp_path / folder / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\xa7\r\r\n bytecode")
    (tmp_path / "tasks" / "evaluation" / "report.pyc").write_bytes(b"\xa7\r\r\n bytecode")
    with Repo(".") as repo:
        assert lock_drift(repo.status()) == before
