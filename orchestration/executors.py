"""Where the stages of a run execute, chosen by configuration: ``$EXPCTR_DAGSTER_EXECUTOR``.

- ``in_process`` (default): every stage in the Dagster process, one after another.
- ``docker``: each asset's stage (and each GX check) in its own container of the stage image
  (``docker/build_stage_image.sh``), through ``dagster-docker``'s ``docker_executor``. The project checkout,
  with its DVC cache, and ``$DAGSTER_HOME`` are mounted at the same paths as on the host, so the stage's
  outputs and ``dvc.lock`` land in the project and the step reports to the same Dagster instance; host
  networking (the daemon here has no bridge). Containers carry the label ``expctr.stage``.
- ``k8s``: each step as a Kubernetes Job through ``dagster-k8s``'s ``k8s_job_executor``, configured by the
  YAML file ``$EXPCTR_K8S_EXECUTOR_CONFIG`` (default: ``k8s_executor.yaml`` beside this module): the same
  image from a registry, the project on a shared volume.

The assets do not change between the three: only the executor definition does. One step at a time in
every mode (``max_concurrent: 1``): parallel ``dvc repro`` in one workspace contends for DVC's lock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

EXECUTOR_ENV = "EXPCTR_DAGSTER_EXECUTOR"
STAGE_IMAGE_ENV = "EXPCTR_STAGE_IMAGE"
DOCKER_MOUNTS_ENV = "EXPCTR_DOCKER_MOUNTS"
K8S_CONFIG_ENV = "EXPCTR_K8S_EXECUTOR_CONFIG"
DEFAULT_STAGE_IMAGE = "expctr-stage:latest"
DEFAULT_K8S_CONFIG = Path(__file__).with_name("k8s_executor.yaml")
CONTAINER_LABEL = "expctr.stage"
EXECUTORS = ("in_process", "docker", "k8s")
# passed on to the step's container, so the definitions it loads are the ones the run was planned with
FORWARDED_ENV = (EXECUTOR_ENV, STAGE_IMAGE_ENV, DOCKER_MOUNTS_ENV, "EXPCTR_TEST_THREADS", "DVC_NO_ANALYTICS")


class ExecutorConfigError(ValueError):
    """The executor configuration (environment variable or YAML file) is not usable; the message says why."""


def executor_name(env: Mapping[str, str] | None = None) -> str:
    """The configured executor: ``$EXPCTR_DAGSTER_EXECUTOR`` (default ``in_process``)."""
    env = os.environ if env is None else env
    name = (env.get(EXECUTOR_ENV) or "in_process").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise ExecutorConfigError(f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def docker_executor_config(
    project_dir: str | Path,
    dagster_home: str | Path,
    image: str = DEFAULT_STAGE_IMAGE,
    extra_mounts: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``docker_executor`` config: same-path binds of the project, ``$DAGSTER_HOME`` and ``extra_mounts``
    (e.g. a data cache outside the project), host network, the caller's uid:gid, working dir = project."""
    env = os.environ if env is None else env
    project_dir, dagster_home = str(Path(project_dir).resolve()), str(Path(dagster_home).resolve())
    mounts = dict.fromkeys([project_dir, dagster_home, *(str(Path(m).resolve()) for m in extra_mounts)])
    forwarded = [f"{k}={env[k]}" for k in FORWARDED_ENV if env.get(k)]
    return {
        "image": image,
        "networks": ["host"],
        "env_vars": [f"EXPCTR_PROJECT_DIR={project_dir}", f"DAGSTER_HOME={dagster_home}", "HOME=/tmp",
                     *forwarded],
        "container_kwargs": {
            "volumes": {m: {"bind": m, "mode": "rw"} for m in mounts},
            "working_dir": project_dir,
            "user": f"{os.getuid()}:{os.getgid()}",
            "labels": {CONTAINER_LABEL: "1", f"{CONTAINER_LABEL}.project": project_dir},
        },
        "max_concurrent": 1,
    }


def load_k8s_executor_config(path: str | Path | None = None) -> dict[str, Any]:
    """The ``k8s_job_executor`` config in the YAML file ``path`` (default ``$EXPCTR_K8S_EXECUTOR_CONFIG`` or
    ``k8s_executor.yaml`` beside this module). Shape only; Dagster validates the keys against its schema."""
    path = Path(path or os.environ.get(K8S_CONFIG_ENV) or DEFAULT_K8S_CONFIG)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExecutorConfigError(f"{path}: cannot read the Kubernetes executor config ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ExecutorConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ExecutorConfigError(f"{path}: expected a mapping of k8s_job_executor config keys")
    return data


def select_executor(project_dir: str | Path, env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor definition the configuration names (see the module docstring)."""
    env = os.environ if env is None else env
    name = executor_name(env)
    if name == "in_process":
        return dg.in_process_executor
    if name == "docker":
        from dagster_docker import docker_executor

        home = env.get("DAGSTER_HOME")
        if not home:
            raise ExecutorConfigError(
                f"{EXECUTOR_ENV}=docker needs DAGSTER_HOME: the step containers report to that instance"
            )
        mounts = [m for m in (env.get(DOCKER_MOUNTS_ENV) or "").split(os.pathsep) if m]
        config = docker_executor_config(project_dir, home, env.get(STAGE_IMAGE_ENV) or DEFAULT_STAGE_IMAGE,
                                        mounts, env)
        return docker_executor.configured(config, name="expctr_docker")
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(load_k8s_executor_config(env.get(K8S_CONFIG_ENV)), name="expctr_k8s")
