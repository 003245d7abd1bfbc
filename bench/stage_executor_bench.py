"""Stage executor benchmark: seconds per stage when Dagster runs it in-process vs in its own container.

Usage:  .venv/bin/python bench/stage_executor_bench.py [--max-users N] [--image TAG] [--runs 1]
For each executor (in_process, docker) and run: a fresh temporary git + DVC copy of the project (code,
dvc.yaml, orchestration/, params.yaml with data.max_users = N; default: all of ML-1M), then
`dg launch --assets raw_data,validated_features`. Per step (each asset's stage, each GX check)
it reports, from the run's Dagster event log, the seconds from the step's launch (STEP_WORKER_STARTING for a
container, STEP_START in-process) to its success, the part spent before the step's code started (container
start + loading the definitions), and the whole run's wall time. Without --image the stage image is built
first (docker/build_stage_image.sh, cached). Needs a Docker daemon (`bash scripts/ci/system_deps.sh`).
Results: bench/results/stage_executor.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_common import recorded_command

from expctr.io import write_json

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
CACHE = ROOT / ".cache" / "expctr"
ASSETS = "raw_data,validated_features"
GIT = ["git", "-c", "user.name=expctr-bench", "-c", "user.email=bench@expctr.invalid"]


def sh(cmd: list, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def make_project(root: Path, max_users: int | None) -> None:
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, root / name)
    for name in ("src", "orchestration"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(max_users=max_users, cache_dir=str(CACHE))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/.dagster_home/\n")
    (root / ".dagster_home").mkdir()
    (root / ".dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    sh(GIT + ["init", "-q"], root)
    sh([BIN / "dvc", "init", "-q"], root)
    sh(GIT + ["add", "-A"], root)
    sh(GIT + ["commit", "-qm", "bench project"], root)


def step_times(home: Path) -> dict[str, dict[str, float]]:
    """Per step of the instance's one run: launch -> success seconds and the start-up part of it."""
    from dagster import DagsterEventType, DagsterInstance

    os.environ["DAGSTER_HOME"] = str(home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        marks: dict[str, dict[str, float]] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            kind = {DagsterEventType.STEP_WORKER_STARTING: "launch", DagsterEventType.STEP_START: "start",
                    DagsterEventType.STEP_SUCCESS: "success"}.get(event.event_type)
            if kind:
                marks.setdefault(event.step_key, {}).setdefault(kind, entry.timestamp)
    out = {}
    for step, m in marks.items():
        launch = m.get("launch", m.get("start"))
        out[step] = {"launch_to_success_s": round(m["success"] - launch, 2),
                     "startup_s": round(m["start"] - launch, 2)}
    return out


def summary(runs: list[dict]) -> dict:
    """Per executor: median run wall time, and per step the median launch->success and start-up seconds."""
    out: dict = {}
    for executor in ("in_process", "docker"):
        rows = [r for r in runs if r["executor"] == executor]
        if not rows:
            continue
        steps = sorted({s for r in rows for s in r["steps"]})
        out[executor] = {
            "wall_s_median": round(statistics.median(r["wall_s"] for r in rows), 2),
            "steps": {s: {k: round(statistics.median(r["steps"][s][k] for r in rows if s in r["steps"]), 2)
                          for k in ("launch_to_success_s", "startup_s")} for s in steps},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--max-users", type=int, default=None, help="users of ML-1M kept (default: all 6,040)")
    ap.add_argument("--image", help="stage image tag (default: build it with docker/build_stage_image.sh)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stage_executor.json")
    args = ap.parse_args()

    image = args.image or sh(["bash", ROOT / "docker" / "build_stage_image.sh"], ROOT).strip().splitlines()[-1]
    results: dict = {"command": recorded_command("stage_executor_bench.py", sys.argv[1:]),
                     "cpu_count": os.cpu_count(), "max_users": args.max_users, "image": image, "runs": []}
    for run in range(args.runs):
        for executor in ("in_process", "docker"):
            with tempfile.TemporaryDirectory(prefix="expctr-exec-bench-") as tmp:
                root = Path(tmp)
                make_project(root, args.max_users)
                env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
                       "EXPCTR_PROJECT_DIR": str(root), "DAGSTER_HOME": str(root / ".dagster_home"),
                       "EXPCTR_DAGSTER_EXECUTOR": executor, "EXPCTR_STAGE_IMAGE": image,
                       "EXPCTR_DOCKER_MOUNTS": str(CACHE)}
                started = time.perf_counter()
                out = sh([BIN / "dg", "launch", "--assets", ASSETS, "-m", "orchestration.definitions"],
                         root, env)
                wall = time.perf_counter() - started
                if "RUN_SUCCESS" not in out:
                    raise SystemExit(out[-3000:])
                row = {"run": run, "executor": executor, "wall_s": round(wall, 2), "steps": step_times(root / ".dagster_home")}
                if executor == "docker":  # the executor leaves its step containers: remove this run's
                    ids = sh(["docker", "ps", "-a", "-q", "--filter", f"label=expctr.stage.project={root}"], root).split()
                    if ids:
                        sh(["docker", "rm", "-f", *ids], root)
                print(row, flush=True)
                results["runs"].append(row)
    results["summary"] = summary(results["runs"])
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
