"""One RL stage (LC or IC) on the explainer's LoRA adapter: a dense verdict step, then a few GRPO reason steps.

The verdict step (`expctr.explainer.verdict`) fits the policy's verdict at the end of each prompt to the exact
rewards of both verdicts; the GRPO step (`expctr.explainer.grpo`) trains the reason that follows the verdict,
each prompt opened with the verdict the policy now holds, worded by its confidence, and (`llm.reason_opening:
anchored`) a history item on its side (`expctr.llm.openings`: the opening the rounds and the service write),
so a group's completions share it and GRPO's advantages rank reasons; with `llm.quote_free_reason` the
completions are sampled without quotation marks, as they are decoded everywhere else.
The base weights are never written; each stage saves only the adapter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expctr.config import LLMParams, RLParams
from expctr.errors import ExpCTRError
from expctr.explainer.dataset import build_prompt_dataset, prompt_token_ids
from expctr.explainer.grpo import RewardFunc, train_policy
from expctr.explainer.lora import attach_adapter, check_only_lora_trainable
from expctr.io import atomic_path
from expctr.llm.adapters import save_adapter
from expctr.llm.base_model import inference_dtype, load_model, load_tokenizer, set_threads
from expctr.llm.openings import opening_for, quote_token_ids
from expctr.llm.prompts import as_item
from expctr.llm.verdicts import EXPLANATION_PREFIX, verdict_token_ids


def verdict_autocast(rl: RLParams, llm: LLMParams) -> bool:
    """Whether the verdict step runs in bfloat16 autocast: `rl.verdict_dtype` resolves to bfloat16 on weights
    that are not bfloat16 already."""
    return inference_dtype(rl.verdict_dtype, llm.device, llm.dtype) == "bfloat16" and llm.dtype != "bfloat16"


def run_rl_stage(
    base_model_dir: str | Path,
    out_adapter_dir: str | Path,
    reward: RewardFunc,
    rl: RLParams,
    llm: LLMParams,
    seed: int,
    *,
    verdict_dataset=None,
    verdict_rewards: tuple[Sequence[float], Sequence[float]] | None = None,
    reason_pairs=None,
    reason_steps: int = 0,
    init_adapter_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    micro_batch: int | None = None,
) -> dict[str, Any]:
    """One RL stage (LC or IC) on the explainer adapter, saved to `out_adapter_dir` (by process 0 only when
    several processes run it: `expctr.explainer.rl_launch`):

    1. verdict step (`expctr.explainer.verdict.train_verdicts`): one pass over `verdict_dataset` (prompts opened
       with EXPLANATION_PREFIX) with the exact rewards `verdict_rewards = (r+, r-)` of its two verdicts; prompts
       of one `prefix_group` (a slate of the pool) run their shared prefix once;
    2. reason step: `reason_steps` GRPO steps (TRL) on `reason_pairs`, each prompt opened with the verdict the
       policy holds after step 1, worded by its confidence and anchored (`opening_for(sigmoid(z), ...)`: what
       the explainer ships), so the group's completions share it and GRPO's advantages rank the reasons; `reward` is the
       stage's reward callable.
    Either step may be skipped (no verdict data / reason_steps=0), not both. `init_adapter_dir`: continue that
    adapter (a later stage / round); otherwise a fresh LoRA adapter from `rl`. Returns `{"summary", "verdict_steps",
    "steps"}`: the verdict step's per-step rows (`reward` = exact expected reward of the batch) and the GRPO rows
    (TRL's metrics, `seconds`, `samples`). With `log_path` both are written there as JSON lines (`phase` column).
    """
    from expctr.explainer.verdict import score_verdicts, train_verdicts

    if verdict_dataset is None and reason_steps < 1:
        raise ExpCTRError("an RL stage needs verdict prompts or at least one GRPO reason step")
    set_threads(llm.threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device)
    import torch

    from expctr.distributed import rank_seed

    torch.manual_seed(int(seed))  # a fresh adapter's LoRA init comes from the seed, the same on every process
    policy = attach_adapter(model, rl, init_adapter_dir)
    torch.manual_seed(rank_seed(int(seed)))  # dropout draws: per process (process 0 keeps the 1-process seed)
    summary: dict[str, Any] = {"n_trainable_params": check_only_lora_trainable(policy), "seed": int(seed)}
    verdict_logs: list[dict[str, Any]] = []
    if verdict_dataset is not None:
        if verdict_rewards is None:
            raise ExpCTRError("the verdict step needs the rewards of both verdicts per prompt")
        t0 = time.perf_counter()
        autocast = verdict_autocast(rl, llm)
        verdict_logs = train_verdicts(policy, tokenizer, prompt_token_ids(verdict_dataset, tokenizer),
                                      verdict_rewards[0], verdict_rewards[1], learning_rate=rl.verdict_lr,
                                      batch_size=rl.verdict_batch_size, temperature=rl.verdict_temperature,
                                      seed=seed, autocast=autocast, groups=verdict_dataset["prefix_group"])
        summary["verdict"] = {"prompts": len(verdict_dataset), "steps": len(verdict_logs), "bf16_autocast": autocast,
                              "seconds": round(time.perf_counter() - t0, 3)}
    grpo_logs: list[dict[str, Any]] = []
    if reason_steps > 0:
        opened = build_prompt_dataset(reason_pairs, tokenizer, llm.max_prompt_tokens, EXPLANATION_PREFIX)
        z = score_verdicts(policy, tokenizer, prompt_token_ids(opened, tokenizer), verdict_token_ids(tokenizer),
                           batch_size=llm.gen_batch_size)
        pi = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        openings = [opening_for(float(p), [as_item(h) for h in hist], as_item(t), llm.reason_opening)[0]
                    for p, hist, t in zip(pi, opened["history"], opened["target"])]
        dataset = build_prompt_dataset(reason_pairs, tokenizer, llm.max_prompt_tokens, openings)
        banned = {"generation_kwargs": {"suppress_tokens": quote_token_ids(tokenizer)}} \
            if llm.quote_free_reason else {}
        policy, grpo_logs, grpo_summary = train_policy(policy, tokenizer, dataset, [reward], None, rl, llm,
                                                       reason_steps, seed, micro_batch=micro_batch, **banned)
        summary["reason"] = {**grpo_summary, "positive_verdicts": float(np.mean(pi >= 0.5))}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    from expctr.distributed import is_main_process

    if not is_main_process():  # under `accelerate launch`: process 0 writes the adapter and the log
        return {"summary": summary, "verdict_steps": verdict_logs, "steps": grpo_logs}
    save_adapter(policy, out_adapter_dir)
    if log_path is not None:
        rows = [{"phase": "verdict", **r} for r in verdict_logs] + [{"phase": "reason", **r} for r in grpo_logs]
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return {"summary": summary, "verdict_steps": verdict_logs, "steps": grpo_logs}
