"""The Kubernetes executor configuration (orchestration/k8s_executor.yaml) as config: it cannot run here (no
cluster), so Dagster validates it against k8s_job_executor's own schema for the real definitions, and a step's
Kubernetes Job is rendered from it the way dagster-k8s's step handler renders one."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from support import REPO_ROOT

from orchestration.definitions import JOB_NAME, build_definitions
from orchestration.executors import (
    DEFAULT_K8S_CONFIG,
    EXECUTOR_ENV,
    K8S_CONFIG_ENV,
    ExecutorConfigError,
    load_k8s_executor_config,
)

# the K8sContainerContext fields k8s_job_executor fills from its config (dagster_k8s.executor)
CONTEXT_KEYS = ("image_pull_policy", "image_pull_secrets", "service_account_name", "env_config_maps", "env_secrets",
                "env_vars", "volume_mounts", "volumes", "labels", "resources", "scheduler_name", "security_context")


def k8s_job(monkeypatch, config_path: Path | None = None) -> dg.JobDefinition:
    monkeypatch.setenv(EXECUTOR_ENV, "k8s")
    if config_path is not None:
        monkeypatch.setenv(K8S_CONFIG_ENV, str(config_path))
    return build_definitions(REPO_ROOT).resolve_job_def(JOB_NAME)


def render_step_job(config: dict, step: str):
    """The V1Job dagster-k8s's K8sStepHandler.launch_step builds for ``step`` from this executor config."""
    context = K8sContainerContext(**{k: config.get(k) for k in CONTEXT_KEYS}, namespace=config.get("job_namespace"),
                                  run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})))
    per_step = config.get("per_step_k8s_config", {}).get(step, {})
    context = context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(per_step)))
    job_config = DagsterK8sJobConfig(job_image=config["job_image"], dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="dagster-instance")
    return construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], f"dagster-step-{step}",
                                     user_defined_k8s_config=context.run_k8s_config)


def test_the_shipped_config_is_valid_for_the_real_definitions(monkeypatch):
    job = k8s_job(monkeypatch)
    assert job.executor_def.name == "expctr_k8s"
    assert dg.validate_run_config(job, {})  # raises DagsterInvalidConfigError on any schema violation
    # a misspelt step name in per_step_k8s_config would be ignored silently: every key must be a step's op
    config = load_k8s_executor_config(DEFAULT_K8S_CONFIG)
    ops = {node.name for node in job.graph.node_defs}
    assert set(config["per_step_k8s_config"]) <= ops, set(config["per_step_k8s_config"]) - ops
    assert config["max_concurrent"] == 1


@pytest.mark.parametrize("edit, message", [
    ({"no_such_key": 1}, 'unexpected config entry "no_such_key"'),
    ({"env_vars": "EXPCTR_PROJECT_DIR=/project"}, "env_vars"),
])
def test_a_broken_config_is_refused_by_dagster(monkeypatch, tmp_path, edit, message):
    config = {**load_k8s_executor_config(DEFAULT_K8S_CONFIG), **edit}
    path = tmp_path / "k8s.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(dg.DagsterInvalidConfigError, match=message):
        dg.validate_run_config(k8s_job(monkeypatch, path), {})


def test_a_step_job_renders_with_the_image_the_project_volume_and_resources():
    config = load_k8s_executor_config(DEFAULT_K8S_CONFIG)
    job = render_step_job(config, "validated_features")
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.image == config["job_image"] and container.args[:3] == ["dagster", "api", "execute_step"]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("project", "/project")]
    assert pod.volumes[0].persistent_volume_claim.claim_name == "expctr-project"
    assert container.working_dir == "/project"
    env = {e.name: e.value for e in container.env}
    assert env["EXPCTR_PROJECT_DIR"] == "/project" and env["EXPCTR_DAGSTER_EXECUTOR"] == "k8s"
    assert container.resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert "nvidia.com/gpu" not in container.resources.limits
    assert pod.service_account_name == "expctr-pipeline" and job.spec.ttl_seconds_after_finished == 3600
    # the per-step override puts the LLM round on a GPU, on top of the shared requests
    gpu = render_step_job(config, "explainer_round_1").spec.template.spec.containers[0].resources
    assert str(gpu.limits["nvidia.com/gpu"]) == "1" and gpu.requests == {"cpu": "2", "memory": "8Gi"}


def test_config_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(ExecutorConfigError, match="missing.yaml"):
        load_k8s_executor_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- job_image\n")
    with pytest.raises(ExecutorConfigError, match="list.yaml: expected a mapping"):
        load_k8s_executor_config(tmp_path / "list.yaml")
    monkeypatch.setenv(EXECUTOR_ENV, "kubernetes-ish")
    with pytest.raises(ExecutorConfigError, match="expected one of in_process, docker, k8s"):
        build_definitions(REPO_ROOT)
