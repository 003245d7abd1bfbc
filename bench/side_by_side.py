"""One process of all threads against processes side by side (`expctr.llm.side_by_side`) for a round's reads.

The pipeline's explanations and verdict readings run in `llm.side_by_side` processes of `threads //
side_by_side` threads each. This bench runs the same work both ways with a round's explainer, alternated (one
process, side by side, side by side, one process, after a warm-up of each): the round's test explanations
(prefill, opening, greedy decoding) and ExpCTR-Aug's verdict readings of valid-period pairs (prefill only). It
records the seconds of each run and how many texts and verdict logits differ between the two ways (each part
runs with fewer threads: bfloat16 rounds differently).

    .venv/bin/python bench/side_by_side.py --project <run> --test-pairs 192 --valid-pairs 400 \
        --out bench/results/side_by_side.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_common import recorded_command, round_explainer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with a finished pipeline run")
    ap.add_argument("--round", type=int, default=3, help="whose adapter explains (default: 3)")
    ap.add_argument("--test-pairs", type=int, default=192, help="test pairs explained per run")
    ap.add_argument("--valid-pairs", type=int, default=400, help="valid-period pairs read per run")
    ap.add_argument("--processes", type=int, default=2, help="processes side by side (default: 2)")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    import polars as pl
    import torch

    from expctr.explainer.explain import explain_side_by_side
    from expctr.explainer.rounds import ADAPTER
    from expctr.io import write_json
    from expctr.llm.side_by_side import ModelLoader, SideBySide

    params, paths, llm, explainer, tokenizer = round_explainer(args.project, args.round)
    load = ModelLoader(paths.base_llm, paths.round_dir(args.round) / ADAPTER, llm)
    work = {"test": (pl.read_parquet(paths.llm_pairs / "test.parquet").head(args.test_pairs), True),
            "valid": (pl.read_parquet(paths.llm_pairs / "valid.parquet").head(args.valid_pairs), False)}
    one = SideBySide(1, threads=llm.threads)
    runs: dict[str, dict[str, list[float]]] = {}
    frames: dict[str, dict[str, pl.DataFrame]] = {}
    with SideBySide(args.processes, threads=max(1, llm.threads // args.processes)) as side:
        for name, (pairs, write) in work.items():  # warm-up: both ways, and the workers load the explainer
            for pool in (one, side):
                explain_side_by_side(pool, explainer, tokenizer, load, pairs.head(16), params, "warm-up", write=write)
        for way in ("one", "side", "side", "one"):
            pool = one if way == "one" else side
            for name, (pairs, write) in work.items():
                torch.set_num_threads(llm.threads)
                t0 = time.perf_counter()
                frame = explain_side_by_side(pool, explainer, tokenizer, load, pairs, params, f"{way} {name}",
                                             write=write)
                runs.setdefault(name, {}).setdefault(way, []).append(round(time.perf_counter() - t0, 2))
                frames.setdefault(name, {}).setdefault(way, frame)
                print(way, name, runs[name][way][-1], flush=True)
    result = {
        "command": recorded_command("side_by_side.py", list(argv if argv is not None else sys.argv[1:])),
        "round": args.round, "threads": llm.threads, "processes": args.processes,
        "order": "one process, side by side, side by side, one process, after a warm-up of each",
        "pairs": {name: pairs.height for name, (pairs, _) in work.items()},
        "runs": runs,
        "mean_seconds": {name: {way: round(sum(v) / len(v), 2) for way, v in r.items()} for name, r in runs.items()},
        "texts_differing": sum(a != b for a, b in zip(frames["test"]["one"]["explanation"],
                                                      frames["test"]["side"]["explanation"])),
        "verdict_logits_differing": {name: int((f["one"]["verdict_logit"] != f["side"]["verdict_logit"]).sum())
                                     for name, f in frames.items()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    print(json.dumps(result["mean_seconds"], indent=2))
    return result


if __name__ == "__main__":
    main()
