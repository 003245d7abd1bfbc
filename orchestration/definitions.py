"""Dagster definitions derived from ``dvc.yaml`` (``[tool.dagster] module_name``).

The project directory is ``$EXPCTR_PROJECT_DIR`` if set, else the current directory when it holds a
``dvc.yaml``, else the repository this package sits in. Loading reads YAML only: no DVC, torch,
transformers or Great Expectations import.
"""

from pathlib import Path

import dagster as dg

from orchestration.assets import asset_keys, build_assets, build_checks
from orchestration.dvc_graph import DVC_YAML, load_pipeline
from orchestration.executors import select_executor
from orchestration.project import resolve_project_dir
from orchestration.resources import DvcProject, default_dvc_bin
from orchestration.sensors import build_raw_files_sensor, build_sync_sensor

JOB_NAME = "expctr_pipeline"


def build_definitions(project_dir: str | Path | None = None) -> dg.Definitions:
    """Assets (with code versions), blocking GX checks, the ``dvc`` resource, the ``expctr_pipeline`` job
    and the sensors (``dvc_lock_sync`` on, ``raw_files_changed`` off) for a project.

    The executor comes from ``$EXPCTR_DAGSTER_EXECUTOR`` (:mod:`orchestration.executors`): by default the
    in-process one (the stages of a run one after another in one process: no contention for DVC's
    repository lock, no per-step start-up); ``docker`` or ``k8s`` run each step in its own container, still
    one at a time.
    """
    root = Path(project_dir).resolve() if project_dir is not None else resolve_project_dir()
    pipeline = load_pipeline(root)
    executor = select_executor(root)
    pipeline_job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(*asset_keys(pipeline)),
        description=f"Every stage of {root / DVC_YAML} in DVC order, with its blocking GX checks.",
        executor_def=executor,
    )
    sensors = [build_sync_sensor(pipeline), build_raw_files_sensor(pipeline, pipeline_job)]
    return dg.Definitions(
        assets=build_assets(pipeline, root),
        asset_checks=build_checks(pipeline),
        jobs=[pipeline_job],
        sensors=[s for s in sensors if s is not None],
        resources={"dvc": DvcProject(project_dir=str(root), dvc_bin=default_dvc_bin())},
        executor=executor,
    )


defs = build_definitions()
