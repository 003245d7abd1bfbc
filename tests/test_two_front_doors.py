"""The real pipeline through both front doors on a tiny real slice, in a temporary git + DVC repo.

Dagster materialises `raw_data` (running the real stage through DVC), `dvc repro ctr_model` then runs the
rest of the data/CTR graph, a second one has nothing to do, and `dvc exp run -S` changes one parameter (this catches the
antlr4 clash between DVC and Dagster if the two ever share an environment again).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT, TINY_SLICE, VENV_BIN, make_params

GIT = ["git", "-c", "user.name=expctr-tests", "-c", "user.email=tests@expctr.invalid"]


def sh(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("two_doors")
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    make_params(root, **TINY_SLICE)
    (root / ".gitignore").write_text("/data/\n/models/\n")
    ident = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
             for what, value in (("NAME", "expctr-tests"), ("EMAIL", "tests@expctr.invalid"))}
    env = {**os.environ, **ident, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "EXPCTR_PROJECT_DIR": str(root), "DAGSTER_HOME": str(root / ".dagster_home")}
    (root / ".dagster_home").mkdir()
    (root / ".dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    sh(GIT + ["init", "-q"], root)
    sh([str(VENV_BIN / "dvc"), "init", "-q"], root, env)
    sh(GIT + ["add", "-A"], root)
    sh(GIT + ["commit", "-qm", "tiny project"], root)
    return root, env


def test_dagster_then_dvc_on_the_real_stages(repo):
    root, env = repo
    proc = sh([str(VENV_BIN / "dg"), "launch", "--assets", "raw_data", "-m", "orchestration.definitions"],
             root, env)
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"raw_data"}
    assert json.loads((root / "metrics" / "validation_raw.json").read_text())["success"] is True

    # the data/CTR part of the graph (the LLM stages have their own end-to-end test)
    proc = sh([str(VENV_BIN / "dvc"), "repro", "ctr_model"], root, env)
    assert "Stage 'raw_data' didn't change, skipping" in proc.stdout
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"raw_data", "features", "ctr_model"}
    metrics = json.loads((root / "metrics" / "ctr.json").read_text())
    assert set(metrics["models"]) == set(TINY_SLICE["ctr.compare"])

    proc = sh([str(VENV_BIN / "dvc"), "repro", "ctr_model"], root, env)
    assert "Data and pipelines are up to date." in proc.stdout

    proc = sh([str(VENV_BIN / "dvc"), "metrics", "show", "--json"], root, env)
    assert "primary_test_auc" in proc.stdout


def test_dvc_exp_run_with_a_set_param(repo):
    root, env = repo
    sh(GIT + ["add", "-A"], root)
    sh(GIT + ["commit", "-qm", "after repro", "--allow-empty"], root)
    sh([str(VENV_BIN / "dvc"), "exp", "run", "ctr_model", "-S", "ctr.max_epochs=1"], root, env)
    ran = json.loads((root / "metrics" / "ctr.json").read_text())["models"]["din"]["epochs_run"]
    assert ran == 1
    proc = sh([str(VENV_BIN / "dvc"), "params", "diff", "--json"], root, env)
    assert "max_epochs" in proc.stdout


def test_dagster_selection_syntax_resolves_the_derived_graph(repo):
    root, env = repo
    # Upstream-closure selection parses (antlr 4.13) and, with everything up to date, DVC skips the stages.
    proc = sh([str(VENV_BIN / "dg"), "launch", "--assets", "+validated_features", "-m", "orchestration.definitions"],
             root, env)
    out = proc.stdout + proc.stderr
    assert "RUN_SUCCESS" in out and "raw_data" in out and "validated_features" in out
