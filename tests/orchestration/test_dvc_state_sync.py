"""One state behind both front doors: what `dvc repro` made shows in Dagster, and Dagster's staleness
follows `dvc status` (real DVC, real Dagster instance, a tiny four-stage project)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from bridge_support import DVC, make_dvc_repo, run
from dagster._core.definitions import data_version as dagster_data_version
from dagster._utils.test.data_versions import get_stale_status_resolver

from orchestration import sync
from orchestration.definitions import JOB_NAME, build_definitions
from orchestration.dvc_state import LOCK_MARK, dvc_status, parse_status
from orchestration.resources import DvcProject
from orchestration.sensors import SYNC_SENSOR

# make_data -> train -> report, and an independent side stage; train and side have their own params.
DVC_YAML = """
stages:
  make_data:
    cmd: python scripts/make.py
    deps: [scripts/make.py]
    params: [n, fail_check]
    outs: [data/a.txt]
    metrics:
      - metrics/a.json: {cache: false}
      - metrics/gx_a.json: {cache: false}
    meta: {dagster: {asset: first_asset, checks: [metrics/gx_a.json]}}
  train:
    cmd: python scripts/train.py
    deps: [data/a.txt, scripts/train.py]
    params: [train.lr]
    outs: [data/b.txt]
    metrics: [metrics/b.json]
  report:
    cmd: python scripts/report.py
    deps: [data/b.txt, scripts/report.py]
    metrics: [metrics/report.json]
  side:
    cmd: python scripts/side.py
    deps: [scripts/side.py]
    params: [side.m]
    outs: [data/side.txt]
"""
REPORT_PY = """
import json, pathlib
json.dump({"total_doubled": 2 * int(pathlib.Path("data/b.txt").read_text())}, open("metrics/report.json", "w"))
"""
SIDE_PY = """
import pathlib, yaml
pathlib.Path("data/side.txt").write_text(str(yaml.safe_load(open("params.yaml"))["side"]["m"]))
"""
PARAMS = "n: 10\nfail_check: false\ntrain:\n  lr: 0.1\nside:\n  m: 3\n"
KEYS = {"make_data": "first_asset", "train": "train", "report": "report", "side": "side"}


def test_tag_names_are_dagsters():
    assert sync.DATA_VERSION_TAG == dagster_data_version.DATA_VERSION_TAG
    assert sync.CODE_VERSION_TAG == dagster_data_version.CODE_VERSION_TAG
    assert sync.INPUT_DATA_VERSION_TAG_PREFIX == dagster_data_version.INPUT_DATA_VERSION_TAG_PREFIX
    assert sync.INPUT_EVENT_POINTER_TAG_PREFIX == dagster_data_version.INPUT_EVENT_POINTER_TAG_PREFIX
    assert sync.NULL_EVENT_POINTER == dagster_data_version.NULL_EVENT_POINTER
    assert sync.DATA_VERSION_IS_USER_PROVIDED_TAG == dagster_data_version.DATA_VERSION_IS_USER_PROVIDED_TAG


def test_parse_status_of_dvc_json():
    doc = {
        "make_data": [{"changed deps": {"params.yaml": {"n": "modified"}}}],
        "train": [{"changed deps": {"data/a.txt": "modified"}}, {"changed outs": {"data/b.txt": "deleted"}},
                  "changed command"],
        "data.xml.dvc": [{"changed outs": {"data.xml": "modified"}}],
    }
    status = parse_status(doc)
    assert set(status) == {"make_data", "train"}
    assert status["make_data"].changed_deps == {"params.yaml": {"n": "modified"}}
    assert status["train"].changed_outs == {"data/b.txt": "deleted"} and status["train"].other == ("changed command",)
    with pytest.raises(Exception, match="expected an object"):
        parse_status([])


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = make_dvc_repo(tmp_path / "repo", dvc_yaml=DVC_YAML)
    (root / "scripts" / "report.py").write_text(REPORT_PY)
    (root / "scripts" / "side.py").write_text(SIDE_PY)
    (root / "params.yaml").write_text(PARAMS)
    return root


def _stale(instance: dg.DagsterInstance, root: Path) -> dict[str, str]:
    """Dagster's stale status per asset after a definitions (re)load of the project as it is now."""
    defs = build_definitions(root)
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    return {key: resolver.get_status(dg.AssetKey(key)).value for key in KEYS.values()}


def _dvc_changed(root: Path) -> set[str]:
    """Assets of the stages `dvc status` reports (the source of truth for "changed")."""
    return {KEYS[name] for name in dvc_status(root, str(DVC))}


def _stale_set(instance, root) -> set[str]:
    return {k for k, v in _stale(instance, root).items() if v == "STALE"}


def _metadata(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} not materialised"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_dvc_repro_state_shows_in_dagster_and_staleness_follows_dvc_status(repo):
    run([DVC, "repro"], repo)
    with dg.instance_for_test() as instance:
        assert set(_stale(instance, repo).values()) == {"MISSING"}  # Dagster knows nothing of DVC's run

        events = sync.sync_instance(instance, repo, str(DVC))
        mats = [e for e in events if isinstance(e, dg.AssetMaterialization)]
        assert mats[0].asset_key == dg.AssetKey("first_asset")  # upstream first
        assert {e.asset_key.to_user_string() for e in mats} == set(KEYS.values())
        assert _stale(instance, repo) == dict.fromkeys(KEYS.values(), "FRESH")
        md = _metadata(instance, "train")
        assert md["b.total"] == 45 and md["b.model.auc"] == pytest.approx(0.81)  # metrics from the files
        assert md["dvc_synced_from"] == "dvc.lock" and "data/b.txt" in md["dvc_lock_outs"]
        assert _metadata(instance, "report")["report.total_doubled"] == 90
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("first_asset"), "gx_a")]
        )
        (record,) = check.values()
        assert record.status.value == "SUCCEEDED"
        assert sync.sync_instance(instance, repo, str(DVC)) == []  # idempotent: nothing new in dvc.lock

        # A param of one stage changes: that stage (and nothing else) is stale, as `dvc status` says.
        (repo / "params.yaml").write_text(PARAMS.replace("lr: 0.1", "lr: 0.2"))
        assert _dvc_changed(repo) == {"train"}
        assert _stale_set(instance, repo) == {"train"}
        resolver = get_stale_status_resolver(instance, list(build_definitions(repo).assets))
        assert [c.reason for c in resolver.get_stale_root_causes(dg.AssetKey("train"))] == ["has a new code version"]
        with dg.instance_for_test() as fresh:  # synced only now: the lock state is shown, marked stale
            tags = {e.asset_key.to_user_string(): e.tags for e in sync.sync_instance(fresh, repo, str(DVC))
                    if isinstance(e, dg.AssetMaterialization)}
            assert tags["train"][sync.CODE_VERSION_TAG].startswith(LOCK_MARK)
            assert not tags["side"][sync.CODE_VERSION_TAG].startswith(LOCK_MARK)
            assert _stale_set(fresh, repo) == {"train"}
        (repo / "params.yaml").write_text(PARAMS.replace("m: 3", "m: 4"))
        assert _dvc_changed(repo) == _stale_set(instance, repo) == {"side"}

        # A stage's code changes.
        (repo / "params.yaml").write_text(PARAMS)
        (repo / "scripts" / "report.py").write_text(REPORT_PY + "# reworded\n")
        assert _dvc_changed(repo) == _stale_set(instance, repo) == {"report"}
        (repo / "scripts" / "report.py").write_text(REPORT_PY)
        assert _stale_set(instance, repo) == set()

        # An upstream output changes (`dvc repro make_data` alone): its consumer is stale, nothing else.
        (repo / "params.yaml").write_text(PARAMS.replace("n: 10", "n: 12"))
        run([DVC, "repro", "--single-item", "make_data"], repo)
        (mat,) = [e for e in sync.sync_instance(instance, repo, str(DVC)) if isinstance(e, dg.AssetMaterialization)]
        assert mat.asset_key == dg.AssetKey("first_asset") and _metadata(instance, "first_asset")["a.rows"] == 12
        assert _dvc_changed(repo) == _stale_set(instance, repo) == {"train"}
        resolver = get_stale_status_resolver(instance, list(build_definitions(repo).assets))
        assert [c.reason for c in resolver.get_stale_causes(dg.AssetKey("train"))] == [
            "has a new dependency data version"
        ]

        # The other front door: Dagster materialises `train`; its versions are the ones DVC's state gives.
        result = build_definitions(repo).resolve_job_def(JOB_NAME).execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("train")]
        )
        assert result.success
        assert _stale_set(instance, repo) == {"report"} == _dvc_changed(repo)
        run([DVC, "repro"], repo)  # report reruns through DVC; train is unchanged
        (mat,) = [e for e in sync.sync_instance(instance, repo, str(DVC)) if isinstance(e, dg.AssetMaterialization)]
        assert mat.asset_key == dg.AssetKey("report")
        assert _stale_set(instance, repo) == set() == _dvc_changed(repo)
        assert _metadata(instance, "report")["report.total_doubled"] == 2 * sum(range(12))


@pytest.mark.slow
def test_sync_sensor_reports_once_and_skips_unchanged_workspace(repo):
    run([DVC, "repro", "--single-item", "make_data"], repo)
    defs = build_definitions(repo)
    sensor = defs.resolve_sensor_def(SYNC_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    resources = {"dvc": DvcProject(project_dir=str(repo), dvc_bin=str(DVC))}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        result = sensor(ctx)
        assert isinstance(result, dg.SensorResult) and result.cursor
        kinds = sorted(type(e).__name__ for e in result.asset_events)
        assert kinds == ["AssetCheckEvaluation", "AssetMaterialization"]  # first_asset and its GX check
        for event in result.asset_events:  # what the daemon does with a sensor's asset events
            instance.report_runless_asset_event(event)
        again = sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor))
        assert isinstance(again, dg.SkipReason) and "unchanged" in again.skip_message

        run([DVC, "repro"], repo)  # dvc.lock changed: the next tick reports the other three stages
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor))
        assert sorted(e.asset_key.to_user_string() for e in result.asset_events) == ["report", "side", "train"]


def test_failed_gx_result_synced_as_failed_check(repo):
    """The GX file DVC left behind decides the check result Dagster shows (no DVC call needed)."""
    (repo / "params.yaml").write_text(PARAMS.replace("fail_check: false", "fail_check: true"))
    run([sys.executable, "scripts/make.py"], repo)  # the stage's own command, as `dvc repro` would run it
    lock = {"schema": "2.0", "stages": {"make_data": {"cmd": "python scripts/make.py", "outs": [
        {"path": "data/a.txt", "md5": "0" * 32}]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    with dg.instance_for_test() as instance:
        from orchestration.dvc_graph import load_pipeline

        events = sync.dvc_state_events(instance, load_pipeline(repo), repo, status={})
        (check,) = [e for e in events if isinstance(e, dg.AssetCheckEvaluation)]
        assert not check.passed and check.check_name == "gx_a"
        assert "interactions.rating expect_column_values_to_be_between" in check.description
        failed = check.metadata["failed_expectations"].value.records
        assert failed[0].data["unexpected_count"] == 3
    assert json.loads((repo / "metrics" / "gx_a.json").read_text())["success"] is False
