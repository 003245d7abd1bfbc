"""Report what DVC has already produced to Dagster, so both front doors show one state.

After ``dvc repro`` or ``dvc pull`` the workspace holds outputs Dagster never saw: without this the UI
shows every asset as "never materialized". :func:`dvc_state_events` turns each ``dvc.lock`` entry whose
outputs are in the workspace, and whose data version Dagster does not have yet, into a *runless*
``AssetMaterialization`` (same metadata as a Dagster run: metrics, headline table, ``dvc.lock`` hashes)
carrying the data and code versions Dagster's staleness uses, plus an ``AssetCheckEvaluation`` for each of
the stage's GX result files. Nothing is rerun.

It runs three ways: the ``dvc_lock_sync`` sensor (on by default; ``dg dev`` runs it whenever
``dvc.lock`` or the presence of outputs changes), ``python -m orchestration.sync`` (for a Dagster instance
without a daemon), and from tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from orchestration.assets import check_name, evaluate_gx_result, materialization_metadata
from orchestration.dvc_graph import DvcPipeline, load_pipeline
from orchestration.dvc_state import (
    LockProvenance,
    StageStatus,
    dvc_status,
    lock_provenance,
    read_lock,
)
from orchestration.project import resolve_project_dir
from orchestration.resources import default_dvc_bin, stage_env

# Dagster's own tag names for provenance (dagster._core.definitions.data_version); a test pins them.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_TAG_PREFIX = "dagster/input_data_version"
INPUT_EVENT_POINTER_TAG_PREFIX = "dagster/input_event_pointer"
NULL_EVENT_POINTER = "NULL"  # the consumed upstream event is not known (only partitioned assets use it)
DATA_VERSION_IS_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
SYNC_SOURCE = "dvc.lock"

AssetEvent = dg.AssetMaterialization | dg.AssetCheckEvaluation


def provenance_tags(prov: LockProvenance, key_of: Mapping[str, str]) -> dict[str, str]:
    tags = {
        DATA_VERSION_TAG: prov.data_version,
        CODE_VERSION_TAG: prov.code_version,
        DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
    }
    for up, version in prov.input_data_versions.items():
        tags[f"{INPUT_DATA_VERSION_TAG_PREFIX}/{key_of[up]}"] = version
        tags[f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{key_of[up]}"] = NULL_EVENT_POINTER
    return tags


def known_data_version(instance: dg.DagsterInstance, asset_key: str) -> str | None:
    """The data version of the asset's latest materialisation in the Dagster instance."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset_key))
    if event is None or event.asset_materialization is None:
        return None
    return (event.asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def dvc_state_events(instance: dg.DagsterInstance, pipeline: DvcPipeline, project_dir: str | Path,
                     status: Mapping[str, StageStatus]) -> list[AssetEvent]:
    """Runless events for every stage whose ``dvc.lock`` state Dagster does not know yet, upstream first."""
    root = Path(project_dir)
    lock = read_lock(root)
    key_of = {s.name: s.asset_key for s in pipeline.stages}
    events: list[AssetEvent] = []
    for stage in pipeline.stages:  # DvcPipeline keeps file order; order events by the graph below
        prov = lock_provenance(pipeline, stage, root, lock, status)
        if prov is None or known_data_version(instance, stage.asset_key) == prov.data_version:
            continue
        metadata, _ = materialization_metadata(stage, root)
        metadata["dvc_synced_from"] = dg.MetadataValue.text(SYNC_SOURCE)
        if prov.own_inputs_changed or prov.changed_upstream:
            metadata["dvc_status"] = dg.MetadataValue.json(
                {"own_inputs_changed": prov.own_inputs_changed, "changed_upstream": list(prov.changed_upstream)}
            )
        events.append(
            dg.AssetMaterialization(
                asset_key=stage.asset_key,
                description=f"Produced outside Dagster (dvc repro / dvc pull); state read from dvc.lock "
                f"for stage {stage.name!r}.",
                metadata=metadata,
                tags=provenance_tags(prov, key_of),
            )
        )
        for rel in stage.checks:
            result = evaluate_gx_result(root / rel, stage.name, rel)
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=dg.AssetKey(stage.asset_key),
                    check_name=check_name(rel),
                    passed=result.passed,
                    metadata=result.metadata,
                    description=result.description,
                    blocking=True,
                )
            )
    return _upstream_first(events, pipeline)


def _upstream_first(events: Sequence[AssetEvent], pipeline: DvcPipeline) -> list[AssetEvent]:
    order: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in order:
            order[name] = 1 + max((depth(u) for u in pipeline.upstream(name)), default=-1)
        return order[name]

    rank = {s.asset_key: (depth(s.name), i) for i, s in enumerate(pipeline.stages)}
    return sorted(events, key=lambda e: rank[e.asset_key.to_user_string()])


def sync_instance(instance: dg.DagsterInstance, project_dir: str | Path, dvc_bin: str) -> list[AssetEvent]:
    """Run ``dvc status`` and report every new ``dvc.lock`` state to ``instance``; returns the events."""
    pipeline = load_pipeline(project_dir)
    status = dvc_status(project_dir, dvc_bin, env=stage_env())
    events = dvc_state_events(instance, pipeline, project_dir, status)
    for event in events:
        instance.report_runless_asset_event(event)
    return events


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.sync",
        description="Report the state DVC recorded (dvc.lock, metrics, GX results) to the Dagster instance "
        "at $DAGSTER_HOME as runless materialisations and check results, without rerunning anything. "
        "`dg dev` does the same through the dvc_lock_sync sensor; use this when no daemon runs.",
    )
    parser.add_argument("--project-dir", default=None, help="DVC project root (default: $EXPCTR_PROJECT_DIR, "
                        "else the cwd if it holds dvc.yaml, else this repository)")
    parser.add_argument("--dvc-bin", default=None, help="dvc executable (default: dvc beside this Python)")
    args = parser.parse_args(argv)
    root = Path(args.project_dir).resolve() if args.project_dir else resolve_project_dir()
    with dg.DagsterInstance.get() as instance:
        events = sync_instance(instance, root, args.dvc_bin or default_dvc_bin())
    mats = [e for e in events if isinstance(e, dg.AssetMaterialization)]
    for e in events:
        kind = "materialization" if isinstance(e, dg.AssetMaterialization) else f"check {e.check_name}"
        extra = "" if isinstance(e, dg.AssetMaterialization) else (" passed" if e.passed else " FAILED")
        print(f"{e.asset_key.to_user_string()}: {kind}{extra}")
    print(f"reported {len(mats)} asset(s) from {root / 'dvc.lock'}" if mats else "Dagster already has the state "
          f"dvc.lock records ({root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
