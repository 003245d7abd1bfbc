"""Batched one-sentence generation that prefills each shared prompt prefix once (the serving path).

When one user's candidates are explained together, every prompt is the same system text and history up to
the target line: most of each prompt. On a CPU the prefill of those tokens is most of the work, so each
*group* of prompts (one user's, or any prompts that share a beginning) has its common prefix prefilled once
at batch 1, and the groups' key/value caches are laid side by side in one batch:

    row i = left padding (masked) + prefix of its group (cached) + padding (masked) + suffix_i

Several users' requests can so share one decoding batch (the service merges concurrent cold requests). The
attention mask hides the padding, and each row's positions are counted over its own real tokens, so every
row sees exactly its own prompt: greedy text equals plain `generate`'s.

Decoding is a plain loop over the model's forward pass rather than `model.generate`, for two reasons
measured to matter on a CPU: a row leaves the batch the moment it has ended its sentence (or emitted eos),
so the remaining rows do not pay for it; and only the last position's logits are computed during prefill
(`logits_to_keep=1`; the vocabulary projection of every prompt position is ~3x the cost of the last
layer). Stopping is `expctr.llm.generation`'s sentence rule, so the texts and token counts are the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence

from expctr.llm.generation import (
    GenerationResult,
    _encode_prompt,
    generation_result,
    sentence_end,
)


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return n


def plan_groups(encoded: Sequence[Sequence[int]], groups: Sequence[Hashable] | None,
                min_prefix: int = 8) -> list[tuple[list[int], int]]:
    """(row indices, shared prefix length) per prefill group. Rows of one group that share fewer than
    `min_prefix` tokens become groups of one (prefix = their prompt but its last token)."""
    labels = list(groups) if groups is not None else [0] * len(encoded)
    if len(labels) != len(encoded):
        raise ValueError(f"{len(labels)} group labels for {len(encoded)} prompts")
    rows_of: dict[Hashable, list[int]] = {}
    for i, g in enumerate(labels):
        rows_of.setdefault(g, []).append(i)
    plan = []
    for rows in rows_of.values():
        seqs = [encoded[i] for i in rows]
        p = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1)
        if len(rows) > 1 and p < min_prefix:
            plan += [([i], len(encoded[i]) - 1) for i in rows]
        else:
            plan.append((rows, p))
    return plan


def _prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt given as ids already, as rendered text, or as chat messages."""
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return _encode_prompt(tokenizer, prompt)


def _cache_kwarg(model) -> str:
    """transformers 5 names the cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model, cache_kw: str, cache, **inputs):
    return model(**inputs, **{cache_kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1, :]


def generate_shared_prefix(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, groups: Sequence[Hashable] | None = None,
                           max_new_tokens: int | Sequence[int] = 48, do_sample: bool = False,
                           temperature: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None,
                           min_prefix: int = 8) -> GenerationResult:
    """The first sentence per prompt (greedy unless `do_sample`), all prompts in one batch. A prompt is
    rendered text (tokenised without adding special tokens) or its token ids.

    `groups` labels prompts whose common beginning should be prefilled once (default: all one group).
    `max_new_tokens` may differ per prompt. Sampling draws each row from its own generator seeded with
    `seeds[i]` (default `seed + i`), so a row's text does not depend on what it was batched with.
    """
    import torch
    from transformers import DynamicCache

    n = len(prompts)
    if n == 0:
        return generation_result([], [], [])
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    if min(len(e) for e in encoded) < 2:
        raise ValueError("every prompt needs at least two tokens")
    caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
    row_seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(caps) != n or len(row_seeds) != n:
        raise ValueError("max_new_tokens and seeds need one value per prompt")
    eos = model.generation_config.eos_token_id
    stop_ids = {tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos if eos is not None else
                                                                              tokenizer.eos_token_id])}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = model.device
    cache_kw = _cache_kwarg(model)
    plan = plan_groups(encoded, groups, min_prefix)
    group_of = {i: g for g, (rows, _) in enumerate(plan) for i in rows}
    p_len = [plan[group_of[i]][1] for i in range(n)]
    p_max = max(p_len)

    with torch.inference_mode():
        # 1. each group's shared prefix, prefilled once at batch 1, left-padded to the longest prefix
        layers: list[list[tuple]] = []  # per group: per layer (keys, values) of shape (1, H, p_max, D)
        for rows, p in plan:
            cache = DynamicCache()
            _forward(model, cache_kw, cache, input_ids=torch.tensor([encoded[rows[0]][:p]], device=dev))
            kv = []
            for layer in cache.layers:
                k, v = layer.keys, layer.values
                if p < p_max:
                    shape = (*k.shape[:2], p_max - p, k.shape[3])
                    k = torch.cat([k.new_zeros(shape), k], dim=2)
                    v = torch.cat([v.new_zeros(shape), v], dim=2)
                kv.append((k, v))
            layers.append(kv)
        order = torch.tensor([group_of[i] for i in range(n)], device=dev)
        n_layers = len(layers[0])
        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([layers[g][li][0] for g in range(len(plan))])[order],
             torch.cat([layers[g][li][1] for g in range(len(plan))])[order]) for li in range(n_layers)])
        del layers

        # 2. every row's own suffix, left-padded, positions continuing its own prefix
        suffixes = [encoded[i][p_len[i]:] for i in range(n)]
        width = max(len(s) for s in suffixes)
        ids = [[pad] * (width - len(s)) + s for s in suffixes]
        mask = [[0] * (p_max - p_len[i]) + [1] * p_len[i] + [0] * (width - len(s)) + [1] * len(s)
                for i, s in enumerate(suffixes)]
        pos = [[0] * (width - len(s)) + list(range(p_len[i], p_len[i] + len(s))) for i, s in enumerate(suffixes)]
        attention = torch.tensor(mask, device=dev)
        next_pos = torch.tensor([p_len[i] + len(s) for i, s in enumerate(suffixes)], device=dev)
        logits = _forward(model, cache_kw, cache, input_ids=torch.tensor(ids, device=dev),
                          attention_mask=attention, position_ids=torch.tensor(pos, device=dev))

        # 3. decode; a row leaves the batch once it has ended a sentence, emitted eos, or hit its cap
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in row_seeds] if do_sample else []
        new_tokens: list[list[int]] = [[] for _ in range(n)]
        ended = [False] * n
        active = list(range(n))
        while True:
            if do_sample:
                probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
                picked = [int(torch.multinomial(probs[r], 1, generator=gens[i]).item()) for r, i in enumerate(active)]
            else:
                picked = logits.argmax(dim=-1).tolist()
            keep = []
            for r, (i, tok) in enumerate(zip(active, picked)):
                if tok in stop_ids:
                    ended[i] = True
                    continue
                new_tokens[i].append(tok)
                if sentence_end(tokenizer.decode(new_tokens[i], skip_special_tokens=True), final=False) is not None:
                    ended[i] = True
                elif len(new_tokens[i]) < caps[i]:
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                attention, next_pos = attention[idx], next_pos[idx]
            active = [active[r] for r in keep]
            step = torch.tensor([[new_tokens[i][-1]] for i in active], device=dev)
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits = _forward(model, cache_kw, cache, input_ids=step, attention_mask=attention,
                              position_ids=next_pos[:, None])
            next_pos = next_pos + 1

    raw = [tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens]
    return generation_result(raw, [len(t) for t in new_tokens], ended)


__all__ = ["common_prefix_len", "generate_shared_prefix", "plan_groups"]
