"""In-process comparison of how the served explainer is opened and in which dtype it runs (no server).

Usage:  .venv/bin/python bench/opening_bench.py [--users 8] [--model expctr_pair:latest]
Needs a packaged pair (`dvc repro bento`). For each setting of (`serving.reason_opening`,
`serving.explainer_dtype`) it loads the pair fresh and sends the same seeded requests through
`ModelPair.predict` (--users random known users x 10 random catalogue items outside their history,
`explain: true`, one at a time, uncached), and reports p50/mean request seconds, the seconds the generator
spent in prefill and in decoding, and the rates of the server's own flags (grounded, faithful, complete,
regenerated). A micro-benchmark of the explainer's forward
pass per dtype (a 10 x 180-token prefill and one decoding step at batch 10) comes first.

Run it alone (one heavy process at a time). Results: bench/results/opening.json (written atomically).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("verdict", "float32"), ("verdict", "bfloat16"), ("anchored", "float32"), ("anchored", "bfloat16")]


def forward_micro(bundle: Path, dtype: str, threads: int) -> dict:
    """Seconds of a 10 x 180-token prefill and ms of one decoding step at batch 10 (best of 2)."""
    from transformers import DynamicCache

    from expctr.config import LLMParams
    from expctr.llm.adapters import load_explainer

    model, _ = load_explainer(bundle / "llm" / "base", bundle / "llm" / "adapter",
                              LLMParams(dtype=dtype, threads=threads))
    gen = torch.Generator().manual_seed(0)
    best = (float("inf"), float("inf"))
    with torch.inference_mode():
        for _ in range(2):
            cache = DynamicCache()
            t = time.perf_counter()
            model(input_ids=torch.randint(100, 20000, (10, 180), generator=gen), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(20):
                model(input_ids=torch.randint(100, 20000, (10, 1), generator=gen), past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
            best = min(best, (prefill, (time.perf_counter() - t) / 20))
    return {"prefill_10x180_s": round(best[0], 3), "decode_step_batch10_ms": round(1000 * best[1], 1)}


def requests(bundle: Path, n_users: int, seed: int) -> list[tuple[str, list[str]]]:
    users = list(pl.read_parquet(bundle / "users.parquet").iter_rows(named=True))
    catalogue = pl.read_parquet(bundle / "catalogue.parquet")["item_id"].to_list()
    rng = random.Random(seed)
    rng.shuffle(users)
    out = []
    for user in users[:n_users]:
        seen = set(user["hist_item_id"])
        out.append((user["user_id"], rng.sample([c for c in catalogue if c not in seen], 10)))
    return out


def run_setting(bundle: Path, opening: str, dtype: str, reqs, threads: int) -> dict:
    from expctr.config import ServingParams
    from expctr.llm.prefix_generation import forward_seconds
    from expctr.serving.bundle import read_manifest
    from expctr.serving.predictor import ModelPair
    from expctr.serving.schemas import PredictRequest

    limits = ServingParams.model_validate({**read_manifest(bundle).get("serving", {}), "reason_opening": opening,
                                           "explainer_dtype": dtype, "threads": threads})
    pair = ModelPair(bundle, limits=limits)
    pair.load_explainer()
    seconds, items = [], []
    with forward_seconds() as timer:
        for user_id, candidates in reqs:
            t = time.perf_counter()
            resp = pair.predict(PredictRequest(user_id=user_id, candidates=candidates, explain=True))
            seconds.append(time.perf_counter() - t)
            items += resp.items
    rate = {flag: round(sum(bool(getattr(it, flag)) for it in items) / len(items), 4)
            for flag in ("grounded", "faithful", "complete", "regenerated")}
    return {"reason_opening": opening, "explainer_dtype": dtype, "requests": len(seconds),
            "explanations": len(items), "p50_s": round(statistics.median(seconds), 2),
            "mean_s": round(statistics.mean(seconds), 2), **rate,
            "generation_s": {k: round(v, 2) for k, v in timer.items()}, "total_s": round(sum(seconds), 2),
            "examples": [it.explanation for it in items[:3]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="expctr_pair:latest", help="BentoML model tag of the packaged pair")
    ap.add_argument("--users", type=int, default=8, help="known users, 10 candidates each (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "opening.json")
    args = ap.parse_args(argv)

    import bentoml

    from expctr.io import write_json
    from expctr.llm.base_model import set_threads
    from expctr.serving.predictor import cpu_has_native_bf16

    set_threads(args.threads)
    bundle = Path(bentoml.models.get(args.model).path)
    reqs = requests(bundle, args.users, args.seed)
    result = {"model": args.model, "cpu_threads": args.threads, "native_bf16": cpu_has_native_bf16(),
              "users": args.users, "candidates": 10, "seed": args.seed,
              "forward": {d: forward_micro(bundle, d, args.threads) for d in ("float32", "bfloat16")},
              "settings": []}
    for opening, dtype in SETTINGS:
        result["settings"].append(run_setting(bundle, opening, dtype, reqs, args.threads))
        print(result["settings"][-1], file=sys.stderr)
    write_json(args.out, result)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
