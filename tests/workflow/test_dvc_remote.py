"""Artifacts shared through a DVC remote, the way a second team member gets them: `dvc push` to a remote,
then a fresh `git clone`, `dvc pull`, `dvc status` clean, `dvc repro` with nothing to do, and packaging and
serving from the pulled artifacts without retraining.

The origin repo records the tiny LLM run of the session fixture (`tiny_rounds_project`: the real stage
commands on a real ML-1M slice, two rounds) with `dvc commit`, DVC's command for outputs produced outside
`dvc repro`, instead of training it a second time; `tests/test_two_front_doors.py` covers `dvc repro`
itself. The remote is a local directory; an S3-compatible one differs only in `dvc remote add` (README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT, VENV_BIN, copy_project_tree

pytestmark = pytest.mark.slow

DVC = str(VENV_BIN / "dvc")

# Loads a copy's bento/service.py and asks /predict for five catalogue items of its first user; prints the
# answer as one line after SERVED.
SERVE_PULLED = """
import importlib.util, json, os, sys
from pathlib import Path
import bentoml, polars as pl
from starlette.testclient import TestClient
spec = importlib.util.spec_from_file_location("expctr_bento_service_pulled", sys.argv[1])
service = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = service  # pydantic resolves the service's annotations through its module
spec.loader.exec_module(service)
bundle = Path(bentoml.models.get(os.environ["EXPCTR_MODEL_TAG"]).path)
user = pl.read_parquet(bundle / "users.parquet")["user_id"][0]
items = pl.read_parquet(bundle / "catalogue.parquet")["item_id"].to_list()[:5]
with TestClient(service.ExpCTR.to_asgi(), raise_server_exceptions=False) as http:
    r = http.post("/predict", json={"user_id": user, "candidates": items})
print("SERVED", json.dumps({"status": r.status_code, "asked": items, "body": r.json()}))
"""


def run_stages(root: Path) -> list[str]:
    """The stages of dvc.yaml the tiny run produced, in dvc.yaml's order: those whose outputs and metrics all
    exist (it stops at `rounds` rounds and before the report; `bento` has no outputs)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    produced = [name for name, body in stages.items()
                if body.get("outs") and all((root / _path(out)).exists()
                                            for out in body["outs"] + body.get("metrics", []))]
    assert "explainer_round_1" in produced, produced
    return produced


def _path(out: str | dict) -> str:
    return out if isinstance(out, str) else next(iter(out))


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    ident = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
             for what, value in (("NAME", "expctr-tests"), ("EMAIL", "tests@expctr.invalid"))}
    return {**os.environ, **ident, "DVC_NO_ANALYTICS": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def origin(tiny_rounds_project: Path, tiny_real_project: Path, tmp_path_factory, env) -> tuple[Path, Path]:
    """A git + DVC repo holding the tiny run, pushed to a local-directory remote."""
    root = tmp_path_factory.mktemp("dvc_origin")
    remote = tmp_path_factory.mktemp("dvc_remote")
    copy_project_tree(root)
    for sub in ("bento", "orchestration", "requirements", "docker"):  # what `expctr bento` packages
        shutil.copytree(REPO_ROOT / sub, root / sub, ignore=shutil.ignore_patterns("__pycache__", "build"))
    shutil.copy(REPO_ROOT / "README.md", root / "README.md")
    shutil.copy(tiny_rounds_project / "params.yaml", root / "params.yaml")
    for sub in ("data", "models", "metrics"):
        shutil.copytree(tiny_rounds_project / sub, root / sub)
    for f in (tiny_real_project / "metrics").iterdir():  # raw_data / features ran in the tiny slice's project
        if not (root / "metrics" / f.name).exists():
            shutil.copy(f, root / "metrics" / f.name)
    sh(["git", "init", "-q"], root, env)
    sh([DVC, "init", "-q"], root, env)
    # links instead of copies between the cache and the workspace (DVC's setting for large artifacts; a clone
    # inherits it from .dvc/config): the base LLM is 0.5 GB
    sh([DVC, "config", "cache.type", "hardlink,copy"], root, env)
    sh([DVC, "commit", "-f", "-q", *run_stages(root)], root, env)
    sh([DVC, "remote", "add", "-d", "shared", str(remote)], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny run"], root, env)
    out = sh([DVC, "push"], root, env)
    assert "pushed" in out, out
    return root, remote


def test_push_clone_pull_then_nothing_to_reproduce(origin, tmp_path, env):
    root, remote = origin
    stages, last = run_stages(root), run_stages(root)[-1]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    assert not any(str(root) in json.dumps(entry) for entry in lock["stages"].values()), "dvc.lock holds abs paths"
    assert any(remote.rglob("*")), "nothing reached the remote"

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    outs = [o["path"] for entry in lock["stages"].values() for o in entry.get("outs", [])
            if o["path"].startswith(("data/", "models/"))]  # the DVC-cached outputs (metrics live in git)
    assert outs and not any((clone / out).exists() for out in outs), "artifacts must come from DVC, not git"
    sh([DVC, "pull", *stages], clone, env)  # the stages the tiny run has (a full run: plain `dvc pull`)
    assert (clone / "models" / "rounds" / last.replace("explainer_round_", "round_")).is_dir()
    assert json.loads(sh([DVC, "status", "--json", *stages], clone, env).strip().splitlines()[-1]) == {}
    out = sh([DVC, "repro", last], clone, env)
    assert "Running stage" not in out and "Data and pipelines are up to date." in out, out
    # the pulled files are the pushed ones (dvc status compares hashes; this names a concrete file too)
    pushed, pulled = (r / "models" / "ctr" / "feature_map.json" for r in (root, clone))
    assert pulled.read_bytes() == pushed.read_bytes()

    # packaging: the `bento` stage's command on the pulled artifacts (registering the pair; building the Bento
    # from it is tests/serving/test_bento_serve.py's and the container test's part), no stage rerun
    before = {p: p.stat().st_mtime_ns for p in (clone / "models").rglob("*") if p.is_file()}
    sh([str(VENV_BIN / "expctr"), "bento", "--no-build", "--root", str(clone)], clone, env)
    record = json.loads((clone / "metrics" / "bento.json").read_text())
    out_dir = f"models/rounds/{last.replace('explainer_round_', 'round_')}"
    assert record["dvc_lock"][f"{last}:{out_dir}"] == next(
        o["md5"] for o in lock["stages"][last]["outs"] if o["path"] == out_dir)
    assert {p: p.stat().st_mtime_ns for p in (clone / "models").rglob("*") if p.is_file()} == before
    assert json.loads(sh([DVC, "status", "--json", *stages], clone, env).strip().splitlines()[-1]) == {}

    # serving from the packaged pull: the real service over ASGI, bound to the model just registered, in its own
    # interpreter (a second BentoML app in this one would re-register BentoML's Prometheus metrics)
    out = sh([sys.executable, "-c", SERVE_PULLED, str(clone / "bento" / "service.py")], clone,
             {**env, "EXPCTR_MODEL_TAG": record["model_tag"], "EXPCTR_LOAD_EXPLAINER": "0"})  # ID scoring suffices
    served = json.loads(next(line for line in out.splitlines() if line.startswith("SERVED "))[len("SERVED "):])
    assert served["status"] == 200, served
    assert sorted(it["item_id"] for it in served["body"]["items"]) == sorted(served["asked"])
    assert served["body"]["versions"]["model"] == record["versions"]["model"]
