"""Contracts between dvc.yaml, params.yaml, the CLI and the code: a renamed key or command fails here."""

from __future__ import annotations

import shlex

import yaml
from support import REPO_ROOT
from typer.main import get_command

from expctr.cli import app
from expctr.config import load_params

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_params_yaml_validates():
    load_params(REPO_ROOT / "params.yaml")


def test_every_stage_command_is_an_expctr_subcommand():
    commands = set(get_command(app).commands)
    for name, stage in DVC["stages"].items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "expctr", name
        assert argv[1] in commands, f"stage {name}: `{stage['cmd']}` is not a CLI command"


def test_every_params_key_in_dvc_yaml_exists():
    for name, stage in DVC["stages"].items():
        for key in stage.get("params", []):
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key!r} missing from params.yaml"
                node = node[part]


def test_code_dependencies_exist():
    for name, stage in DVC["stages"].items():
        for dep in stage.get("deps", []):
            if dep.startswith("src/"):
                assert (REPO_ROOT / dep).exists(), f"stage {name}: dependency {dep} does not exist"


def test_outputs_are_ignored_by_git_and_metrics_are_not():
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    assert "/data/" in ignored and "/models/" in ignored
    assert not any(line.startswith("/metrics") for line in ignored)


def test_readme_opens_with_the_two_commands():
    lines = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.strip()]
    head = "\n".join(lines[:12])
    assert "bash scripts/setup.sh" in head and "dvc repro" in head
    assert ".venv/bin/python -m pytest" in head
    assert ".venv/bin/python -m pytest" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_library_imports_no_orchestrator_or_server():
    """src/expctr is a library: Dagster lives in orchestration/, BentoML in bento/."""
    import re

    offenders = []
    for path in (REPO_ROOT / "src" / "expctr").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(import|from)\s+(dagster|bentoml|_bentoml)", line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
