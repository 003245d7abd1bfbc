"""Where GRPO samples its completions from: the policy itself, or a merged bfloat16 copy (`rl.merged_rollouts`).

A GRPO reason step generates `prompts_per_step x num_generations` completions, then back-propagates the loss
through the policy. Sampled from the policy, every one of a completion's ~30 forward passes runs its frozen
float32 weights through bf16 autocast and its unmerged LoRA layers; `expctr.explainer.grpo` instead samples
from a plain copy with the adapter merged, in bfloat16, re-merged before each generation. This bench runs GRPO
steps of a round's adapter on the RL pool's prompts both ways, alternated (merged / policy / policy / merged
after a warm-up), with a length reward (only the time matters), and records each step's seconds (generation,
rewards, loss and update).

    .venv/bin/python bench/grpo_rollouts.py --project <run> --steps 2 --out bench/results/grpo_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from bench_common import recorded_command

ORDER = ("merged", "policy", "policy", "merged")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with a finished pipeline run")
    ap.add_argument("--round", type=int, default=2, help="whose adapter the steps continue (default: 2)")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps per run")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    import polars as pl
    import torch

    from expctr.config import load_params
    from expctr.explainer.dataset import build_prompt_dataset
    from expctr.explainer.grpo import grpo_bf16, train_policy
    from expctr.explainer.lora import attach_adapter
    from expctr.explainer.rounds import ADAPTER
    from expctr.io import write_json
    from expctr.llm.base_model import load_model, load_tokenizer
    from expctr.llm.openings import quote_token_ids
    from expctr.llm.verdicts import EXPLANATION_PREFIX
    from expctr.paths import ProjectPaths

    params, paths = load_params(args.project / "params.yaml"), ProjectPaths(args.project)
    rl, llm = params.rl, params.llm
    if not grpo_bf16(rl, llm):
        raise SystemExit("the GRPO step does not run in bf16 here (rl.bf16): rollouts come from the policy anyway")
    tokenizer = load_tokenizer(paths.base_llm)
    pool = pl.read_parquet(paths.llm_pairs / "train.parquet").head(2 * rl.prompts_per_step * args.steps)
    prompts = build_prompt_dataset(pool, tokenizer, llm.max_prompt_tokens, EXPLANATION_PREFIX + " enjoy")
    suppress = {"suppress_tokens": quote_token_ids(tokenizer)}

    def length_reward(completions, **_):
        return [len(str(c)) / 100 for c in completions]

    torch.manual_seed(params.seed)
    policy = attach_adapter(load_model(paths.base_llm, dtype=llm.dtype, device=llm.device, threads=llm.threads),
                            rl, paths.round_dir(args.round) / ADAPTER)

    def run(label: str, steps: int) -> list[dict]:
        setting = rl.model_copy(update={"merged_rollouts": label == "merged"})
        _, logs, summary = train_policy(policy, tokenizer, prompts, [length_reward], None, setting, llm, steps,
                                        params.seed, generation_kwargs=suppress)
        assert summary["rollouts"] == ("merged_bfloat16_copy" if label == "merged" else "policy")
        return [s["seconds"] for s in logs]

    run("merged", 1)  # warm-up
    steps: dict[str, list[float]] = {"merged": [], "policy": []}
    for label in ORDER:
        steps[label].extend(run(label, args.steps))
        print(label, steps[label][-args.steps:], flush=True)

    result = {
        "command": recorded_command("grpo_rollouts.py", list(argv if argv is not None else sys.argv[1:])),
        "round": args.round, "order": "merged, policy, policy, merged after a warm-up",
        "completions_per_step": rl.prompts_per_step * rl.num_generations,
        "max_completion_length": rl.max_completion_length,
        "steps": steps,
        "mean_step_s": {lab: round(sum(v) / len(v), 3) for lab, v in steps.items()},
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    print(json.dumps(result["mean_step_s"], indent=2))
    return result


if __name__ == "__main__":
    main()
