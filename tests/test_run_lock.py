"""One pipeline run at a time per project: a second one (a `dvc repro` step or a flow run) is refused at once,
naming the run that holds the project, and nothing it would have written is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import load_settings
from tasks.errors import SliceWiseError
from tasks.run_lock import LOCK_FILE, pipeline_lock
from tests.project_copy import ROOT


def test_a_second_run_is_refused_with_the_holders_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pipeline_lock("Prefect flow run 1234"):
        with pytest.raises(SliceWiseError, match=r"another pipeline run .*\(Prefect flow run 1234, pid \d+\)") as refused:
            with pipeline_lock("python -m tasks split"):
                pytest.fail("two runs held the project at once")
        assert LOCK_FILE in str(refused.value)
    with pipeline_lock("python -m tasks split"):  # released when its holder is done
        pass


def test_the_processes_of_one_torchrun_stage_are_one_run(tmp_path, monkeypatch):
    """torchrun starts `python -m tasks train_seg` once per process: rank 0 holds the lock for them all."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pipeline_lock("python -m tasks train_seg"):
        monkeypatch.setenv("RANK", "1")
        with pipeline_lock("python -m tasks train_seg"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(SliceWiseError, match="another pipeline run"):
            with pipeline_lock("python -m tasks train_seg"):
                pass
        # review 2026-12-07: RANK alone (a cluster shell's environment; the step then trains in one process) is no
        # torchrun process, and skipped the lock all the same
        monkeypatch.setenv("RANK", "3")
        monkeypatch.delenv("WORLD_SIZE")
        with pytest.raises(SliceWiseError, match="another pipeline run"):
            with pipeline_lock("python -m tasks train_seg"):
                pass


def test_a_dvc_step_is_refused_while_a_flow_run_holds_the_project(tmp_path, monkeypatch):
    """What dvc.yaml runs (`python -m tasks <step>`) fails fast while a flow run holds the project, before the step
    reads params.yaml or writes anything."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("this is not read: the lock comes first\n")
    with pipeline_lock("Prefect flow run abcd"):
        done = subprocess.run([sys.executable, "-m", "tasks", "split"], cwd=tmp_path, capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode != 0
    assert "another pipeline run is working in this project (Prefect flow run abcd" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "params.yaml"]


def test_make_runs_check_refuses_before_dvc_clears_any_output_while_a_flow_run_holds_the_project(tmp_path,
                                                                                                      monkeypatch):
    """`dvc repro` clears a stale stage's outputs before the stage's command can be refused by the lock (a flow run's
    register.json was lost so): `make run` asks `tasks check` first, and it is refused while the project is held."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    check = [sys.executable, "-m", "tasks", "check"]
    env = {"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"}
    with pipeline_lock("Prefect flow run abcd"):
        refused = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 1
    assert "another pipeline run is working in this project (Prefect flow run abcd" in refused.stderr
    free = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert free.returncode == 0 and "valid (profile quick" in free.stdout
    run_target = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1]
    assert run_target.index("tasks check") < run_target.index("dvc repro")


def test_a_project_folder_that_cannot_hold_the_lock_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / LOCK_FILE).mkdir()  # something that cannot be opened as the lock file, whoever runs this
    with pytest.raises(SliceWiseError, match="cannot open the pipeline lock file") as refused:
        with pipeline_lock("python -m tasks split"):
            pass
    assert LOCK_FILE in str(refused.value)


def test_a_file_system_without_locks_is_named_not_a_traceback(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(SliceWiseError, match=r"cannot lock the pipeline lock file \(No locks available\)") as refused:
        with pipeline_lock("python -m tasks check"):
            pass
    assert LOCK_FILE in str(refused.value)


def test_params_are_not_changed_under_a_running_flow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: quick\n")
    with pipeline_lock("Prefect flow run abcd"):
        done = subprocess.run([sys.executable, "-m", "tasks", "set", "profile=baseline"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "Prefect flow run abcd" in done.stderr
    assert (tmp_path / "params.yaml").read_text() == "profile: quick\n"


def test_set_says_what_landed(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    done = subprocess.run([sys.executable, "-m", "tasks", "set", "train.batch_size=32", "profile=baseline",
                           "evaluate.organisers_check=true"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["params.yaml: train.batch_size = 32", 'params.yaml: profile = "baseline"',
                                        "params.yaml: evaluate.organisers_check = true"]  # as the file now holds them
    settings = load_settings(tmp_path / "params.yaml")
    assert (settings.train.batch_size, settings.profile, settings.evaluate.organisers_check) == (32, "baseline", True)


def test_set_notes_a_kaggle_version_pinned_under_another_source(tmp_path):
    """data.kaggle_versions under the synthetic source does nothing but rerun fetch (DVC reads `data` whole): said."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "tasks", "set", "data.kaggle_versions.brats=3"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout == "params.yaml: data.kaggle_versions.brats = 3\n"
    assert "note: data.kaggle_versions is read only with data.source kaggle (this one is synthetic)" in done.stderr
    done = subprocess.run([sys.executable, "-m", "tasks", "set", "data.source=kaggle", "data.kaggle_versions.images=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "note:" not in done.stderr


def test_set_notes_a_local_folder_under_another_source_and_keeps_text_and_file_mode(tmp_path):
    """Review 2026-12-07: data.brats_dir under the synthetic source was taken without a word (`flows run --brats-dir`
    refuses it); a non-ASCII value was echoed as \\u escapes; a params.yaml kept at 0640 came back 0644."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    params.chmod(0o640)
    env = {"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "tasks", "set", "data.brats_dir=/scans", "tracking.experiment=ëxpé"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "note: data.brats_dir and data.kaggle_dir are read only with data.source local (this one is synthetic)" \
        in done.stderr
    assert 'params.yaml: tracking.experiment = "ëxpé"' in done.stdout
    assert params.stat().st_mode & 0o777 == 0o640


def test_set_waits_while_dvc_holds_its_lock_to_record_a_stage(tmp_path):
    """`dvc repro` gives its repository lock up only while a stage's command runs, and takes it back to record the
    stage with params.yaml's values as it reads them then: `tasks set` in that moment rewrote them under it."""
    import time

    from dvc.repo import Repo

    params = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params)
    subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        repo.lock.lock()  # as `dvc repro` holds it while it records a stage
        try:
            setting = subprocess.Popen([sys.executable, "-m", "tasks", "set", "profile=baseline"], cwd=tmp_path,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"})
            time.sleep(6)  # past DVC's own 3 s try
            assert setting.poll() is None and (tmp_path / "params.yaml").read_text() == params
        finally:
            repo.lock.unlock()
    _, err = setting.communicate(timeout=120)
    assert setting.returncode == 0, err
    assert load_settings(tmp_path / "params.yaml").profile == "baseline"



KILLED_HOLDER = """
import os, signal, sys, time
from tasks.data.process_pool import process_pool
from tasks.run_lock import pipeline_lock

with pipeline_lock("python -m tasks slice"):
    if sys.argv[1] == "pool":  # forked while the lock is held, as fetch's and slice's workers are
        pool = process_pool(2)
        children = {pool.submit(os.getpid).result() for _ in range(8)}
    elif (child := os.fork()) == 0:  # a child that lives on after its parent, whatever it is
        time.sleep(60)
        os._exit(0)
    else:
        children = {child}
    print(*sorted(children), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer's way: no clean-up runs
"""


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _killed_holder(tmp_path: Path, children: str) -> list[int]:
    """Runs KILLED_HOLDER in `tmp_path`; the pids of the children it left (its output goes to files: a pipe would
    wait for the children, which inherit it)."""
    out, err = tmp_path / "children.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        holder = subprocess.run([sys.executable, "-c", KILLED_HOLDER, children], cwd=tmp_path, stdout=stdout,
                                stderr=stderr, timeout=120,
                                env={"PYTHONPATH": str(ROOT.resolve()), "PATH": "/usr/bin:/bin"})
    assert holder.returncode == -9, err.read_text()
    return [int(pid) for pid in out.read_text().split()]


def test_a_killed_runs_forked_children_do_not_keep_the_project_locked(tmp_path, monkeypatch):
    """A flock belongs to the open file, which a forked child shares: after a `kill -9` of fetch or slice their pool
    workers kept the project locked ("another pipeline run ... pid <dead>") for as long as they lived."""
    monkeypatch.chdir(tmp_path)
    [child] = _killed_holder(tmp_path, "fork")
    try:
        assert _alive(child)
        with pipeline_lock("python -m tasks check"):
            pass
        assert _alive(child)  # the lock was free while the killed run's child still lived
    finally:
        os.kill(child, 9)


def test_a_killed_steps_pool_workers_end_with_it(tmp_path, monkeypatch):
    """Idle pool workers wait on a queue their siblings also hold: after a `kill -9` of their step they lived on,
    each with a patient's worth of memory, until killed by hand."""
    import time

    monkeypatch.chdir(tmp_path)
    workers = _killed_holder(tmp_path, "pool")
    assert workers
    try:
        deadline = time.monotonic() + 30
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), "the killed step's pool workers outlived it"
        with pipeline_lock("python -m tasks check"):
            pass
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, 9)
