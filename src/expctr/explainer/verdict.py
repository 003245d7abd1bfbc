"""The dense verdict step of an RL stage: the exact rewards of the explainer's two verdicts, no sampling.

Every explanation opens with "The user will" and the explainer's next-token logits there hold its verdict:
" enjoy" or " not" (`expctr.llm.verdicts`). The judge follows the stated stance, so what an explanation earns is decided mostly by
that one token, and the reward of each verdict can be computed without sampling: r+ and r- are the stage's
reward of the bare verdict sentences ("The user will probably enjoy "X"." / "... likely not enjoy "X".") under the
frozen judge (LC), the judge against the ID model (IC), or their weighted sum (`expctr.explainer.rewards`).
With pi = P(enjoy) renormalised over the two verdict tokens (pi = sigmoid(z), z = logit(" enjoy") -
logit(" not") after the prefix), one prompt's expected reward is exactly E[r] = pi r+ + (1 - pi) r-.

What is optimised is the closed-form optimum of the entropy-regularised expected reward,

    pi* = argmax_pi  E_pi[r] + tau H(pi)  =  sigmoid((r+ - r-) / tau),

fitted by cross-entropy CE(pi*, pi) (the "reward-tilted target", as in reward-weighted regression), with
tau = `rl.verdict_temperature`. Why not ascend E[r] itself: its gradient pi (1 - pi)(r+ - r-) vanishes where the
policy is confident, and the base explainer is (pi ~ 0.97 "enjoy" on every ML-1M pair): measured, 400 train
pairs of plain expected-reward ascent only pushed every verdict further to "enjoy" (median z 3.6 -> 10.9, verdict
AUC 0.58 -> 0.60), while the tilted target moves a confidently wrong verdict at full rate. Both use the same exact
rewards; the logged curve is E[r] under the current policy. The reason that follows the verdict is trained by
GRPO (TRL), with the verdict fixed per group.

A plain loop over an `accelerate.Accelerator` (TRL has no objective over a first token taken in closed form),
so the same code runs on one CPU process, N processes (DDP, `expctr.explainer.rl_launch`) or a GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from expctr.llm.verdicts import VerdictTokens, verdict_token_ids


def verdict_logit(model, input_ids, attention_mask, tokens: VerdictTokens, autocast: bool = False):
    """z = logit(positive) - logit(negative) at the last position of each (left-padded) prompt, shape (B,).

    z is computed in float32 from the last hidden state and the two tokens' output rows, whatever the forward
    ran in: with `autocast` the transformer runs in bfloat16 (CPU autocast; measured on this CPU with native
    BF16: fwd+bwd of 8 prompts 4.4-4.9 s against 7.7 s in float32), and a bfloat16 logit is too coarse (~0.1
    apart near its usual size) for the difference of two of them."""
    import contextlib

    import torch

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast and input_ids.device.type == "cpu" \
        else contextlib.nullcontext()
    with ctx:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=1, output_hidden_states=True)
    return _z(model, out.hidden_states[-1][:, -1, :], tokens)


def verdict_logit_shared(model, rows: Sequence[Sequence[int]], groups: Sequence[Hashable], tokens: VerdictTokens,
                         pad_id: int, autocast: bool = False):
    """`verdict_logit` of token-id prompts whose groups share a beginning (one user's slate: everything before
    the target line), with each group's shared prefix run once, gradients included.

    The prefixes (one per group, left-padded) run first with a KV cache; the cache rows are repeated for each
    group's prompts and only the suffixes run over it (row = [padding + prefix | padding + suffix], masked
    padding, positions counted over real tokens), so every row sees exactly its own prompt and the gradient of
    a slate's shared tokens is their summed gradient over its prompts, as if each prompt ran alone. On a slate
    of 4 about half the tokens of running every prompt whole (a ~120-token shared part, ~55 tokens each)."""
    import contextlib

    import torch
    from transformers import DynamicCache

    from expctr.llm.judge import cache_kwarg
    from expctr.llm.prefix_generation import plan_groups

    dev = model.device
    plan = plan_groups(rows, groups)
    group_of = {i: g for g, (members, _) in enumerate(plan) for i in members}
    p_len = [plan[group_of[i]][1] for i in range(len(rows))]
    prefixes = [list(rows[members[0]][:p]) for members, p in plan]
    width = max(len(x) for x in prefixes)
    prefix_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prefixes], device=dev)
    prefix_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in prefixes], device=dev)
    suffixes = [list(rows[i][p_len[i]:]) for i in range(len(rows))]
    s_width = max(len(x) for x in suffixes)
    suffix_ids = torch.tensor([[pad_id] * (s_width - len(x)) + x for x in suffixes], device=dev)
    suffix_mask = torch.tensor([[0] * (s_width - len(x)) + [1] * len(x) for x in suffixes], device=dev)
    index = torch.tensor([group_of[i] for i in range(len(rows))], device=dev)
    mask = torch.cat([prefix_mask[index], suffix_mask], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast and dev.type == "cpu" else contextlib.nullcontext()
    cache, kw = DynamicCache(), cache_kwarg(model)
    with ctx:
        model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
              use_cache=True, logits_to_keep=1, **{kw: cache})
        cache.reorder_cache(index)  # one cache row per prompt
        out = model(input_ids=suffix_ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                    logits_to_keep=1, output_hidden_states=True, **{kw: cache})
    return _z(model, out.hidden_states[-1][:, -1, :], tokens)


def _z(model, h, tokens: VerdictTokens):
    """z from last-position hidden states, in float32 (see `verdict_logit`)."""
    head = getattr(model, "module", model).get_output_embeddings()  # DDP wraps the model under accelerate
    w = (head.weight[tokens.positive] - head.weight[tokens.negative]).float()
    z = h.float() @ w
    if getattr(head, "bias", None) is not None:
        z = z + (head.bias[tokens.positive] - head.bias[tokens.negative]).float()
    return z


def expected_reward(z, r_pos, r_neg):
    """E[r] = pi r+ + (1 - pi) r-, pi = sigmoid(z): the exact expected reward of each prompt's verdict."""
    import torch

    pi = torch.sigmoid(z)
    return pi * r_pos + (1.0 - pi) * r_neg


def verdict_target(r_pos, r_neg, temperature: float):
    """pi* = sigmoid((r+ - r-) / tau): the verdict distribution that maximises E[r] + tau H(pi)."""
    import torch

    if temperature <= 0:
        raise ValueError(f"the verdict temperature must be > 0, got {temperature}")
    return torch.sigmoid((r_pos - r_neg) / temperature)


def _pad(tokenizer, rows: Sequence[Sequence[int]], device):
    batch = tokenizer.pad({"input_ids": [list(r) for r in rows]}, return_tensors="pt", padding=True)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def score_verdicts(model, tokenizer, prompt_ids: Sequence[Sequence[int]], tokens: VerdictTokens,
                   batch_size: int = 16, progress: bool = False, desc: str = "verdicts") -> np.ndarray:
    """z per prompt (no grad), in input order: the verdict logit as a score (> 0: the greedy verdict is
    " enjoy" between the two)."""
    import torch

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    out = np.zeros(len(prompt_ids), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
                idx = order[b:b + batch_size]
                ids, mask = _pad(tokenizer, [prompt_ids[i] for i in idx], model.device)
                out[idx] = verdict_logit(model, ids, mask, tokens).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def train_verdicts(model, tokenizer, prompt_ids: Sequence[Sequence[int]], r_pos: Sequence[float],
                   r_neg: Sequence[float], *, learning_rate: float, batch_size: int, temperature: float,
                   seed: int, accelerator=None, desc: str = "verdict", autocast: bool = False,
                   groups: Sequence[Hashable] | None = None) -> list[dict[str, Any]]:
    """One pass over the prompts (shuffled by `seed`) in batches: CE(pi*, pi) with pi* the tilted target.

    `groups` labels prompts that share their beginning (one user's slate, `prefix_group`): a group is never
    split, whole groups are shuffled and batched (a batch holds about `batch_size` prompts), and each group's
    shared prefix runs once (`verdict_logit_shared`). Without groups every prompt is its own unit, as before.

    `model` is a peft model whose LoRA tensors are the only trainable parameters. Under `accelerate launch` (N
    processes, DDP) every process cuts the same global batches in the same order and takes its near-equal part
    of each (`expctr.distributed`); its loss is scaled so DDP's average of the parts' gradients is the batch's
    mean-loss gradient, so N processes take the single process's steps up to float summation order. Returns one
    log row per optimizer step (the whole batch's figures, gathered on every process): `step`, `reward` (the
    batch's mean exact expected reward before the update), `reward_gap` (mean |r+ - r-|), `p_positive` (mean
    pi), `agree` (share of prompts whose more likely verdict is the better one), `seconds`.
    """
    import torch

    from expctr.distributed import accelerator as make_accelerator

    if len(prompt_ids) != len(r_pos) or len(prompt_ids) != len(r_neg):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(r_pos)} / {len(r_neg)} verdict rewards")
    accelerator = accelerator or make_accelerator(model.device.type)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    tokens = verdict_token_ids(tokenizer)
    units = prompt_units(len(prompt_ids), groups)
    shared = any(len(u) > 1 for u in units)
    batches = unit_batches(units, np.random.default_rng(seed).permutation(len(units)), batch_size)
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    logs: list[dict[str, Any]] = []
    for step, batch_units in enumerate(tqdm(batches, desc=desc, unit="step",
                                            disable=not accelerator.is_main_process), 1):
        t0 = time.perf_counter()
        batch = [i for u in batch_units for i in u]
        mine = np.array_split(np.arange(len(batch_units)), world)[rank]
        idx = [i for k in mine for i in batch_units[k]]
        if len(idx) == 0:
            raise ValueError(f"a batch of {len(batch_units)} prompt groups cannot feed {world} processes: "
                             "raise the batch size")
        rp = torch.tensor([r_pos[i] for i in idx], dtype=torch.float32, device=accelerator.device)
        rn = torch.tensor([r_neg[i] for i in idx], dtype=torch.float32, device=accelerator.device)
        if shared:
            z = verdict_logit_shared(model, [prompt_ids[i] for i in idx], [groups[i] for i in idx], tokens,
                                     tokenizer.pad_token_id, autocast=autocast)
        else:
            ids, mask = _pad(tokenizer, [prompt_ids[i] for i in idx], accelerator.device)
            z = verdict_logit(model, ids, mask, tokens, autocast=autocast)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(z, verdict_target(rp, rn, temperature),
                                                                  reduction="sum")
        loss = ce * world / len(batch)  # DDP averages over processes: the mean over the whole batch
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        pi = torch.sigmoid(z.detach())
        part = torch.stack([expected_reward(z.detach(), rp, rn).sum(), (rp - rn).abs().sum(), pi.sum(),
                            ((pi > 0.5) == (rp > rn)).float().sum()])
        total = accelerator.reduce(part, reduction="sum") if world > 1 else part
        reward, gap, p_pos, agree = (float(v) / len(batch) for v in total)
        logs.append({"step": step, "reward": reward, "reward_gap": gap, "p_positive": p_pos, "agree": agree,
                     "seconds": round(time.perf_counter() - t0, 3)})
    return logs


def prompt_units(n: int, groups: Sequence[Hashable] | None) -> list[list[int]]:
    """Prompt indices grouped by label, in order of first appearance (each prompt alone without labels)."""
    if groups is None:
        return [[i] for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} prompts")
    units: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        units.setdefault(g, []).append(i)
    return list(units.values())


def unit_batches(units: Sequence[Sequence[int]], order: Sequence[int], batch_size: int) -> list[list[list[int]]]:
    """Consecutive units (in `order`) packed into batches of about `batch_size` prompts, a unit never split: a
    unit joins the open batch unless that would take it past `batch_size`. With one-prompt units these are the
    plain batches of `batch_size` prompts."""
    batches: list[list[list[int]]] = []
    size = 0
    for k in order:
        unit = list(units[k])
        if not batches or size + len(unit) > batch_size:
            batches.append([])
            size = 0
        batches[-1].append(unit)
        size += len(unit)
    return batches


def quarter_means(values: Sequence[float]) -> tuple[float, float]:
    """(mean of the first quarter, mean of the last quarter) of a reward curve (at least one value each)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    q = max(1, len(vals) // 4)
    return float(np.mean(vals[:q])), float(np.mean(vals[-q:]))
