"""Helpers for the Dagster <-> DVC bridge tests: a throw-away git+DVC repo with tiny stages.

A plain module with a unique name (not conftest.py), so it never shadows tests/conftest.py for other
test packages that `from conftest import ...`.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project venv: dagster, and dvc linked from DVC's own venv
DVC = BIN / "dvc"
DG = BIN / "dg"  # dagster-dg-cli: `dg launch`, `dg dev`

# Stage 1 writes a data file, a metrics JSON and a GX-format result (success taken from params.yaml).
MAKE_PY = """
import json, pathlib, sys, yaml
p = yaml.safe_load(open("params.yaml"))
pathlib.Path("data").mkdir(exist_ok=True)
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("data/a.txt").write_text("\\n".join(str(i) for i in range(p["n"])) + "\\n")
print("make: wrote", p["n"], "rows", flush=True)
json.dump({"rows": p["n"], "mean": (p["n"] - 1) / 2, "python": sys.executable,
           "nested": {"auc": 0.75, "ok": True, "curve": [1, 2, 3]}}, open("metrics/a.json", "w"))
ok = not p["fail_check"]
json.dump({"success": ok, "suites": [{"table": "interactions", "success": ok, "evaluated": 2,
           "failed": 0 if ok else 1, "results": [
    {"expectation": "expect_column_values_to_not_be_null", "column": "user_id", "kwargs": {},
     "success": True, "unexpected_count": 0, "unexpected_percent": 0.0, "examples": []},
    {"expectation": "expect_column_values_to_be_between", "column": "rating",
     "kwargs": {"min_value": 1, "max_value": 5}, "success": ok, "unexpected_count": 0 if ok else 3,
     "unexpected_percent": 0.0 if ok else 30.0, "examples": [] if ok else [7.0, 9.5, -1.0]}]}]},
    open("metrics/gx_a.json", "w"))
"""

# Stage 2 reads stage 1's output.
TRAIN_PY = """
import json, pathlib
rows = pathlib.Path("data/a.txt").read_text().split()
pathlib.Path("data/b.txt").write_text(str(sum(int(r) for r in rows)) + "\\n")
json.dump({"total": sum(int(r) for r in rows), "model": {"auc": 0.81, "logloss": 0.43}},
          open("metrics/b.json", "w"))
print("train: done", flush=True)
"""

DVC_YAML = """
stages:
  make_data:
    desc: Write the tiny data file and its GX result.
    cmd: python scripts/make.py
    deps:
      - scripts/make.py
    params:
      - n
      - fail_check
    outs:
      - data/a.txt
    metrics:
      - metrics/a.json:
          cache: false
      - metrics/gx_a.json:
          cache: false
    meta:
      dagster:
        asset: first_asset
        checks: [metrics/gx_a.json]
  train:
    desc: Sum the rows of the data file.
    cmd: python scripts/train.py
    deps:
      - data/a.txt
      - scripts/train.py
    outs:
      - data/b.txt
    metrics:
      - metrics/b.json
    meta:
      dagster:
        asset: second_asset
        headline: [b.model.auc, b.total]
"""


def run(cmd, cwd, env=None, timeout=120, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def init_git_dvc(path: Path) -> None:
    run(["git", "init", "-q"], path)
    run([DVC, "init", "-q"], path, env=subprocess_env(DVC_NO_ANALYTICS="1"))


def make_dvc_repo(path: Path, fail_check: bool = False, dvc_yaml: str = DVC_YAML) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "scripts").mkdir(exist_ok=True)
    (path / "scripts" / "make.py").write_text(MAKE_PY)
    (path / "scripts" / "train.py").write_text(TRAIN_PY)
    (path / "params.yaml").write_text(f"n: 10\nfail_check: {str(fail_check).lower()}\n")
    (path / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    init_git_dvc(path)
    return path


def make_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with telemetry off."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
