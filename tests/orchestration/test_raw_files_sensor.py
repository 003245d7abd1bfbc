"""The opt-in `raw_files_changed` sensor against a project whose raw_data stage really ran on `.dat` files."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from bridge_support import REPO_ROOT

from orchestration.definitions import build_definitions
from orchestration.resources import DvcProject
from orchestration.sensors import RAW_FILES_SENSOR


@pytest.fixture
def project(built_dat_project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built_dat_project, root)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


def _tick(root: Path):
    sensor = build_definitions(root).resolve_sensor_def(RAW_FILES_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED  # a team switches it on
    ctx = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources={"dvc": DvcProject(project_dir=str(root))}
    )
    return sensor(ctx)


def test_skips_while_the_raw_files_are_those_raw_data_read(project):
    result = _tick(project)
    assert isinstance(result, dg.SkipReason) and "raw file(s) are those raw_data last read" in result.skip_message


def test_changed_raw_file_requests_raw_data_forced_and_everything_downstream(project):
    ratings = project / "source" / "ratings.dat"
    ratings.write_text(ratings.read_text() + "1::2::5::978400000\n")  # a new rating arrives
    request = _tick(project)
    assert isinstance(request, dg.RunRequest)
    selected = {k.to_user_string() for k in request.asset_selection}
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    every = {((b.get("meta") or {}).get("dagster") or {}).get("asset", n) for n, b in stages.items()}
    assert selected == every - {"base_llm"}  # the LLM conversion does not read the data
    assert request.run_config == {"ops": {"raw_data": {"config": {"force": True}}}}
    assert request.run_key and request.run_key == _tick(project).run_key  # one run per state of the files
    ratings.write_text(ratings.read_text() + "1::3::4::978400001\n")
    assert _tick(project).run_key != request.run_key


def test_embedded_source_is_not_watched(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "embedded"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = _tick(project)
    assert isinstance(result, dg.SkipReason) and "not 'files'" in result.skip_message
