"""Sensors: keep Dagster in step with DVC, and an opt-in trigger for new raw data files.

- ``dvc_lock_sync`` (running by default): when ``dvc.lock`` changes or outputs appear (``dvc repro``,
  ``dvc pull``, ``git checkout`` + ``dvc checkout``), report the recorded state to Dagster as runless
  materialisations (``orchestration/sync.py``). A sensor rather than work at definitions load: loading
  happens in every process (webserver, daemon, each run) and must stay side-effect free and fast; the
  daemon ticks in one place, and the instance stays the single record of what happened.
- ``raw_files_changed`` (stopped by default; switch it on in the UI under Automation): with
  ``data.source: files``, when the raw files' sha256 differ from those the last ``raw_data`` run recorded
  in its metrics, materialise ``raw_data`` (forced: DVC does not track files outside the project) and
  everything downstream of it. Blocking GX checks still stop the run on bad data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import yaml

from orchestration.dvc_graph import DvcPipeline, DvcStage
from orchestration.dvc_state import DvcStatusError, dvc_status, read_lock
from orchestration.resources import DvcProject, stage_env
from orchestration.sync import dvc_state_events

SYNC_SENSOR = "dvc_lock_sync"
RAW_FILES_SENSOR = "raw_files_changed"
RAW_STAGE = "raw_data"
SYNC_INTERVAL_S = 15
RAW_FILES_INTERVAL_S = 60
_ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def workspace_fingerprint(pipeline: DvcPipeline, project_dir: Path) -> str:
    """Changes when ``dvc.lock`` changes or any stage output appears or disappears."""
    h = hashlib.sha256()
    try:
        h.update((project_dir / "dvc.lock").read_bytes())
    except FileNotFoundError:
        h.update(b"no dvc.lock")
    for stage in pipeline.stages:
        for path in stage.produced:
            h.update(f"{path}={(project_dir / path).exists()}\n".encode())
    return h.hexdigest()[:16]


def build_sync_sensor(pipeline: DvcPipeline) -> dg.SensorDefinition:
    @dg.sensor(
        name=SYNC_SENSOR,
        minimum_interval_seconds=SYNC_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reports what `dvc repro` / `dvc pull` produced (dvc.lock, metrics, GX results) as runless "
        "materialisations and check results, so the UI shows the workspace's state without rerunning. "
        "Runs `dvc status` only when dvc.lock or the presence of outputs changed, and never during a run.",
    )
    def dvc_lock_sync(context: dg.SensorEvaluationContext, dvc: DvcProject):
        root = Path(dvc.project_dir)
        fingerprint = workspace_fingerprint(pipeline, root)
        if context.cursor == fingerprint:
            return dg.SkipReason("dvc.lock and the outputs are unchanged since the last sync")
        active = context.instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE_RUN_STATUSES), limit=1)
        if active:
            return dg.SkipReason(f"run {active[0].run_id} is in progress; syncing after it")
        if not read_lock(root):
            return dg.SensorResult(cursor=fingerprint, skip_reason="no dvc.lock yet: nothing reproduced")
        try:
            status = dvc_status(root, dvc.dvc_bin, env=stage_env())
        except DvcStatusError as exc:  # e.g. a `dvc repro` in a terminal holds the lock: retry next tick
            return dg.SkipReason(str(exc))
        events = dvc_state_events(context.instance, pipeline, root, status)
        context.log.info(f"{len(events)} event(s) from dvc.lock")
        return dg.SensorResult(asset_events=events, cursor=fingerprint)

    return dvc_lock_sync


# ------------------------------------------------------------------------------- raw data files


def raw_file_hashes(project_dir: Path) -> dict[str, str] | None:
    """sha256 of the files ``data.paths`` names (a directory: its files), as the raw_data stage hashes
    them; ``None`` unless ``params.yaml`` has ``data.source: files``."""
    try:
        params = yaml.safe_load((project_dir / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = params.get("data") or {}
    if data.get("source") != "files":
        return None
    out: dict[str, str] = {}
    for value in (data.get("paths") or {}).values():
        p = Path(str(value))
        p = p if p.is_absolute() else project_dir / p
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f.relative_to(project_dir) if f.is_relative_to(project_dir) else f)] = hashlib.sha256(
                    f.read_bytes()
                ).hexdigest()
    return out


def recorded_raw_hashes(stage: DvcStage, project_dir: Path) -> list[str] | None:
    """The sha256 values the last raw_data run recorded (``provenance.files_sha256`` in its metrics)."""
    for rel in stage.metrics:
        try:
            doc = json.loads((project_dir / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        prov = doc.get("provenance") if isinstance(doc, Mapping) else None
        if isinstance(prov, Mapping) and isinstance(prov.get("files_sha256"), Mapping):
            return sorted(str(v) for v in prov["files_sha256"].values())
    return None


def build_raw_files_sensor(pipeline: DvcPipeline, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition | None:
    if RAW_STAGE not in pipeline.stage_names:
        return None
    raw = pipeline.stage(RAW_STAGE)
    downstream: list[str] = []
    frontier = [RAW_STAGE]
    while frontier:
        name = frontier.pop()
        for d in pipeline.downstream(name):
            if d not in downstream:
                downstream.append(d)
                frontier.append(d)
    selection = [dg.AssetKey(raw.asset_key)] + [
        dg.AssetKey(s.asset_key) for s in pipeline.stages if s.name in downstream
    ]

    @dg.sensor(
        name=RAW_FILES_SENSOR,
        job=job,
        minimum_interval_seconds=RAW_FILES_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"With `data.source: files`: when the raw files differ (sha256) from those the last "
        f"`{RAW_STAGE}` run recorded, materialise {RAW_STAGE} (forced) and everything downstream "
        f"({len(selection)} assets). Off by default: switch it on to retrain on every new data drop.",
    )
    def raw_files_changed(context: dg.SensorEvaluationContext, dvc: DvcProject):
        root = Path(dvc.project_dir)
        current = raw_file_hashes(root)
        if current is None:
            return dg.SkipReason("params.yaml data.source is not 'files'")
        if sorted(current.values()) == recorded_raw_hashes(raw, root):
            return dg.SkipReason(f"the {len(current)} raw file(s) are those {RAW_STAGE} last read")
        key = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
        context.log.info(f"raw files changed: {sorted(current)}")
        return dg.RunRequest(
            run_key=f"raw-files-{key}",
            asset_selection=selection,
            run_config={"ops": {raw.asset_key: {"config": {"force": True}}}},
            tags={"expctr/trigger": RAW_FILES_SENSOR},
        )

    return raw_files_changed
