"""End-to-end tests of the bridge: real `dg` CLI and in-process runs driving real `dvc repro`."""

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from bridge_support import BIN, DG, DVC, make_dagster_home, make_dvc_repo, run, subprocess_env

from orchestration.definitions import JOB_NAME, build_definitions
from orchestration.resources import DvcProject

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_dvc_analytics(monkeypatch):
    """No DVC usage-analytics daemon from the throw-away repos."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = make_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    return make_dvc_repo(tmp_path / "repo")


def test_antlr_413_in_venv_and_dvc_in_its_own_interpreter():
    # Dagster's selection grammar (`--select 'a*'`, `+a`) needs antlr4 runtime 4.13; dvc pins 4.9, so it
    # lives in its own venv and .venv/bin/dvc only links to it.
    assert importlib.metadata.version("antlr4-python3-runtime").startswith("4.13")
    shebang = DVC.resolve().read_text(errors="replace").splitlines()[0]
    assert shebang.startswith("#!")
    dvc_python = Path(shebang[2:].strip().split()[0])
    assert not str(dvc_python).startswith(sys.prefix + "/"), f"dvc runs from this venv: {shebang}"
    prefix = run([dvc_python, "-c", "import sys, dvc; print(sys.prefix)"], BIN).stdout.strip()
    assert Path(prefix).resolve() != Path(sys.prefix).resolve()
    assert run([DVC, "--version"], BIN).stdout.strip().startswith("3.")


def _materialize(repo: Path, home: Path, select: str) -> tuple[subprocess.CompletedProcess, float]:
    """`dg launch --assets`, the form Dagster 1.13 recommends; it must print no deprecation warning (the
    `dagster asset materialize` it supersedes prints a SupersessionWarning)."""
    env = subprocess_env(DAGSTER_HOME=str(home), EXPCTR_PROJECT_DIR=str(repo), DVC_NO_ANALYTICS="1")
    t0 = time.perf_counter()
    proc = run(
        [DG, "launch", "--assets", select, "-m", "orchestration.definitions"],
        repo,
        env=env,
        timeout=180,
        check=False,
    )
    took = time.perf_counter() - t0
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    for warning in ("SupersessionWarning", "DeprecationWarning", "deprecated"):
        assert warning not in proc.stdout + proc.stderr, f"{warning} printed:\n{proc.stderr[-4000:]}"
    return proc, took


def _lock_stages(repo: Path) -> set[str]:
    lock = repo / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def _latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} was not materialised"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_cli_materialize_runs_dvc_stages(dvc_repo, dagster_home):
    proc, took_first = _materialize(dvc_repo, dagster_home, "first_asset")
    log = proc.stdout + proc.stderr
    print(f"dg launch --assets first_asset: {took_first:.1f}s")
    assert (dvc_repo / "data" / "a.txt").exists()
    assert _lock_stages(dvc_repo) == {"make_data"}
    assert not (dvc_repo / "data" / "b.txt").exists()
    assert "make: wrote 10 rows" in log  # stage output streamed to the Dagster log
    assert "Asset check 'gx_a' on 'first_asset' passed" in log
    # `python` in the stage cmd resolved to this venv although PATH was not activated for it
    assert json.loads((dvc_repo / "metrics" / "a.json").read_text())["python"].startswith(str(BIN))

    # a graph selection (needs antlr 4.13: with 4.9 this crashes with `ord() expected string of length 1`)
    proc, took_both = _materialize(dvc_repo, dagster_home, "first_asset*")
    print(f"dg launch --assets 'first_asset*': {took_both:.1f}s")
    assert _lock_stages(dvc_repo) == {"make_data", "train"}
    assert (dvc_repo / "data" / "b.txt").read_text().strip() == "45"

    with dg.DagsterInstance.get() as instance:
        first = _latest_metadata(instance, "first_asset")
        assert first["dvc_stage_ran"] is False  # unchanged: DVC skipped it the second time
        second = _latest_metadata(instance, "second_asset")
        assert second["dvc_stage_ran"] is True
        assert second["b.total"] == 45 and second["b.model.auc"] == pytest.approx(0.81)
        table = second["headline_metrics"]
        assert table.index("b.model.auc") < table.index("b.total")  # meta.dagster.headline order
        assert "data/b.txt" in second["dvc_lock_outs"]


def test_in_process_metadata_and_failed_blocking_check(tmp_path):
    repo = make_dvc_repo(tmp_path / "repo", fail_check=True)
    defs = build_definitions(repo)
    result = defs.resolve_job_def(JOB_NAME).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success  # the blocking check failed

    (mat,) = result.asset_materializations_for_node("first_asset")
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["a.rows"] == 10 and md["a.mean"] == pytest.approx(4.5)
    assert md["a.nested.auc"] == pytest.approx(0.75)
    assert "a.nested.ok" not in md and "a.nested.curve" not in md  # bools and lists are not metrics
    assert md["dvc_cmd"] == "python scripts/make.py"
    assert "data/a.txt" in md["dvc_outs"]
    assert "| `a.rows` | 10 |" in md["headline_metrics"]
    assert mat.tags.get("dagster/data_version")

    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "gx_a" and not evaluation.passed and evaluation.blocking
    failed = evaluation.metadata["failed_expectations"].value.records
    assert [r.data["column"] for r in failed] == ["rating"]
    assert failed[0].data["expectation"] == "expect_column_values_to_be_between"
    assert failed[0].data["unexpected_count"] == 3 and "9.5" in failed[0].data["examples"]

    # blocking: the downstream stage never ran
    assert result.asset_materializations_for_node("second_asset") == []
    assert not (repo / "data" / "b.txt").exists()
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"].keys() == {"make_data"}


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg):
        self.lines.append(msg)


def test_failing_stage_raises_failure_with_output_tail(tmp_path):
    repo = make_dvc_repo(
        tmp_path / "repo",
        dvc_yaml="""
        stages:
          broken:
            cmd: python -c "import sys; print('boom-line', flush=True); sys.exit(3)"
            outs: [never.txt]
        """,
    )
    log = _Log()
    with pytest.raises(dg.Failure) as err:
        DvcProject(project_dir=str(repo), dvc_bin=str(DVC)).repro("broken", log)
    assert "boom-line" in log.lines
    assert "boom-line" in err.value.metadata["output_tail"].value
    assert err.value.metadata["exit_code"].value != 0
