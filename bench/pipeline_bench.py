"""Benchmark: the default pipeline from a fresh clone, stage by stage - wall seconds and peak RSS of each.

What a new user's `dvc repro` costs. The script clones the project at its committed HEAD into a scratch
directory, points the clone at this checkout's virtual environments (`scripts/setup.sh` is timed on its own by
CI, not here) and at its download cache (the embedded data and model wheels: their download is not the
pipeline's work), then runs every stage of dvc.yaml in the graph's order with `dvc repro --single-item`, one at
a time, timing each and reading its largest process's peak RSS (`os.wait4`) and, sampled each second, the
summed proportional set size of its whole process tree (a stage may run processes side by side). The sum is what `dvc repro` takes:
DVC runs one stage at a time in one workspace. Run it with nothing else on the machine.

Usage:  .venv/bin/python bench/pipeline_bench.py [--tmp DIR] [--keep] [--stages raw_data features ...]
Results: bench/results/pipeline.json (total, per stage, the machine's CPU and the commit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import recorded_command

ROOT = Path(__file__).resolve().parents[1]


def stage_order(project: Path) -> list[str]:
    """The stages of dvc.yaml in an order DVC may run them: a stage after every stage whose outputs (outs,
    metrics, plots) it depends on, file order otherwise."""
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]

    def paths(entries) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    outs = {name: paths(st.get("outs")) + paths(st.get("metrics")) + paths(st.get("plots"))
            for name, st in stages.items()}

    def produced_by(dep: str) -> set[str]:
        return {n for n, ps in outs.items() for o in ps if dep == o or dep.startswith(o.rstrip("/") + "/")}

    needs = {n: set().union(*[produced_by(d) for d in paths(st.get("deps"))]) - {n} for n, st in stages.items()}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s for s in stages if s not in order and needs[s] <= set(order)]
        if not ready:
            raise RuntimeError(f"dvc.yaml has a cycle among {set(stages) - set(order)}")
        order.append(ready[0])
    return order


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of a process and all its descendants (shared pages split between them): the
    memory a stage holds when it runs several processes side by side, which a single process's RSS misses."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class TreeMemory(threading.Thread):
    """Samples `tree_pss_bytes` of a running stage every `interval` seconds, keeping the peak."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, tree_pss_bytes(self.pid))


def run_stage(project: Path, stage: str, log) -> dict:
    env = {**os.environ, "PATH": f"{project / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(project / ".venv" / "bin" / "dvc"), "repro", "--single-item", stage], cwd=project,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stage {stage} failed (exit {os.waitstatus_to_exitcode(status)}); see the log")
    return {"stage": stage, "seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "peak_tree_pss_gib": round(sampler.peak / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tmp", type=Path, help="scratch directory for the clone (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (with its outputs) afterwards")
    ap.add_argument("--stages", nargs="+", help="only these stages (in graph order; their inputs must exist)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = ap.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="expctr-pipeline-", dir=args.tmp))
    project = scratch / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, check=True, capture_output=True,
                            text=True).stdout.strip()
    for venv in (".venv", ".venv-dvc"):
        (project / venv).symlink_to(ROOT / venv)
    (project / ".cache").mkdir()
    if (ROOT / ".cache" / "expctr").exists():
        (project / ".cache" / "expctr").symlink_to(ROOT / ".cache" / "expctr")
    order = stage_order(project)
    if args.stages:
        order = [s for s in order if s in args.stages]
    rows, started = [], time.perf_counter()
    log_path = scratch / "pipeline.log"
    with open(log_path, "w") as log:
        for stage in order:
            print(f"{stage} ...", flush=True)
            rows.append(run_stage(project, stage, log))
            print(f"  {rows[-1]['seconds']} s, peak RSS {rows[-1]['peak_rss_gib']} GiB, tree PSS "
                  f"{rows[-1]['peak_tree_pss_gib']} GiB", flush=True)
    total = time.perf_counter() - started
    result = {
        "command": recorded_command("pipeline_bench.py", list(argv if argv is not None else sys.argv[1:])),
        "commit": commit, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "complete": not args.stages,  # False: only the listed stages ran, the total is theirs alone
        "total_seconds": round(total, 1), "total_minutes": round(total / 60, 1),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
        "peak_tree_pss_gib": max(r["peak_tree_pss_gib"] for r in rows), "stages": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
    if args.keep:
        print(f"clone kept at {project} (log {log_path})")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
