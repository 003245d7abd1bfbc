"""Benchmark: CTR training time per epoch per model on the ML-1M features (train split, one epoch each).

Usage:  .venv/bin/python bench/ctr_bench.py [--models lr deepfm dcnv2 din] [--threads 2]
Needs `data/features` (`dvc repro features`). Results: bench/results/ctr.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import polars as pl
import torch

from expctr.config import load_params
from expctr.ctr.batch import CTRData
from expctr.ctr.models import build_model
from expctr.ctr.trainer import fit
from expctr.data.features import FeatureMap

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lr", "deepfm", "dcnv2", "din"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fdir = ROOT / "data" / "features"
    if not (fdir / "feature_map.json").exists():
        sys.exit(f"{fdir} not found: run `dvc repro features` first")
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    p = params.ctr.model_copy(update={"max_epochs": 1})
    fmap = FeatureMap.load(fdir / "feature_map.json")
    train = CTRData.from_frame(pl.read_parquet(fdir / "train.parquet"))
    valid = CTRData.from_frame(pl.read_parquet(fdir / "valid.parquet"))
    rows = []
    for name in args.models:
        model = build_model(name, fmap, p, seed=params.seed)
        started = time.perf_counter()
        res = fit(model, train, valid, p, params.seed, desc=name)
        row = {"model": name, "train_rows": len(train), "epoch_seconds": res.curve[0]["seconds"],
               "epoch_plus_valid_seconds": round(time.perf_counter() - started, 2),
               "rows_per_second": round(len(train) / res.curve[0]["seconds"]),
               "parameters": sum(t.numel() for t in model.parameters())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"threads": args.threads, "cpu_count": os.cpu_count(), "batch_size": p.batch_size, "runs": rows}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "ctr.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
