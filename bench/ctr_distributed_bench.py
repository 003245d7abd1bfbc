"""Benchmark: CTR training throughput and memory with 1 vs N data-parallel processes (accelerate launch, DDP).

Usage:  .venv/bin/python bench/ctr_distributed_bench.py [--processes 1 2] [--models din deepfm] [--epochs 1]
                                                        [--total-threads 2] [--device cpu] [--train-rows N]
Needs `data/features` (`dvc repro features`). Results: bench/results/ctr_distributed.json.

Each setting runs the real trainer (`expctr.ctr.trainer.fit(..., data_parallel=True)`) on the ML-1M train
split: 1 process as a plain subprocess, N > 1 under the same `accelerate launch` command the ctr_model stage
uses. The total thread budget is split evenly (2 processes x 1 thread vs 1 process x 2 threads on 2 cores),
so the comparison is processes vs threads on the same cores. Per setting and model it records epoch seconds,
training rows/s, every process's peak RSS, the bytes of the in-memory training table per process and the bytes
DDP all-reduces per optimiser step (the dense gradient of every trainable parameter).

From these it predicts one epoch at MovieLens-20M and Amazon Books sizes (the training rows are params.yaml's
training share of the interactions) on 1 machine and on N machines like this one (--machines): compute
is rows / (N * r1 * e), where r1 is the 1-process rows/s and e the measured DDP efficiency of the largest
process count here over 1 process on the same cores (at most 1), plus a ring all-reduce per step of
2 (N - 1) / N * gradient bytes at --network-gbit. An estimate for planning, labelled as such in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_common import peak_rss_gib_per_process, recorded_command, run_settings, worker_threads

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ctr_distributed.json"


def worker(args: argparse.Namespace) -> None:
    """One process of a setting (launched): train each model, rank 0 appends one JSON row per model."""
    import polars as pl

    from expctr import distributed
    from expctr.config import load_params
    from expctr.ctr.batch import CTRData
    from expctr.ctr.models import build_model
    from expctr.ctr.trainer import fit
    from expctr.data.features import FeatureMap

    world, threads = worker_threads(args.total_threads)
    params = load_params(ROOT / "params.yaml")
    p = params.ctr.model_copy(update={"max_epochs": args.epochs, "patience": args.epochs + 1, "threads": threads,
                                      "device": args.device})
    fdir = Path(args.features)
    fmap = FeatureMap.load(fdir / "feature_map.json")
    frame = pl.read_parquet(fdir / "train.parquet")
    train = CTRData.from_frame(frame.head(args.train_rows) if args.train_rows else frame)
    valid = CTRData.from_frame(pl.read_parquet(fdir / "valid.parquet"))
    del frame
    table_bytes = sum(t.numel() * t.element_size() for t in (train.fields, train.genres, train.hist_items,
                                                              train.hist_clicks, train.labels))
    for name in args.models:
        model = build_model(name, fmap, p, seed=params.seed)
        started = time.perf_counter()
        res = fit(model, train, valid, p, params.seed, desc=f"{name} x{world}", data_parallel=True)
        wall = time.perf_counter() - started
        trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
        rss = peak_rss_gib_per_process()
        if distributed.is_main_process():
            epoch_s = [row["seconds"] for row in res.curve]
            row = {"processes": world, "threads_per_process": threads, "device": args.device, "model": name,
                   "train_rows": len(train), "batch_size": p.batch_size, "epochs": len(res.curve),
                   "epoch_seconds": epoch_s, "rows_per_second": round(len(train) / (sum(epoch_s) / len(epoch_s))),
                   "wall_seconds_with_validation": round(wall, 2),
                   "peak_rss_gib_per_process": [round(r, 3) for r in rss], "peak_rss_gib_total": round(sum(rss), 3),
                   "train_table_gib_per_process": round(table_bytes / 2**30, 3), "trainable_parameters": trainable,
                   "allreduce_mib_per_step": round(4 * trainable / 2**20, 2) if world > 1 else 0.0,
                   "steps_per_epoch": -(-len(train) // p.batch_size)}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


SIZES = {"MovieLens-20M": 20_000_263, "Amazon Books 2014 (reviews)": 22_507_155,
         "Amazon Books 2018 (ratings)": 51_311_621}  # interactions in the public releases


def predict(rows: list[dict], machines: list[int], network_gbit: float, train_share: float) -> dict:
    """Epoch seconds per model at the public datasets' sizes on 1 and N machines (see the docstring)."""
    out = {}
    for model in sorted({r["model"] for r in rows}):
        by_n = {r["processes"]: r for r in rows if r["model"] == model}
        if 1 not in by_n:
            continue
        one, most = by_n[1], by_n[max(by_n)]
        measured = most["rows_per_second"] / one["rows_per_second"]  # same cores, processes vs threads
        # above 1 it is the processes-vs-threads gain on one machine, not something N machines multiply
        efficiency = min(1.0, measured)
        step_bytes = 4 * one["trainable_parameters"]
        per_size = {}
        for name, n in SIZES.items():
            train_rows = train_share * n
            steps = train_rows / one["batch_size"]
            per_size[name] = {}
            for m in machines:
                compute = train_rows / (m * one["rows_per_second"] * (efficiency if m > 1 else 1.0))
                comm = steps * 2 * (m - 1) / m * step_bytes * 8 / (network_gbit * 1e9)
                per_size[name][f"{m}_machine{'s' if m > 1 else ''}"] = round(compute + comm, 1)
        out[model] = {"ddp_efficiency_measured": round(measured, 3), "ddp_efficiency_used": round(efficiency, 3),
                      "measured_processes": max(by_n), "epoch_seconds": per_size}
    return {"estimate": True, "network_gbit": network_gbit, "models": out}


def train_share() -> float:
    """The training split's share of the interactions in params.yaml (1 - valid_frac - test_frac)."""
    from expctr.config import load_params

    f = load_params(ROOT / "params.yaml").features
    return 1.0 - f.valid_frac - f.test_frac


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["din", "deepfm"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--total-threads", type=int, default=os.cpu_count() or 1,
                    help="threads shared by the processes of one setting (split evenly)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    ap.add_argument("--train-rows", type=int, default=None, help="use only the first N training rows (smoke runs)")
    ap.add_argument("--features", default=str(ROOT / "data" / "features"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--machines", type=int, nargs="+", default=[1, 2, 4, 8],
                    help="machine counts for the epoch-time prediction")
    ap.add_argument("--network-gbit", type=float, default=10.0,
                    help="network bandwidth between machines for the all-reduce estimate")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not (Path(args.features) / "feature_map.json").exists():
        sys.exit(f"{args.features} not found: run `dvc repro features` first")
    rows_file = Path(args.out).with_suffix(".rows.jsonl")
    program = [str(Path(__file__).resolve()), "--worker", "--out", str(rows_file), "--models", *args.models,
               "--epochs", str(args.epochs), "--total-threads", str(args.total_threads), "--device", args.device,
               "--features", args.features] + (["--train-rows", str(args.train_rows)] if args.train_rows else [])
    rows = run_settings(args.processes, program, rows_file)
    out = {"cpu_count": os.cpu_count(), "total_threads": args.total_threads,
           "command": recorded_command("ctr_distributed_bench.py", sys.argv[1:]),
           "smoke_run_only": bool(args.train_rows), "runs": rows,
           "prediction": predict(rows, args.machines, args.network_gbit, train_share())}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
