"""The Bento as a real container image: `bentoml containerize` on the Debian base image, run with host
networking bound to 127.0.0.1, probed like a deploy would (/readyz, one /predict, one bad request).

Needs a Docker daemon (Debian's docker.io, `dockerd --bridge=none --iptables=false`: scripts/ci/system_deps.sh)
and network to PyPI from the build. Marker `container`: .ci/run's second step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import REPO_ROOT

from expctr.config import load_params

pytestmark = pytest.mark.container

BENTOML = str(Path(sys.executable).with_name("bentoml"))


def docker(*args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_image() -> str:
    """The Debian base image (built once per machine, cached by docker/build_base.sh)."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("no Docker daemon: run `bash scripts/ci/system_deps.sh` (starts Debian's dockerd) first")
    proc = subprocess.run(["bash", str(REPO_ROOT / "docker" / "build_base.sh")], capture_output=True, text=True,
                          timeout=1200, check=False)  # cached: seconds when the image exists
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return "expctr-base:bookworm"


@pytest.fixture(scope="module")
def image(tiny_rounds_project: Path, base_image: str):
    """The tiny run packaged like the `bento` stage does it, then `bentoml containerize`d."""
    spec = importlib.util.spec_from_file_location("expctr_bento_package_ctr", REPO_ROOT / "bento" / "package.py")
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    params = load_params(tiny_rounds_project / "params.yaml")
    model_tag, _ = package.register_model(tiny_rounds_project, params)
    bento_tag = package.build_bento(tiny_rounds_project, params, model_tag)
    tag = f"expctr-test:{bento_tag.split(':')[1]}"
    docker("rmi", "-f", tag, check=False)
    # the documented command: `bentoml containerize` through a BuildKit-capable docker client, host network
    proc = subprocess.run(["bash", str(REPO_ROOT / "docker" / "containerize.sh"), bento_tag, tag],
                          capture_output=True, text=True, timeout=3600, check=False,
                          env={**os.environ, "BENTOML": BENTOML, "BENTOML_DO_NOT_TRACK": "True"})
    assert proc.returncode == 0, f"containerize failed\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    yield tag, model_tag
    docker("rmi", "-f", tag, check=False)


@pytest.fixture
def container(image):
    """The image running as a deploy would run it: host network, bound to 127.0.0.1 on a free port."""
    image, _ = image
    port, name = free_port(), f"expctr-test-{os.getpid()}-{time.monotonic_ns()}"
    docker("run", "-d", "--rm", "--network", "host", "--name", name, image, "--host", "127.0.0.1", "--port",
           str(port))
    try:
        yield f"http://127.0.0.1:{port}", name
    finally:
        docker("rm", "-f", name, check=False, timeout=60)


def logs(name: str) -> str:
    proc = docker("logs", "--tail", "60", name, check=False)
    return proc.stdout + proc.stderr


def readiness():
    """bench/readiness.py: the /readyz wait the benchmarks use too."""
    spec = importlib.util.spec_from_file_location("expctr_bench_readiness", REPO_ROOT / "bench" / "readiness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_container_serves_the_bento(container, image):
    url, name = container
    ready = readiness()

    def stopped() -> str | None:
        state = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
        return None if state.stdout.strip() == "true" else "the container exited"

    try:
        ready.wait_ready(url, stopped, timeout=600)
    except ready.NotReady as exc:
        pytest.fail(f"{exc}:\n" + logs(name))

    import bentoml
    import polars as pl

    bundle = Path(bentoml.models.get(image[1]).path)  # the model the image ships
    users = pl.read_parquet(bundle / "users.parquet")["user_id"].to_list()
    items = pl.read_parquet(bundle / "catalogue.parquet")["item_id"].to_list()
    r = httpx.post(f"{url}/predict", json={"user_id": users[0], "candidates": items[:3], "explain": True},
                   timeout=300)
    assert r.status_code == 200, r.text + logs(name)
    body = r.json()
    assert sorted(it["item_id"] for it in body["items"]) == sorted(items[:3])
    assert all(0 < it["p_click"] < 1 and it["explanation"] for it in body["items"])
    assert body["versions"]["model"] and body["versions"]["git_commit"]

    bad = httpx.post(f"{url}/predict", content=b'{"user_id": ', headers={"content-type": "application/json"},
                     timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json", bad.text
    unknown = httpx.post(f"{url}/predict", json={"user_id": users[0], "candidates": ["no such item"]}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["message"], unknown.text


def test_the_image_also_runs_the_pipeline_tools(image):
    """Reusable for stage runs (Dagster's Docker executor): `expctr`, `dagster` and `dvc` in the image."""
    script = "expctr --help >/dev/null && python -c 'import orchestration' && dagster --version && dvc --version"
    proc = docker("run", "--rm", "--network", "host", image[0], "bash", "-c", script, timeout=300)
    assert "dagster" in proc.stdout and proc.stdout.strip().splitlines()[-1].startswith("3."), proc.stdout


def test_the_image_runs_a_pipeline_stage_on_a_mounted_checkout(image, tiny_rounds_project: Path, tmp_path: Path):
    """How Dagster's Docker executor will use it: the project mounted at /project, its code first on the path,
    `dvc repro --single-item <stage>` inside; the host's DVC then sees the stage as up to date."""
    from support import copy_project_tree

    project = tmp_path / "project"
    project.mkdir()
    copy_project_tree(project)
    shutil.copy(tiny_rounds_project / "params.yaml", project / "params.yaml")
    shutil.copytree(tiny_rounds_project / "data" / "raw", project / "data" / "raw")
    git = ["git", "-c", "user.name=expctr-tests", "-c", "user.email=tests@expctr.invalid"]
    for cmd in (git + ["init", "-q"], [str(Path(sys.executable).with_name("dvc")), "init", "-q"],
                git + ["add", "-A"], git + ["commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)
    docker("run", "--rm", "--network", "host", "-v", f"{project}:/project", "-w", "/project",
           "-e", "PYTHONPATH=/project/src", "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
           image[0], "dvc", "repro", "--single-item", "features", timeout=600)
    assert (project / "data" / "features" / "train.parquet").is_file()
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "features"],
                            cwd=project, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout, status.stdout
