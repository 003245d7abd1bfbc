"""Where the DVC project is: one small module, so sensors and the sync command need not load the definitions."""

from __future__ import annotations

import os
from pathlib import Path

from orchestration.dvc_graph import DVC_YAML

PROJECT_DIR_ENV = "EXPCTR_PROJECT_DIR"


def default_project_dir() -> str:
    """``$EXPCTR_PROJECT_DIR`` if set, else the current working directory."""
    return os.environ.get(PROJECT_DIR_ENV) or os.getcwd()


def resolve_project_dir() -> Path:
    """``$EXPCTR_PROJECT_DIR``, else the cwd if it has a dvc.yaml, else this package's repository root."""
    env = os.environ.get(PROJECT_DIR_ENV)
    if env:
        return Path(env).resolve()
    cwd = Path.cwd()
    if (cwd / DVC_YAML).is_file():
        return cwd.resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / DVC_YAML).is_file():
        return repo
    return cwd.resolve()  # load_pipeline then reports the missing dvc.yaml
