"""Benchmark: wall time and peak memory of the features stage on ML-1M and on ML-1M replicated ~10x and ~25x.

Usage:  .venv/bin/python bench/features_bench.py [--scales 1 10 25] [--raw data/raw]
Needs `data/raw` from the raw_data stage (`dvc repro raw_data`). Each scale runs in a fresh subprocess, so the
peak RSS is that run's own. Replication copies every user (and their interactions) with a new id suffix, so
histories, splits and vocabularies grow like a real larger dataset. Results: bench/results/features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def replicate(raw: Path, dest: Path, times: int) -> int:
    """Write raw tables with every user copied `times` times; returns the number of interactions."""
    dest.mkdir(parents=True)
    inter = pl.read_parquet(raw / "interactions.parquet")
    users = pl.read_parquet(raw / "users.parquet")
    suffix = lambda df, k: df.with_columns(pl.col("user_id") + f"#{k}")
    pl.concat([suffix(inter, k) for k in range(times)]).write_parquet(dest / "interactions.parquet")
    pl.concat([suffix(users, k) for k in range(times)]).write_parquet(dest / "users.parquet")
    shutil.copy(raw / "items.parquet", dest / "items.parquet")
    return inter.height * times


def run_one(root: Path) -> None:
    """Child process: run the features stage in-process and print wall time and peak RSS as JSON."""
    from expctr.config import load_params
    from expctr.paths import ProjectPaths
    from expctr.stages import features

    started = time.perf_counter()
    metrics = features.run(load_params(ROOT / "params.yaml"), ProjectPaths(root))
    print(json.dumps({
        "wall_seconds": round(time.perf_counter() - started, 2),
        "build_seconds": metrics["build_seconds"],
        "validation_seconds": metrics["validation_seconds"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 25])
    ap.add_argument("--raw", type=Path, default=ROOT / "data" / "raw")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(args.one)
    if not (args.raw / "interactions.parquet").exists():
        sys.exit(f"{args.raw}/interactions.parquet not found: run `dvc repro raw_data` first")
    rows = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix="expctr-bench-") as tmp:
            n = replicate(args.raw, Path(tmp) / "data" / "raw", scale)
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
            out = subprocess.run([sys.executable, __file__, "--one", tmp], capture_output=True, text=True,
                                 env=env, check=True)
            result = {"scale": scale, "interactions": n, **json.loads(out.stdout.strip().splitlines()[-1])}
            result["us_per_interaction"] = round(1e6 * result["wall_seconds"] / n, 3)
            print(json.dumps(result), flush=True)
            rows.append(result)
    report = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "runs": rows}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "features.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
