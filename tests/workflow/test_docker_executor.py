"""Stages in containers: Dagster's Docker executor (dagster-docker) runs each asset's stage in its own container
of the stage image (docker/build_stage_image.sh). On the tiny real slice, `raw_data` -> `validated_features`
materialised through it must leave the same outputs and the same dvc.lock as the in-process executor does.

The container test needs a Docker daemon (Debian's docker.io, `dockerd --bridge=none --iptables=false`:
scripts/ci/system_deps.sh) and PyPI from the image build: marker `container`, .ci/run's second step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import (
    REPO_ROOT,
    SHARED_CACHE,
    TINY_SLICE,
    VENV_BIN,
    copy_project_tree,
    make_params,
    without_timings,
)

from orchestration.executors import (
    CONTAINER_LABEL,
    DOCKER_MOUNTS_ENV,
    EXECUTOR_ENV,
    STAGE_IMAGE_ENV,
    ExecutorConfigError,
    docker_executor_config,
    select_executor,
)

GIT = ["git", "-c", "user.name=expctr-tests", "-c", "user.email=tests@expctr.invalid"]
ASSETS = "raw_data,validated_features"
STAGES = ("raw_data", "features")
# wall-clock fields of the stages' metrics JSON: the only values allowed to differ between two runs


def sh(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def docker(*args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert not check or proc.returncode == 0, f"docker {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


def make_project(root: Path) -> Path:
    """A git + DVC repo of the project's stages (code, dvc.yaml, orchestration) on the tiny real slice."""
    root.mkdir(parents=True)
    copy_project_tree(root)
    shutil.copytree(REPO_ROOT / "orchestration", root / "orchestration",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    make_params(root, **TINY_SLICE)
    (root / ".gitignore").write_text("/data/\n/models/\n/.dagster_home/\n")
    home = root / ".dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    sh(GIT + ["init", "-q"], root)
    sh([VENV_BIN / "dvc", "init", "-q"], root)
    sh(GIT + ["add", "-A"], root)
    sh(GIT + ["commit", "-qm", "tiny project"], root)
    return root


def materialize(root: Path, executor: str, image: str | None = None) -> str:
    """`dg launch --assets` of raw_data and validated_features in ``root`` with the given executor."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "EXPCTR_PROJECT_DIR": str(root), "DAGSTER_HOME": str(root / ".dagster_home"), EXECUTOR_ENV: executor}
    if image:
        env.update({STAGE_IMAGE_ENV: image, DOCKER_MOUNTS_ENV: str(SHARED_CACHE)})  # the dataset wheel cache
    proc = sh([VENV_BIN / "dg", "launch", "--assets", ASSETS, "-m", "orchestration.definitions"],
              root, env, timeout=3600)  # minutes on an idle machine; a loaded one is many times slower
    out = proc.stdout + proc.stderr
    assert "RUN_SUCCESS" in out, out[-5000:]
    return out


def file_hashes(root: Path, rel: str) -> dict[str, str]:
    base = root / rel
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def comparable_lock(root: Path) -> dict:
    """dvc.lock of the two stages, the md5 of the (timing-bearing, uncached) metrics files left out."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES), lock.keys()
    for stage in lock.values():
        stage["outs"] = [o if o["path"].startswith("data/") else {"path": o["path"]} for o in stage["outs"]]
    return lock


# ------------------------------------------------------------------------------ configuration (default run)


def test_docker_config_mounts_the_project_and_instance_at_their_own_paths(tmp_path):
    project, home, cache = tmp_path / "p", tmp_path / "h", tmp_path / "c"
    config = docker_executor_config(project, home, "expctr-stage:abc", [cache], env={"EXPCTR_TEST_THREADS": "1"})
    volumes = config["container_kwargs"]["volumes"]
    assert volumes == {str(p): {"bind": str(p), "mode": "rw"} for p in (project, home, cache)}
    assert config["networks"] == ["host"] and config["max_concurrent"] == 1
    assert config["container_kwargs"]["working_dir"] == str(project)
    assert f"EXPCTR_PROJECT_DIR={project}" in config["env_vars"] and "EXPCTR_TEST_THREADS=1" in config["env_vars"]
    assert config["container_kwargs"]["labels"][CONTAINER_LABEL] == "1"

    executor = select_executor(project, {EXECUTOR_ENV: "docker", "DAGSTER_HOME": str(home)})
    assert executor.name == "expctr_docker"
    with pytest.raises(ExecutorConfigError, match="needs DAGSTER_HOME"):
        select_executor(project, {EXECUTOR_ENV: "docker"})
    assert select_executor(project, {}).name == "in_process"


# ---------------------------------------------------------------------------------- the real run (container)


@pytest.fixture(scope="module")
def stage_image() -> str:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("no Docker daemon: run `bash scripts/ci/system_deps.sh` (starts Debian's dockerd) first")
    proc = subprocess.run(["bash", str(REPO_ROOT / "docker" / "build_stage_image.sh")], capture_output=True,
                          text=True, timeout=3600, check=False)  # cached: seconds when the image exists
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.container
def test_docker_executor_run_equals_the_in_process_run(stage_image, tmp_path):
    inproc, contained = make_project(tmp_path / "in_process"), make_project(tmp_path / "docker")
    materialize(inproc, "in_process")
    label = f"{CONTAINER_LABEL}.project={contained.resolve()}"
    try:
        out = materialize(contained, "docker", stage_image)
        # each asset's stage and each GX check ran in its own container of the stage image
        ids = docker("ps", "-a", "-q", "--filter", f"label={label}").stdout.split()
        assert len(ids) == 4, (ids, out[-3000:])
        images = docker("inspect", "-f", "{{.Config.Image}} {{.State.ExitCode}} {{.HostConfig.NetworkMode}}",
                        *ids).stdout.split("\n")
        assert all(line == f"{stage_image} 0 host" for line in images if line), images
        assert "Launching step in Docker container" in out or "STEP_WORKER_STARTING" in out, out[-3000:]
    finally:
        ids = docker("ps", "-a", "-q", "--filter", f"label={label}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)

    assert comparable_lock(contained) == comparable_lock(inproc)
    for rel in ("data/raw", "data/features"):
        assert file_hashes(contained, rel) == file_hashes(inproc, rel), rel
    for rel in ("metrics/raw_data.json", "metrics/validation_raw.json", "metrics/features.json",
                "metrics/validation_features.json"):
        a, b = (json.loads((r / rel).read_text()) for r in (contained, inproc))
        assert without_timings(a) == without_timings(b), rel
    # the host's DVC sees the container's work as its own: nothing left to do
    status = sh([VENV_BIN / "dvc", "status", *STAGES], contained)
    assert "up to date" in status.stdout, status.stdout
