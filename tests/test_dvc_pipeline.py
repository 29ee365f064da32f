"""`dvc repro` on a tiny profile: the data stages run, the lock is clean, a split change reruns only split."""

import json

import pytest

from tasks.params_edit import set_params
from tests.project_copy import copy_project, dvc

pytestmark = pytest.mark.slow

DATA_STAGES = ["fetch", "slice", "split"]


def ran_stages(output: str) -> set[str]:
    return {stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output}


def test_repro_then_clean_status_then_only_split_reruns(tmp_path):
    project = copy_project(tmp_path, stages=DATA_STAGES)

    first = dvc(project, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran_stages(first.stdout) == set(DATA_STAGES)
    assert (project / "data" / "processed" / "manifest.csv").exists()
    assert json.loads((project / "data" / "splits" / "summary.json").read_text())["test"]["brats_patients"] >= 1

    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout

    set_params({"split.val": 0.2, "split.train": 0.65}, project / "params.yaml")
    second = dvc(project, "repro")
    assert second.returncode == 0, second.stdout + second.stderr
    assert ran_stages(second.stdout) == {"split"}
