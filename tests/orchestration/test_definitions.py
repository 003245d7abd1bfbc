"""Contract tests: the real project's Dagster definitions load and show exactly DVC's stage graph."""

import re
import shutil
import subprocess
import sys

import dagster as dg
import yaml
from bridge_support import DVC, REPO_ROOT, init_git_dvc, run

from orchestration.definitions import JOB_NAME, build_definitions
from orchestration.dvc_graph import load_pipeline

HEAVY = ("torch", "transformers", "great_expectations", "dvc", "sklearn")


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _asset_key(name: str, body: dict) -> dg.AssetKey:
    return dg.AssetKey(((body.get("meta") or {}).get("dagster") or {}).get("asset", name))


def test_definitions_load_without_heavy_imports():
    code = (
        "import sys, dagster as dg, orchestration.definitions as m\n"
        "dg.Definitions.validate_loadable(m.defs)\n"
        f"print(','.join(x for x in {HEAVY!r} if x in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"loading the definitions imported {proc.stdout.strip()}"


def test_one_asset_per_stage_with_desc():
    defs = build_definitions(REPO_ROOT)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    stages = _dvc_stages()
    expected = {_asset_key(name, body): body.get("desc") for name, body in stages.items()}
    assert set(graph.get_all_asset_keys()) == set(expected)
    for key, desc in expected.items():
        node = graph.get(key)
        assert node.description == desc
        assert node.group_name == "expctr"
        assert "dvc" in node.kinds
    # the feature stage is shown under its meta.dagster.asset name
    assert dg.AssetKey("validated_features") in expected


def test_blocking_checks_for_gx_files():
    defs = build_definitions(REPO_ROOT)
    graph = defs.resolve_asset_graph()
    expected = {
        (_asset_key(name, body), path)
        for name, body in _dvc_stages().items()
        for path in ((body.get("meta") or {}).get("dagster") or {}).get("checks", [])
    }
    assert expected, "dvc.yaml declares GX check files"
    specs = [graph.get_check_spec(key) for key in graph.asset_check_keys]
    assert {(s.asset_key, s.metadata["gx_file"].value) for s in specs} == expected
    assert len(specs) == len(expected)
    assert all(s.blocking for s in specs)


def test_pipeline_job_uses_in_process_executor_and_selects_everything():
    defs = build_definitions(REPO_ROOT)
    job = defs.resolve_job_def(JOB_NAME)
    assert job.executor_def is dg.in_process_executor
    graph = defs.resolve_asset_graph()
    assert set(job.asset_layer.selected_asset_keys) == set(graph.get_all_asset_keys())
    assert set(job.asset_layer.asset_graph.asset_check_keys) == set(graph.asset_check_keys)


def _dvc_dag_edges(tmp_path) -> set[tuple[str, str]]:
    """Edges of ``dvc dag --dot`` as (upstream stage, downstream stage)."""
    if (REPO_ROOT / ".dvc").is_dir():
        cwd = REPO_ROOT
    else:  # the working tree has no DVC repo yet: the graph only depends on dvc.yaml (+ params.yaml)
        cwd = tmp_path / "dag"
        cwd.mkdir()
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(REPO_ROOT / name, cwd / name)
        init_git_dvc(cwd)
    dot = run([DVC, "dag", "--dot"], cwd).stdout
    nodes = set(re.findall(r'^"([^"]+)";$', dot, flags=re.MULTILINE))
    edges = set(re.findall(r'^"([^"]+)" -> "([^"]+)";$', dot, flags=re.MULTILINE))
    assert nodes == set(_dvc_stages()), dot
    return edges


def test_dagster_graph_equals_dvc_dag(tmp_path):
    dvc_edges = _dvc_dag_edges(tmp_path)
    # `dvc dag` draws upstream -> downstream: raw_data (no deps on other stages) only appears on the left
    assert ("raw_data", "features") in dvc_edges

    stages = _dvc_stages()
    key_of = {name: _asset_key(name, body) for name, body in stages.items()}
    expected = {(key_of[a], key_of[b]) for a, b in dvc_edges}

    graph = build_definitions(REPO_ROOT).resolve_asset_graph()
    dagster_edges = {
        (parent, key) for key in graph.get_all_asset_keys() for parent in graph.get(key).parent_keys
    }
    assert dagster_edges == expected
    assert load_pipeline(REPO_ROOT).edges() == dvc_edges
