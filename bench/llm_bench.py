"""Benchmark: explanation throughput of ExpCTR's generation path vs plain `model.generate` at batch 1, one GRPO
step's time and where it goes (sampling, judge, policy forward/backward), the dense verdict step's cost per prompt
(LoRA on every layer vs the top 10), the judge with and without a shared context, and peak memory, on the real
embedded SmolLM2-135M-Instruct and real ML-1M pairs.

Usage:  .venv/bin/python bench/llm_bench.py [--prompts 32] [--batch-sizes 8 16 32] [--threads 2] [--rl-steps 2]
Needs the pipeline's `models/base_llm` and `data/llm_pairs` (`dvc repro llm_pairs`). Each phase runs in its own
subprocess so its peak RSS is its own. Results: bench/results/llm.json.

The serving pair of phases explains ONE user's history against N targets (what POST /predict does), plain
batch-1 `generate` vs `expctr.llm.prefix_generation` (system text + history prefilled once).

Both paths use the same explainer prompts (with the assistant prefix), greedy decoding and the same
max_new_tokens; the plain path is what a first implementation does: one prompt at a time, `generate` until
EOS or the token cap. Ours batches by prompt length with left padding and stops each row at its first
sentence end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def load(threads: int, n: int):
    import polars as pl
    import torch

    from expctr.config import load_params
    from expctr.explainer.dataset import build_prompt_dataset
    from expctr.llm.base_model import load_model, load_tokenizer
    from expctr.llm.verdicts import EXPLANATION_PREFIX

    torch.set_num_threads(threads)
    params = load_params(ROOT / "params.yaml")
    base = ROOT / "models" / "base_llm"
    tok = load_tokenizer(base)
    model = load_model(base, dtype="float32", device="cpu")
    pairs = pl.read_parquet(ROOT / "data" / "llm_pairs" / "test.parquet").head(n)
    ds = build_prompt_dataset(pairs, tok, params.llm.max_prompt_tokens, EXPLANATION_PREFIX)
    return params, model, tok, ds, pairs


def phase_plain(args) -> dict:
    import torch

    params, model, tok, ds, _ = load(args.threads, args.prompts)
    tok.padding_side = "left"
    started, new_tokens = time.perf_counter(), 0
    with torch.no_grad():
        for prompt in ds["prompt"]:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=params.llm.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            new_tokens += out.shape[1] - ids["input_ids"].shape[1]
    secs = time.perf_counter() - started
    return {"path": "plain model.generate, batch 1", "seconds": round(secs, 2), "new_tokens": int(new_tokens),
            "explanations_per_s": round(len(ds) / secs, 3), "tokens_per_s": round(new_tokens / secs, 2),
            "peak_rss_gib": peak_rss_gib()}


def phase_ours(args, batch_size: int) -> dict:
    from expctr.llm.generation import generate

    params, model, tok, ds, _ = load(args.threads, args.prompts)
    started = time.perf_counter()
    res = generate(model, tok, ds["prompt"], max_new_tokens=params.llm.max_new_tokens, batch_size=batch_size,
                   progress=False)
    secs = time.perf_counter() - started
    n_tok = sum(res.n_new_tokens)
    return {"path": f"expctr generate, batch {batch_size}", "batch_size": batch_size, "seconds": round(secs, 2),
            "new_tokens": int(n_tok), "explanations_per_s": round(len(ds) / secs, 3),
            "tokens_per_s": round(n_tok / secs, 2), "share_complete": sum(res.complete) / len(res.complete),
            "peak_rss_gib": peak_rss_gib()}


def user_prompts(tok, params, n: int) -> list[str]:
    """The serving case: ONE user's history with n candidate targets (what /predict explains at once)."""
    import polars as pl

    from expctr.llm.prompts import as_item, explainer_messages, fitted_history, rendered_prompt
    from expctr.llm.verdicts import EXPLANATION_PREFIX

    def build(h, t):
        return explainer_messages(h, t) + [{"role": "assistant", "content": EXPLANATION_PREFIX}]

    pairs = pl.read_parquet(ROOT / "data" / "llm_pairs" / "test.parquet").head(n)
    history = pairs["history"][0]
    out = []
    for target in pairs["target"].to_list():
        fitted = fitted_history(tok, history, params.llm.max_prompt_tokens)
        out.append(rendered_prompt(tok, build(fitted, as_item(target))))
    return out


def phase_user(args, shared: bool) -> dict:
    import torch

    from expctr.llm.prefix_generation import generate_shared_prefix

    params, model, tok, _, _ = load(args.threads, 1)
    prompts = user_prompts(tok, params, args.prompts)
    started, new_tokens = time.perf_counter(), 0
    if shared:
        res = generate_shared_prefix(model, tok, prompts, max_new_tokens=params.llm.max_new_tokens)
        new_tokens = sum(res.n_new_tokens)
        path = f"serving: shared-prefix generate, one user's {len(prompts)} candidates in one batch"
    else:
        with torch.no_grad():
            for prompt in prompts:
                ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
                out = model.generate(**ids, max_new_tokens=params.llm.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                new_tokens += out.shape[1] - ids["input_ids"].shape[1]
        path = f"serving: plain model.generate, batch 1, one user's {len(prompts)} candidates"
    secs = time.perf_counter() - started
    return {"path": path, "seconds": round(secs, 2), "new_tokens": int(new_tokens),
            "explanations_per_s": round(len(prompts) / secs, 3), "tokens_per_s": round(new_tokens / secs, 2),
            "peak_rss_gib": peak_rss_gib()}


def phase_rl(args) -> dict:
    from expctr.explainer.grpo import train_policy
    from expctr.explainer.rewards.combine import stage_reward
    from expctr.explainer.rewards.format import FormatReward
    from expctr.explainer.rewards.lc import LCReward
    from expctr.llm.base_model import load_model
    from expctr.llm.judge import JudgeScorer

    params, model, tok, ds, _ = load(args.threads, max(args.prompts, 8))
    judge = JudgeScorer(load_model(ROOT / "models" / "base_llm"), tok, batch_size=params.llm.judge_batch_size)
    reward = stage_reward("lc", params.reward, lc=LCReward(judge, kind=params.reward.kind), fmt=FormatReward())
    _, logs, summary = train_policy(model, tok, ds, [reward], None, params.rl, params.llm, args.rl_steps,
                                    params.seed)
    secs = [row["seconds"] for row in logs if row.get("seconds") is not None]
    return {"path": "GRPO step (LC reward, real judge)", "steps": len(secs), "seconds_per_step": secs,
            "mean_seconds_per_step": round(sum(secs) / len(secs), 2),
            "completions_per_step": summary["batch"]["completions_per_step"],
            "max_completion_length": params.rl.max_completion_length, "peak_rss_gib": peak_rss_gib()}


def phase_grpo_parts(args) -> dict:
    """Where one GRPO step's time goes: sampling the step's completions, the judge reading them (the LC
    reward), and the policy's forward + backward over prompt + completion (LoRA), each timed on its own with the
    step's shapes (prompts_per_step x num_generations completions of <= max_completion_length tokens)."""
    import torch

    from expctr.explainer.lora import attach_adapter
    from expctr.explainer.rewards.lc import LCReward
    from expctr.llm.base_model import load_model
    from expctr.llm.generation import generate
    from expctr.llm.judge import JudgeScorer

    params, model, tok, ds, _ = load(args.threads, 8)
    rl = params.rl
    rows = [ds[i] for i in range(rl.prompts_per_step)]
    prompts = [r["prompt"] for r in rows for _ in range(rl.num_generations)]
    out: dict = {"path": "GRPO step, timed by part", "completions": len(prompts)}
    t0 = time.perf_counter()
    res = generate(model, tok, prompts, max_new_tokens=rl.max_completion_length, batch_size=len(prompts),
                   do_sample=True, temperature=rl.temperature, seed=0, stop_at_sentence=False, progress=False)
    out["generation_s"] = round(time.perf_counter() - t0, 2)
    judge = LCReward(JudgeScorer(load_model(ROOT / "models" / "base_llm"), tok,
                                 batch_size=params.llm.judge_batch_size), kind=params.reward.kind)
    t0 = time.perf_counter()
    judge.p_yes(res.raw_texts, [r["history"] for r in rows for _ in range(rl.num_generations)],
                [r["target"] for r in rows for _ in range(rl.num_generations)],
                [r["explanation_prefix"] for r in rows for _ in range(rl.num_generations)])
    out["judge_s"] = round(time.perf_counter() - t0, 2)
    policy = attach_adapter(model, rl)
    policy.train()
    seqs = [tok(p + c)["input_ids"] for p, c in zip(prompts, res.raw_texts)]
    t0 = time.perf_counter()
    for b in range(0, len(seqs), 2):  # micro batches of 2, as the CPU profile does
        batch = tok.pad({"input_ids": seqs[b:b + 2]}, return_tensors="pt", padding=True)
        logits = policy(**batch, use_cache=False).logits[:, -rl.max_completion_length - 1:-1]
        torch.log_softmax(logits.float(), -1).mean().backward()
    out["policy_forward_backward_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def phase_verdict(args, layers_from) -> dict:
    """The dense verdict step's cost per prompt (one forward + backward, LoRA from `layers_from`, None = all)."""
    from expctr.explainer.dataset import prompt_token_ids
    from expctr.explainer.lora import attach_adapter
    from expctr.explainer.verdict import train_verdicts

    params, model, tok, ds, _ = load(args.threads, args.prompts)
    rl = params.rl.model_copy(update={"lora_layers_from": layers_from})
    policy = attach_adapter(model, rl)
    ids = prompt_token_ids(ds, tok)
    t0 = time.perf_counter()
    train_verdicts(policy, tok, ids, [0.6] * len(ids), [0.4] * len(ids), learning_rate=rl.verdict_lr,
                   batch_size=rl.verdict_batch_size, temperature=rl.verdict_temperature, seed=0)
    secs = time.perf_counter() - t0
    return {"path": f"dense verdict step, LoRA on {'every layer' if layers_from is None else f'layers >= {layers_from}'}",
            "prompts": len(ids), "mean_prompt_tokens": round(sum(map(len, ids)) / len(ids), 1),
            "seconds_per_prompt": round(secs / len(ids), 3), "peak_rss_gib": peak_rss_gib()}


def phase_judge(args, grouped: bool) -> dict:
    """The frozen judge reading both bare verdicts of each pair (what llm_pairs computes for the RL pool): every
    prompt on its own, or the pair's shared context once (`judge_p_yes_grouped`)."""
    import polars as pl

    from expctr.llm.judge import judge_p_yes, judge_p_yes_grouped
    from expctr.llm.prompts import fitted_history, judge_messages
    from expctr.llm.verdicts import verdict_sentence

    params, model, tok, _, _ = load(args.threads, 1)
    pairs = pl.read_parquet(ROOT / "data" / "llm_pairs" / "train.parquet").head(args.prompts)
    groups = []
    for r in pairs.select("history", "target").iter_rows(named=True):
        h = fitted_history(tok, r["history"], params.llm.max_prompt_tokens)
        groups.append([judge_messages(h, r["target"], verdict_sentence(v, r["target"])) for v in (True, False)])
    t0 = time.perf_counter()
    if grouped:
        judge_p_yes_grouped(model, tok, groups, batch_size=params.llm.judge_batch_size)
    else:
        judge_p_yes(model, tok, [m for g in groups for m in g], batch_size=params.llm.judge_batch_size)
    secs = time.perf_counter() - t0
    return {"path": f"judge, both verdicts of each pair, {'shared context once' if grouped else 'each prompt alone'}",
            "pairs": len(groups), "seconds_per_pair": round(secs / len(groups), 3), "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rl-steps", type=int, default=2)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        fn = {"plain": lambda: phase_plain(args), "ours": lambda: phase_ours(args, args.batch),
              "plain_user": lambda: phase_user(args, shared=False), "shared": lambda: phase_user(args, shared=True),
              "rl": lambda: phase_rl(args), "grpo_parts": lambda: phase_grpo_parts(args),
              "verdict_all": lambda: phase_verdict(args, None), "verdict_top10": lambda: phase_verdict(args, 20),
              "judge_plain": lambda: phase_judge(args, False), "judge_grouped": lambda: phase_judge(args, True)}[args.phase]
        print(json.dumps(fn()))
        return
    for need in ("models/base_llm", "data/llm_pairs/test.parquet"):
        if not (ROOT / need).exists():
            sys.exit(f"{ROOT / need} not found: run `dvc repro llm_pairs` first")
    common = ["--prompts", str(args.prompts), "--threads", str(args.threads), "--rl-steps", str(args.rl_steps)]
    phases = [["--phase", "plain"], *[["--phase", "ours", "--batch", str(b)] for b in args.batch_sizes],
              ["--phase", "plain_user"], ["--phase", "shared"], ["--phase", "rl"], ["--phase", "grpo_parts"],
              ["--phase", "verdict_all"], ["--phase", "verdict_top10"], ["--phase", "judge_plain"],
              ["--phase", "judge_grouped"]]
    runs = []
    for extra in phases:
        out = subprocess.run([sys.executable, __file__, *common, *extra], capture_output=True, text=True,
                             check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        runs.append(row)
    plain = runs[0]["explanations_per_s"]
    n_ours = len(args.batch_sizes)
    for row in runs[1:1 + n_ours]:
        row["speedup_explanations_per_s"] = round(row["explanations_per_s"] / plain, 2)
    plain_user, shared = runs[1 + n_ours], runs[2 + n_ours]
    shared["speedup_explanations_per_s"] = round(shared["explanations_per_s"] / plain_user["explanations_per_s"], 2)
    report = {"prompts": args.prompts, "threads": args.threads, "cpu_count": os.cpu_count(), "runs": runs}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "llm.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
