"""Benchmark: one RL stage of a round (the dense verdict step + GRPO reason steps, real LC reward) with 1 vs N
data-parallel processes (accelerate launch, DDP over gloo on CPU), on the real embedded explainer and ML-1M pairs.

Usage:  .venv/bin/python bench/rl_distributed_bench.py [--processes 1 2] [--verdict-prompts 32] [--reason-steps 2]
                                                       [--total-threads 2]
Needs the pipeline's `models/base_llm` and `data/llm_pairs` (`dvc repro llm_pairs`). Results:
bench/results/rl_distributed.json.

Each setting runs `expctr.explainer.rl.run_rl_stage` as the round runs it: the LC stage's reward rebuilt from
params.yaml (`stage_rewards.build_stage_reward`: the frozen judge), a fresh LoRA adapter, the verdict step over the
first --verdict-prompts training pairs and --reason-steps GRPO steps on the next pairs (params.yaml's
prompts_per_step x num_generations completions each). 1 process runs as a plain subprocess, N > 1 under the same
`accelerate launch` command `expctr.explainer.rl_launch` uses. The total thread budget is split evenly (2 x 1
thread vs 1 x 2 threads on 2 cores): processes vs threads on the same cores. The verdict rewards here are the
click labels (0.9 / 0.1); the stage's own are the judge's, which changes the values learnt, not the work per
step. Recorded per setting: the verdict step's seconds and prompts/s, each GRPO step's seconds and
completions/s, the stage's total seconds (loading the policy and the judge included), every process's peak RSS.
Unlike the data stages, this cost does not grow with the dataset: a round trains a fixed budget of steps
(`rl.*_steps`, the verdict pairs of `llm_pairs`), so N processes shorten a round by the measured speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_common import peak_rss_gib_per_process, recorded_command, run_settings, worker_threads

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rl_distributed.json"


def worker(args: argparse.Namespace) -> None:
    """One process of a setting (launched): run the stage; process 0 appends one JSON row."""
    import polars as pl

    from expctr import distributed
    from expctr.config import load_params
    from expctr.explainer.dataset import build_prompt_dataset
    from expctr.explainer.rl import run_rl_stage
    from expctr.explainer.stage_rewards import build_stage_reward
    from expctr.llm.base_model import load_tokenizer
    from expctr.llm.verdicts import EXPLANATION_PREFIX
    from expctr.paths import ProjectPaths

    world, threads = worker_threads(args.total_threads)
    params = load_params(ROOT / "params.yaml")
    llm = params.llm.model_copy(update={"threads": threads})
    params = params.model_copy(update={"llm": llm})
    paths = ProjectPaths(ROOT)
    reward = build_stage_reward("lc", params, paths)
    tok = load_tokenizer(paths.base_llm)
    pairs = pl.read_parquet(ROOT / "data" / "llm_pairs" / "train.parquet")
    head = pairs.head(args.verdict_prompts)
    verdict = build_prompt_dataset(head, tok, llm.max_prompt_tokens, EXPLANATION_PREFIX)
    labels = head["label"].to_list()
    rewards = ([0.9 if y else 0.1 for y in labels], [0.1 if y else 0.9 for y in labels])
    reason = pairs.slice(args.verdict_prompts, params.rl.prompts_per_step * args.reason_steps)
    result = run_rl_stage(paths.base_llm, Path(args.scratch) / "adapter", reward, params.rl, llm, params.seed,
                          verdict_dataset=verdict, verdict_rewards=rewards, reason_pairs=reason,
                          reason_steps=args.reason_steps)
    rss = peak_rss_gib_per_process()
    if not distributed.is_main_process():
        return
    s = result["summary"]
    grpo = [row["seconds"] for row in result["steps"] if row.get("seconds") is not None]
    completions = params.rl.prompts_per_step * params.rl.num_generations
    row = {"processes": world, "threads_per_process": threads,
           "verdict": {"prompts": s["verdict"]["prompts"], "steps": s["verdict"]["steps"],
                       "seconds": s["verdict"]["seconds"],
                       "prompts_per_second": round(s["verdict"]["prompts"] / s["verdict"]["seconds"], 2)},
           "reason": {"steps": len(grpo), "seconds_per_step": grpo, "completions_per_step": completions,
                      "max_completion_length": params.rl.max_completion_length,
                      "completions_per_second": round(completions * len(grpo) / sum(grpo), 3)},
           "stage_seconds": s["seconds"],
           "peak_rss_gib_per_process": [round(r, 3) for r in rss], "peak_rss_gib_total": round(sum(rss), 3)}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def speedups(rows: list[dict]) -> dict:
    """Each N-process setting against 1 process: verdict-step and GRPO-step throughput ratios."""
    one = next((r for r in rows if r["processes"] == 1), None)
    if one is None:
        return {}
    return {str(r["processes"]): {
        "verdict": round(r["verdict"]["prompts_per_second"] / one["verdict"]["prompts_per_second"], 3),
        "reason": round(r["reason"]["completions_per_second"] / one["reason"]["completions_per_second"], 3),
        "stage": round(one["stage_seconds"] / r["stage_seconds"], 3)} for r in rows if r["processes"] > 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--verdict-prompts", type=int, default=32, help="training pairs in the verdict step")
    ap.add_argument("--reason-steps", type=int, default=2, help="GRPO reason steps")
    ap.add_argument("--total-threads", type=int, default=os.cpu_count() or 1,
                    help="threads shared by the processes of one setting (split evenly)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    for need in (ROOT / "models" / "base_llm", ROOT / "data" / "llm_pairs" / "train.parquet"):
        if not need.exists():
            sys.exit(f"{need.relative_to(ROOT)} not found: run `dvc repro llm_pairs` first")
    rows_file = Path(args.out).with_suffix(".rows.jsonl")
    with tempfile.TemporaryDirectory(prefix="expctr-rl-bench-") as scratch:
        program = [str(Path(__file__).resolve()), "--worker", "--out", str(rows_file), "--scratch", scratch,
                   "--verdict-prompts", str(args.verdict_prompts), "--reason-steps", str(args.reason_steps),
                   "--total-threads", str(args.total_threads)]
        rows = run_settings(args.processes, program, rows_file)
    out = {"cpu_count": os.cpu_count(), "total_threads": args.total_threads,
           "command": recorded_command("rl_distributed_bench.py", sys.argv[1:]),
           "runs": rows, "speedup_over_1_process": speedups(rows)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["speedup_over_1_process"], indent=2))
    print(f"wrote {Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
